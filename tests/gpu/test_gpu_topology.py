"""Mode detection for every NVRC mode, on the capture and on trees cloned from it."""

from __future__ import annotations

import pytest
from conftest import CAPTURE_ROOT, Tree, guest_gpus

from guestinit.init import params
from guestinit.init.gpu import topology
from guestinit.init.root import Root


def _build(tree: Tree, nvswitches: int, gpus: int, sw_mng: int) -> None:
    guest_gpus(tree, gpus)
    for j in range(nvswitches):
        tree.nvswitch(f"0000:00:{0x18 + j:02x}.0", start=0xE0000000 + j * (32 << 20))
    for k in range(sw_mng):
        tree.sw_mng(f"0000:00:{0x1C + k:02x}.0", start=0x3F000000000 + k * (32 << 20))


def test_capture_is_gpu_mode() -> None:
    topo = topology.detect(Root(CAPTURE_ROOT))
    assert topo.mode == "gpu" and not topo.forced
    assert [d.address for d in topo.gpus] == ["0000:00:06.0"]
    assert topo.counts == (0, 1, 0)
    assert topo.spec.modules == ("nvidia", "nvidia_uvm") and topo.spec.fabric_mode is None
    fields = topo.notify_fields()
    assert fields == {"X_GUESTINIT_MODE": "gpu", "X_GUESTINIT_TOPOLOGY": "nvswitch=0,gpu=1,sw_mng=0"}


@pytest.mark.parametrize(
    ("counts", "mode", "fabric_mode", "nvlsm"),
    [
        ((0, 0, 0), "cpu", None, False),
        ((0, 1, 0), "gpu", None, False),
        ((0, 8, 0), "gpu", None, False),
        ((4, 8, 0), "gpu-nvl4", 0, False),
        ((0, 8, 4), "gpu-nvl5", 0, True),
        ((4, 0, 0), "servicevm-nvl4", 1, False),
        ((0, 0, 4), "servicevm-nvl5", 1, True),
    ],
)
def test_every_mode(
    capture_tree: Tree, counts: tuple[int, int, int], mode: str, fabric_mode: int | None, nvlsm: bool
) -> None:
    _build(capture_tree, *counts)
    topo = topology.detect(Root(capture_tree.root))
    assert topo.counts == counts
    assert (topo.mode, topo.spec.fabric_mode, topo.spec.nvlsm) == (mode, fabric_mode, nvlsm)
    assert topo.status().startswith(f"mode {mode} (detected: ")


@pytest.mark.parametrize(
    ("counts", "runs_as"),
    [((2, 8, 0), "gpu"), ((4, 4, 0), "gpu"), ((0, 0, 3), "cpu"), ((4, 8, 4), "gpu"), ((2, 0, 0), "cpu")],
)
def test_unexpected_topology_is_reported_and_falls_back(
    capture_tree: Tree, counts: tuple[int, int, int], runs_as: str
) -> None:
    _build(capture_tree, *counts)
    topo = topology.detect(Root(capture_tree.root))
    n, g, s = counts
    assert topo.mode == "unknown"
    assert topo.fallback == runs_as and topo.spec.name == runs_as
    reason = f"unexpected topology: {n} NVSwitch, {g} GPU, {s} SW_MNG"
    assert topo.reason == reason
    assert topo.status() == f"mode unknown ({reason}); running as {runs_as}"
    assert topo.notify_fields()["X_GUESTINIT_MODE"] == "unknown"
    assert topo.spec.fabric_mode is None  # the fallback never starts fabricmanager


def test_forced_mode_wins(capture_tree: Tree) -> None:
    topo = topology.detect(Root(capture_tree.root), forced="cpu")
    assert topo.mode == "cpu" and topo.forced
    assert topo.reason == "guestinit.mode=cpu; sysfs shows 0 NVSwitch, 1 GPU, 0 SW_MNG (gpu)"
    assert topo.status() == "mode cpu (forced: 0 NVSwitch, 1 GPU, 0 SW_MNG)"


def test_forced_mode_from_the_command_line(capture_tree: Tree) -> None:
    config = params.parse_cmdline("console=ttyS0 guestinit.mode=servicevm-nvl4")
    mode = config["mode"]
    assert isinstance(mode, str)
    topo = topology.detect(Root(capture_tree.root), mode)
    assert topo.mode == "servicevm-nvl4" and topo.spec.modules == ("nvidia",)


def test_bad_forced_mode_is_ignored_not_fatal(capture_tree: Tree) -> None:
    topo = topology.detect(Root(capture_tree.root), forced="gpu-nvl9")
    assert topo.mode == "gpu" and not topo.forced
    assert topo.reason.startswith("guestinit.mode=gpu-nvl9 is not a mode, ignored; ")


def test_ordinary_mellanox_nic_is_not_sw_mng(capture_tree: Tree) -> None:
    capture_tree.sw_mng("0000:00:1c.0", marked=False)
    assert topology.detect(Root(capture_tree.root)).mode == "gpu"


def test_table_covers_every_mode_name() -> None:
    assert {s.name for s in topology.MODE_TABLE} == set(params.MODES) - {"auto"}
