"""Fixture trees for the GPU tests, built from the shapes of the real H200 capture.

``Tree`` starts from a copy of ``tests/fixtures/h200-firecracker-vm/root`` (a guest with one
H200 and five virtio functions) or from an empty host-like tree, and clones the captured H200's
device directory (its config space, ids, link and BAR sizes) into more GPUs, NVSwitches (10de:22a3,
class 0x068000, one 32 MiB BAR0) and NVLink-5 SW_MNG bridges (15b3 with ``SW_MNG`` in the VPD).
Clones use real symlinks the way sysfs does, so the code is exercised on both link forms (the
capture stores link text in plain files). Nothing generated is committed.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

CAPTURE = Path(__file__).resolve().parents[1] / "fixtures" / "h200-firecracker-vm"
CAPTURE_ROOT = CAPTURE / "root"
H200_ADDRESS = "0000:00:06.0"
H200_DIR = CAPTURE_ROOT / "sys/devices/pci0000:00" / H200_ADDRESS

MiB, GiB = 1 << 20, 1 << 30
FLAGS_PREF64 = 0x14220C  # as the capture shows: MEM | PREFETCH | MEM_64 | SIZEALIGN
FLAGS_MEM64 = 0x140204  # the capture's virtio BARs: MEM | MEM_64 | SIZEALIGN
FLAGS_MEM32 = 0x040200  # MEM | SIZEALIGN: a 32-bit non-prefetchable BAR (a host's GPU BAR0)
FLAGS_BRIDGE = 0x0

Bars = list[tuple[int, int, int, int]]  # (index, start, size, flags)


def capture_bar_sizes() -> dict[int, int]:
    """The H200's BAR sizes by resource index, read from the capture (16 MiB, 256 GiB, 32 MiB)."""
    sizes = {}
    for index, line in enumerate((H200_DIR / "resource").read_text().splitlines()):
        start, end, flags = (int(x, 16) for x in line.split())
        if flags and end > start:
            sizes[index] = end - start + 1
    return sizes


def resource_text(bars: Bars, lines: int = 7) -> str:
    by_index = {i: (start, size, flags) for i, start, size, flags in bars}
    out = []
    for i in range(lines):
        if i in by_index:
            start, size, flags = by_index[i]
            out.append(f"0x{start:016x} 0x{start + size - 1:016x} 0x{flags:016x}")
        else:
            out.append(f"0x{0:016x} 0x{0:016x} 0x{0:016x}")
    return "\n".join(out) + "\n"


def _make_writable(top: Path) -> None:
    for dirpath, _dirs, filenames in os.walk(top):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                os.chmod(p, 0o644)


