"""A cgroup of a test's own in this machine's real cgroup2 hierarchy, where the kernel allows
one (root, cgroup2 mounted and writable, cgroup.kill): tests/init/test_cgroups.py and
tests/kata/test_standin_cgroups.py run there what they check on a fake tree elsewhere, and
are skipped with the reason where this machine has none."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path


def cgroup_of(pid: int | str) -> str:
    """The cgroup2 path of a process ("0::" line of /proc/PID/cgroup), "" when it has none."""
    text = Path(f"/proc/{pid}/cgroup").read_text()
    return next((line[3:].strip() for line in text.splitlines() if line.startswith("0::")), "")


def own_cgroup() -> tuple[Path | None, str]:
    """This process's cgroup in the cgroup2 hierarchy (a directory), or None and why not."""
    if os.geteuid() != 0:
        return None, "not root"
    mount = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            if right.split()[:1] == ["cgroup2"]:
                mount = Path(left.split()[4])
                break
    if mount is None:
        return None, "no cgroup2 mounted on this machine"
    own = cgroup_of("self")
    if not own:
        return None, "this process is in no cgroup2 cgroup"
    here = mount / own.lstrip("/")
    if not os.access(here, os.W_OK):
        return None, f"{here} is not writable"
    return here, ""


def make_test_cgroup() -> tuple[Path | None, str]:
    """A fresh cgroup under this process's own (the caller removes it), or None and why not."""
    here, why = own_cgroup()
    if here is None:
        return None, why
    path = here / f"guestinit-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        path.mkdir()
    except OSError as exc:
        return None, f"cannot create a cgroup under {here}: {exc}"
    if not (path / "cgroup.kill").exists():
        path.rmdir()
        return None, "no cgroup.kill (Linux < 5.14)"
    return path, ""


def remove_test_cgroup(path: Path, reap: Callable[[], object] = lambda: None) -> None:
    """Kill whatever is left under ``path``, reap it (``reap``), and remove the cgroups,
    deepest first."""
    for kill in path.rglob("cgroup.kill"):
        try:
            kill.write_text("1")
        except OSError:
            pass
    deadline = time.monotonic() + 5
    for cgroup in sorted((p.parent for p in path.rglob("cgroup.procs")), key=lambda p: -len(p.parts)):
        while True:
            reap()
            try:
                cgroup.rmdir()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
