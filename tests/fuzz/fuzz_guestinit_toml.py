"""Fuzz target: /etc/guestinit/guestinit.toml read as boot and ``guestinit check`` read it
(settings.read_config: the safe read, the TOML parser and limits, every key's parser) under an
empty command line. It may refuse the file or values, but never raise, and every problem is
one bounded line."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

from guestinit.init import params, settings
from guestinit.init.problems import MAX_LINE
from guestinit.init.root import Root

SEEDS: list[bytes] = [
    b'log = "debug"\nlockdown = true\nready_timeout = 90\ndisable = ["a", "b"]\nsyslog_kib = 64\n',
    b'hugepages = ["2M:512", "1G:4@0"]\nthp = "madvise"\nrebar = "max"\nmodules = "nvidia,nvidia-uvm"\n',
    b'notify = "vsock-stream:2:1024"\nmode = "gpu-nvl5"\n"nvidia.device_file_mode" = "0660"\n'
    b'"smi.lgc" = "1500,1980"\n"smi.pl" = 700\n"gpu.timeout" = 60\n',
    b'"nvidia.extra" = ["nvidia.NVreg_RmMsg=x"]\n"fabricmanager.config" = "/etc/fm.cfg"\nbogus = 1\n',
]

_DIR = tempfile.mkdtemp(prefix="fuzz-settings-")
atexit.register(shutil.rmtree, _DIR, True)
os.makedirs(os.path.join(_DIR, "etc/guestinit"))
_FILE = os.path.join(_DIR, "etc/guestinit/guestinit.toml")
_ROOT = Root(_DIR)


def TestOneInput(data: bytes) -> None:
    with open(_FILE, "wb") as f:
        f.write(data)
    config = settings.read_config(_ROOT, None, "")
    for problem in config.problems:
        assert "\n" not in problem and len(problem) <= MAX_LINE, problem
    assert set(config.values) == set(params.BY_NAME)
    for name, value in config.values.items():
        if isinstance(value, str):
            assert "\0" not in value, name