class Tree:
    """A root-shaped directory with a fake /sys (and bits of /proc)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "sys/bus/pci/devices").mkdir(parents=True, exist_ok=True)
        (root / "sys/devices/pci0000:00").mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_capture(cls, dst: Path) -> Tree:
        shutil.copytree(CAPTURE_ROOT, dst, symlinks=True)
        _make_writable(dst)
        return cls(dst)

    def device_dir(self, address: str) -> Path:
        link = self.root / "sys/bus/pci/devices" / address
        if link.is_symlink():
            return link.resolve()
        return (link.parent / link.read_text().strip()).resolve()

    def remove(self, address: str) -> None:
        shutil.rmtree(self.device_dir(address))
        (self.root / "sys/bus/pci/devices" / address).unlink()

    def add(
        self,
        address: str,
        *,
        parent: str | None = None,
        vendor: int | None = None,
        device: int | None = None,
        class_code: int | None = None,
        bars: Bars | None = None,
        driver: str | None = "nvidia",
        numa_node: int | None = None,
        iommu_group: int | None = None,
        vpd: bytes | None = None,
        extra: dict[str, str] | None = None,
    ) -> Path:
        """Clone the captured H200's directory to ``address`` (under bridge ``parent``) and
        rewrite what differs."""
        parent_dir = self.device_dir(parent) if parent else self.root / "sys/devices/pci0000:00"
        dst = parent_dir / address
        shutil.copytree(H200_DIR, dst, symlinks=True)
        _make_writable(dst)
        for name in ("driver", "iommu_group"):
            (dst / name).unlink(missing_ok=True)
        if vendor is not None:
            (dst / "vendor").write_text(f"0x{vendor:04x}\n")
        if device is not None:
            (dst / "device").write_text(f"0x{device:04x}\n")
        if class_code is not None:
            (dst / "class").write_text(f"0x{class_code:06x}\n")
        if bars is not None:
            (dst / "resource").write_text(resource_text(bars))
        if numa_node is not None:
            (dst / "numa_node").write_text(f"{numa_node}\n")
        if vpd is not None:
            (dst / "vpd").write_bytes(vpd)
        for name, text in (extra or {}).items():
            (dst / name).write_text(text)
        if driver:
            drv = self.root / "sys/bus/pci/drivers" / driver
            drv.mkdir(parents=True, exist_ok=True)
            (dst / "driver").symlink_to(os.path.relpath(drv, dst))
        if iommu_group is not None:
            grp = self.root / "sys/kernel/iommu_groups" / str(iommu_group)
            (grp / "devices").mkdir(parents=True, exist_ok=True)
            (dst / "iommu_group").symlink_to(os.path.relpath(grp, dst))
            (grp / "devices" / address).symlink_to(os.path.relpath(dst, grp / "devices"))
        link = self.root / "sys/bus/pci/devices" / address
        link.symlink_to(os.path.relpath(dst, link.parent))
        return dst

    def bridge(self, address: str, *, parent: str | None = None, numa_node: int | None = None) -> Path:
        return self.add(
            address, parent=parent, vendor=0x10B5, device=0xC010, class_code=0x060400, bars=[],
            driver="pcieport", numa_node=numa_node,
        )  # fmt: skip

    # ------------------------------------------------------------------ device kinds

    def gpu(self, address: str, bars: Bars | None = None, **kw: object) -> Path:
        return self.add(address, bars=bars, **kw)  # type: ignore[arg-type]

    def nvswitch(self, address: str, start: int = 0xE0000000, **kw: object) -> Path:
        kw.setdefault("driver", None)
        return self.add(
            address, vendor=0x10DE, device=0x22A3, class_code=0x068000,
            bars=[(0, start, 32 * MiB, FLAGS_MEM32)], **kw,  # type: ignore[arg-type]
        )  # fmt: skip

    def sw_mng(self, address: str, start: int = 0x3F000000000, marked: bool = True, **kw: object) -> Path:
        kw.setdefault("driver", "mlx5_core")
        vpd = b"\x82\x10ConnectX-7 SW\x90\x20PN\x08" + (b"SW_MNG" if marked else b"NIC_ETH") + b"\x78"
        return self.add(
            address, vendor=0x15B3, device=0x1021, class_code=0x020700,
            bars=[(0, start, 32 * MiB, FLAGS_PREF64)], vpd=vpd, **kw,  # type: ignore[arg-type]
        )  # fmt: skip

    def hugepages(
        self, pools: dict[int, tuple[int, int]], nodes: dict[int, dict[int, int]] | None = None
    ) -> None:
        """pools: {size_kb: (total, free)}; nodes: {node: {size_kb: total}}."""
        for kb, (total, free) in pools.items():
            d = self.root / f"sys/kernel/mm/hugepages/hugepages-{kb}kB"
            d.mkdir(parents=True, exist_ok=True)
            (d / "nr_hugepages").write_text(f"{total}\n")
            (d / "free_hugepages").write_text(f"{free}\n")
            (d / "resv_hugepages").write_text("0\n")
            (d / "surplus_hugepages").write_text("0\n")
        for node, sizes in (nodes or {}).items():
            for kb, total in sizes.items():
                d = self.root / f"sys/devices/system/node/node{node}/hugepages/hugepages-{kb}kB"
                d.mkdir(parents=True, exist_ok=True)
                (d / "nr_hugepages").write_text(f"{total}\n")
                (d / "free_hugepages").write_text(f"{total}\n")
                (d / "surplus_hugepages").write_text("0\n")

    def thp(self, enabled: str = "madvise") -> None:
        d = self.root / "sys/kernel/mm/transparent_hugepage"
        d.mkdir(parents=True, exist_ok=True)
        modes = ["always", "madvise", "never"]
        (d / "enabled").write_text(" ".join(f"[{m}]" if m == enabled else m for m in modes) + "\n")
        (d / "defrag").write_text("always defer defer+madvise [madvise] never\n")

    def proc(self, name: str, text: str) -> None:
        p = self.root / "proc" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


def guest_gpus(tree: Tree, count: int) -> list[str]:
    """Make the capture's guest hold ``count`` H200s at 00:06.0, 00:07.0, ... (Firecracker style:
    one function per slot on the root bus, BARs packed 256 GiB-aligned above 16 TiB)."""
    sizes = capture_bar_sizes()
    addresses = []
    for i in range(count):
        address = f"0000:00:{6 + i:02x}.0"
        addresses.append(address)
        if address == H200_ADDRESS:
            continue
        base = 0x100000000000 + i * 512 * GiB
        bars = [(2, base, sizes[2], FLAGS_PREF64), (4, base + sizes[2], sizes[4], FLAGS_PREF64),
                (0, base + sizes[2] + sizes[4], sizes[0], FLAGS_PREF64)]  # fmt: skip
        tree.gpu(address, bars=bars)
    if count == 0:
        tree.remove(H200_ADDRESS)
    return addresses


def hgx_host(tree: Tree, gpus: int = 8, nvswitches: int = 4) -> list[str]:
    """A host's HGX H200 baseboard: each GPU behind its own PCIe switch port, BAR0 32-bit
    non-prefetchable below 4 GiB, BAR1 (256 GiB) and BAR3 (32 MiB) prefetchable in a 512 GiB
    slot per GPU; two NUMA nodes; bound to vfio-pci, one IOMMU group each; NVSwitches behind
    their own ports."""
    sizes = capture_bar_sizes()
    addresses = []
    for i in range(gpus):
        node = i // 4
        rp = f"0000:00:{1 + i:02x}.0"
        tree.bridge(rp, numa_node=node)
        address = f"0000:{0x18 + i * 0x10:02x}:00.0"
        base = 0x200000000000 + i * 512 * GiB
        bars = [(0, 0x90000000 + i * sizes[0], sizes[0], FLAGS_MEM32), (2, base, sizes[2], FLAGS_PREF64),
                (4, base + sizes[2], sizes[4], FLAGS_PREF64)]  # fmt: skip
        tree.gpu(address, parent=rp, bars=bars, driver="vfio-pci", numa_node=node, iommu_group=20 + i)
        addresses.append(address)
    for j in range(nvswitches):
        rp = f"0000:00:{0x10 + j:02x}.0"
        tree.bridge(rp, numa_node=j // 2)
        tree.nvswitch(f"0000:{0xA0 + j:02x}:00.0", parent=rp, start=0xA0000000 + j * 32 * MiB,
                      driver="vfio-pci", numa_node=j // 2, iommu_group=40 + j)  # fmt: skip
    tree.hugepages({2048: (0, 0), 1048576: (0, 0)}, {0: {2048: 0, 1048576: 0}, 1: {2048: 0, 1048576: 0}})
    tree.thp("madvise")
    tree.proc("cpuinfo", "processor\t: 0\naddress sizes\t: 52 bits physical, 57 bits virtual\n")
    tree.proc("sys/kernel/osrelease", "6.8.0-60-generic\n")
    return addresses


@pytest.fixture
def capture_tree(tmp_path: Path) -> Tree:
    return Tree.from_capture(tmp_path / "root")


@pytest.fixture
def host_tree(tmp_path: Path) -> Callable[..., tuple[Tree, list[str]]]:
    def build(gpus: int = 8, nvswitches: int = 4) -> tuple[Tree, list[str]]:
        tree = Tree(tmp_path / "host")
        return tree, hgx_host(tree, gpus, nvswitches)

    return build
