"""The planner's QEMU arguments are accepted by this machine's qemu-system-x86_64.

Each run starts QEMU paused (-S, TCG, no default devices), has it parse and realise the whole
command line, then quits over QMP: nothing boots. vfio-pci devices cannot be realised without
the host's GPU, so each one is checked alone: QEMU must get past every other argument and fail
only where it opens the host device (its message names that -device and says "no such host
device"). The hugetlb backend is checked the same way: accepted, or refused only because this
machine holds no 1 GiB pages.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
from conftest import CAPTURE_ROOT, GiB

from guestinit.host.plan import planner
from guestinit.host.plan.layout import Plan

QEMU = shutil.which("qemu-system-x86_64")
pytestmark = pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed")
QMP_QUIT = '{"execute":"qmp_capabilities"}\n{"execute":"quit"}\n'
PAUSED = ["-accel", "tcg", "-S", "-nodefaults", "-display", "none", "-monitor", "none", "-qmp", "stdio"]


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    assert QEMU is not None
    return subprocess.run([QEMU, *PAUSED, *args], input=QMP_QUIT, capture_output=True, text=True, timeout=60)


def _split(args: list[str]) -> tuple[list[str], list[str]]:
    """(everything but the vfio-pci devices, the vfio-pci device strings)."""
    rest: list[str] = []
    vfio: list[str] = []
    i = 0
    while i < len(args):
        if args[i] == "-device" and args[i + 1].startswith("vfio-pci,"):
            vfio.append(args[i + 1])
        else:
            rest += args[i : i + 2]
        i += 2
    return rest, vfio


def _check(p: Plan) -> None:
    rest, vfio = _split(p.qemu_args())
    assert vfio, "the plan passes devices through"
    done = _run(rest)
    assert done.returncode == 0, done.stderr
    assert '"reason": "host-qmp-quit"' in done.stdout
    for device in vfio:
        failed = _run([*rest, "-device", device])
        assert failed.returncode == 1
        assert failed.stderr.startswith(f"qemu-system-x86_64: -device {device}: vfio "), failed.stderr
        assert "no such host device" in failed.stderr


def test_capture_plan_starts() -> None:
    _check(planner.plan(str(CAPTURE_ROOT), None, 2 * GiB, cpu="max"))


def test_hgx_plan_starts(host_tree) -> None:  # type: ignore[no-untyped-def]
    tree, _ = host_tree()
    p = planner.plan(str(tree.root), None, 2 * GiB, cpu="max")
    assert len(p.devices) == 8 and p.phys_bits_needed == 44
    _check(p)
    switches = planner.plan(str(tree.root), ["0000:a0:00.0", "0000:a1:00.0"], 2 * GiB, cpu="max")
    _check(switches)


def test_hugetlb_backend_is_accepted() -> None:
    p = planner.plan(str(CAPTURE_ROOT), None, 2 * GiB, cpu="max", hugepages_mode="1G")
    rest, _ = _split(p.qemu_args())
    done = _run(rest)
    if done.returncode != 0:  # this machine reserves no 1 GiB pages: only the allocation may fail
        assert "unable to map backing store for guest RAM: Cannot allocate memory" in done.stderr, done.stderr
        assert "-object memory-backend-memfd" not in done.stderr  # no complaint about the arguments
