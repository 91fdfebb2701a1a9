"""Fuzz target: a service file (services.d/x.toml) read as boot and ``guestinit check`` read it
(files.load_services: the safe read, the TOML parser and limits, the key table, the order). It
may make the service unusable, but never raise, and every problem is one bounded line naming
the file."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

from guestinit.init.problems import MAX_LINE
from guestinit.init.root import Root
from guestinit.init.services import files

SEEDS: list[bytes] = [
    b'command = ["/usr/bin/kata-agent"]\nafter = ["*"]\ncritical = true\noom_score_adj = -997\n'
    b'rlimit_nofile = 1048576\ncondition_path_exists = "/usr/bin/kata-agent"\n',
    b'command = ["/usr/bin/nv-fabricmanager", "-c", "/run/fm.cfg"]\nenvironment = { FABRIC_MODE = "1" }\n'
    b'user = "nvidia"\ngroup = "video"\nafter = ["y"]\nready = { log = "FM starting" }\nready_timeout = 120\n'
    b'restart = "on-failure"\nmax_restarts = 2\nrestart_window = 30.5\nstop_timeout = 10\n',
    b'command = ["/bin/true"]\nready = { tcp = "[::1]:6666" }\npid_file = "/run/x.pid"\n',
    b'command = ["/bin/true"]\nready = { command = ["/bin/probe", "-q"] }\nrestart = "always"\n',
    b'command = ["/bin/true"]\nready = "exit"\n[environment]\nLANG = "C.UTF-8"\n',
]

_DIR = tempfile.mkdtemp(prefix="fuzz-service-")
atexit.register(shutil.rmtree, _DIR, True)
_SERVICES = os.path.join(_DIR, "etc/guestinit/services.d")
os.makedirs(_SERVICES)
with open(os.path.join(_SERVICES, "y.toml"), "w") as f:  # a neighbour, for after
    f.write('command = ["/bin/true"]\n')
_ROOT = Root(_DIR)
_PATH = "/etc/guestinit/services.d/x.toml"


def TestOneInput(data: bytes) -> None:
    with open(os.path.join(_SERVICES, "x.toml"), "wb") as f:
        f.write(data)
    loaded = files.load_services(_ROOT)
    assert [s.name for s in loaded.specs] == ["x", "y"]
    spec = loaded.specs[0]
    for problem in [spec.error, *spec.errors, *loaded.problems]:
        assert "\n" not in problem and len(problem) <= MAX_LINE, problem
    if spec.error:
        assert spec.error.startswith(_PATH + ": "), spec.error
    else:
        assert spec.command and spec.command[0].startswith("/")
        assert all("\0" not in arg for arg in spec.command)
        assert "\0" not in spec.user + spec.group
    assert set(loaded.levels) == {"x", "y"}
