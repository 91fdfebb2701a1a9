"""Fuzz target: the kernel command line as boot parses it (params.parse_cmdline: every
``guestinit.*`` key's parser). Bad values are problems with the default kept; nothing raises,
and every problem is one bounded line."""

from __future__ import annotations

from guestinit.init import params
from guestinit.init.gpu.params import X86_64_SIZES_KB
from guestinit.init.problems import MAX_LINE
from guestinit.notify.address import parse_target

SEEDS: list[bytes] = [
    b"console=hvc0 quiet guestinit.notify=vsock:2:1024 guestinit.log=debug guestinit.lockdown",
    b"guestinit.hugepages=2M:512,1G:4@0 guestinit.thp=never guestinit.rebar=max guestinit.mode=gpu-nvl4",
    b'guestinit.modules=a,b guestinit.disable="x,y" guestinit.ready_timeout=2.5 guestinit.syslog_kib=64',
    b"guestinit.nvidia.device_file_uid=1000 guestinit.nvidia.extra=nvidia.NVreg_RmMsg=x "
    b"guestinit.smi.lgc=1500,1980 guestinit.smi.pl=700.5 guestinit.gpu.timeout_per_gpu=4",
    b"guestinit.notify=unix:/run/n.sock guestinit.nvidia.device_file_mode=0660 guestinit.bogus=1",
]


def TestOneInput(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    config = params.parse_cmdline(text)
    for problem in config.problems:
        assert "\n" not in problem and len(problem) <= MAX_LINE, problem
    assert set(config.values) == set(params.BY_NAME)
    notify = config.text("notify")
    if notify:
        parse_target(notify)  # an accepted address is one boot can use
    for request in config["hugepages"]:  # type: ignore[attr-defined]
        assert request.size_kb in X86_64_SIZES_KB
