"""The configuration fuzz targets (service file, guestinit.toml, command line) over their seeds
and the hostile inputs of issue 16 (the runner drives them longer with atheris or hypothesis)."""

from __future__ import annotations

import fuzz_cmdline
import fuzz_guestinit_toml
import fuzz_service_file
import pytest

from guestinit.init import params, settings
from guestinit.init.services import files

DEEP = b"[" * 5000 + b"]" * 5000
HOSTILE: dict[object, list[bytes]] = {
    fuzz_service_file: [
        b"command = " + DEEP,
        b'command = ["/bin/a\\u0000b"]\nuser = "r\\u0000"\n',
        b'command = ["/bin/true"]\nafter = ["x", "y", "*"]\n',
        b'command = ["/bin/true"]\nready = { log = "' + b"(" * 500 + b")" * 500 + b'" }\n',
        b"rlimit_nofile = " + b"9" * 5000,
        b'command = ["/bin/caf\xe9"]\n',
        b"x." * 2000 + b"y = 1\n",
        b"\x00\xff" * 100,
        b"#" * 70000,
        b'command = """' + b"[" * 100,
    ],
    fuzz_guestinit_toml: [
        b'log = "debug"\nhugepages = "1G:' + b"5" * 5000 + b'"\n',
        b"modules = " + DEEP[:3000] + DEEP[-3000:],
        b'mode = "\xff"\n',
        b'modules = [1, 2]\nlockdown = "maybe"\nready_timeout = [[1]]\nlog = 1979-05-27\n',
        b'notify = "vsock:2:' + b"9" * 5000 + b'"\n',
        b'disable = ["a,b", "c"]\n"nvidia.extra" = [1]\n',
    ],
    fuzz_cmdline: [
        b"guestinit.ready_timeout=" + b"1" * 4400,
        b"guestinit.hugepages=3K:4 guestinit.hugepages=0M:1 guestinit.notify=bogus",
        b"guestinit.notify=vsock:99999999999:1 guestinit.notify=vsock:2:-1",
        b'guestinit.hugepages="2M:' + b"9" * 4400 + b'"',
        b"guestinit.nvidia.device_file_uid=\xc2\xb2 guestinit.smi.pl=\xd9\xa7",
        b'"guestinit.log=de bug" guestinit. guestinit.=x guestinit.lockdown=',
    ],
}


@pytest.mark.parametrize("target", list(HOSTILE), ids=lambda t: t.__name__)
def test_seeds_and_hostile_inputs(target) -> None:  # type: ignore[no-untyped-def]
    for data in [*target.SEEDS, *HOSTILE[target]]:
        target.TestOneInput(data)


def test_the_seeds_are_valid_configuration() -> None:
    for seed in fuzz_service_file.SEEDS:
        fuzz_service_file.TestOneInput(seed)
        loaded = files.load_services(fuzz_service_file._ROOT)
        assert loaded.errors == [], loaded.errors
    for seed in fuzz_guestinit_toml.SEEDS:
        fuzz_guestinit_toml.TestOneInput(seed)
        problems = settings.read_config(fuzz_guestinit_toml._ROOT, None, "").problems
        assert [p for p in problems if "bogus" not in p] == []
    for seed in fuzz_cmdline.SEEDS:
        problems = params.parse_cmdline(seed.decode()).problems
        assert [p for p in problems if "bogus" not in p] == []
