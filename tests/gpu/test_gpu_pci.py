"""PCI functions and BARs from sysfs: the real H200 capture and clones of it."""

from __future__ import annotations

from pathlib import Path

from conftest import CAPTURE_ROOT, FLAGS_PREF64, GiB, MiB, Tree
from hypothesis import given, settings
from hypothesis import strategies as st

from guestinit.init.gpu import pci
from guestinit.init.root import Root


def test_capture_h200_and_its_bars() -> None:
    devices = pci.list_devices(Root(CAPTURE_ROOT))
    assert [d.address for d in devices] == [f"0000:00:0{i}.0" for i in range(7)]
    gpus = [d for d in devices if d.is_gpu]
    assert len(gpus) == 1
    h200 = gpus[0]
    assert (h200.address, h200.ids, h200.class_code) == ("0000:00:06.0", "10de:2335", 0x030200)
    assert (h200.subsystem_vendor, h200.subsystem_device, h200.revision) == (0x10DE, 0x18BF, 0xA1)
    assert h200.driver == "nvidia"  # the capture keeps the link text in a file
    assert h200.numa_node == -1 and h200.iommu_group is None
    assert str(h200.link) == "32.0 GT/s PCIe x16"
    assert h200.path == "/sys/devices/pci0000:00/0000:00:06.0"
    assert [(b.index, b.size) for b in h200.bars] == [(0, 16 * MiB), (2, 256 * GiB), (4, 32 * MiB)]
    bar1 = h200.bars[1]
    assert bar1.start == 0x100000000000 and bar1.is_64bit and bar1.prefetchable
    assert bar1.largest_page == pci.PAGE_1G
    assert bar1.entries(pci.PAGE_1G) == 256
    assert bar1.entries(pci.PAGE_2M) == 131_072
    assert bar1.entries(pci.PAGE_4K) == 67_108_864
    assert h200.bars[0].largest_page == pci.PAGE_2M  # 16 MiB cannot use a 1 GiB page
    virtio = devices[1]
    assert virtio.role == "other" and virtio.driver == "virtio-pci"
    assert virtio.bars[0].is_64bit and not virtio.bars[0].prefetchable
    assert pci.bar_warnings(devices) == []


def test_symlinked_clone_reads_the_same(capture_tree: Tree) -> None:
    capture_tree.gpu("0000:00:07.0", iommu_group=7, numa_node=1)
    devices = {d.address: d for d in pci.list_devices(Root(capture_tree.root))}
    clone, original = devices["0000:00:07.0"], devices["0000:00:06.0"]
    assert (clone.ids, clone.driver, str(clone.link)) == (original.ids, original.driver, str(original.link))
    assert clone.iommu_group == "7" and clone.numa_node == 1
    assert clone.bars == original.bars


def test_upstream_bridges_and_roles(host_tree) -> None:  # type: ignore[no-untyped-def]
    tree, gpus = host_tree(gpus=2, nvswitches=1)
    devices = {d.address: d for d in pci.list_devices(Root(tree.root))}
    gpu = devices[gpus[0]]
    assert gpu.upstream == ["0000:00:01.0"] and gpu.role == "gpu"
    assert devices["0000:00:01.0"].role == "bridge"
    assert devices["0000:a0:00.0"].role == "nvswitch"
    assert not gpu.bars[0].is_64bit and not gpu.bars[0].prefetchable  # a host GPU's BAR0


def test_sw_mng_needs_the_vpd_mark(capture_tree: Tree) -> None:
    capture_tree.sw_mng("0000:00:10.0")
    capture_tree.sw_mng("0000:00:11.0", marked=False)
    devices = {d.address: d for d in pci.list_devices(Root(capture_tree.root))}
    assert devices["0000:00:10.0"].role == "sw_mng"
    assert devices["0000:00:11.0"].role == "other"


def test_misplaced_bar_is_warned(capture_tree: Tree) -> None:
    capture_tree.gpu("0000:00:07.0", bars=[(2, 0x200000000000 + 2 * MiB, 256 * GiB, FLAGS_PREF64)])
    warnings = pci.bar_warnings(pci.list_devices(Root(capture_tree.root)))
    assert len(warnings) == 1
    assert warnings[0].startswith("0000:00:07.0 BAR2 256 GiB at 0x200000200000 is not 1 GiB aligned")
    # 511 2 MiB pages, 255 1 GiB pages, one 2 MiB page: the mapping loses its 1 GiB alignment
    assert "767 entries instead of 256" in warnings[0]


def test_entries_mixed_head_and_tail() -> None:
    # 2 GiB starting 2 MiB above a 1 GiB boundary: 511 x 2M + 1 x 1G + 1 x 2M
    assert pci.entries(GiB + 2 * MiB, 2 * GiB, pci.PAGE_1G) == 513
    assert pci.entries(0x1000, 0x1000, pci.PAGE_1G) == 1
    assert pci.entries(0, 100, pci.PAGE_4K) == 1  # a tiny BAR still takes one page
    assert pci.largest_page(0x100000000000, 256 * GiB) == pci.PAGE_1G
    assert pci.largest_page(GiB + 2 * MiB, 2 * GiB) == pci.PAGE_2M


def _greedy(start: int, size: int, max_page: int) -> int:
    """Walk the range, each step the largest naturally aligned page that fits."""
    pos, end, n = start, start + size, 0
    while pos < end:
        page = next(p for p in reversed(pci.PAGE_SIZES) if p <= max_page and pos % p == 0 and pos + p <= end)
        pos += page
        n += 1
    return n


@st.composite
def _ranges(draw: st.DrawFn) -> tuple[int, int, int]:
    max_page = draw(st.sampled_from(pci.PAGE_SIZES))
    # in 4 KiB units; 4K walks are one step per page, so keep those short
    longest = 4096 if max_page == pci.PAGE_4K else 3 * 512 * 512
    start = draw(st.integers(0, 4 * 512 * 512)) * pci.PAGE_4K
    return start, draw(st.integers(1, longest)) * pci.PAGE_4K, max_page


@settings(deadline=None, max_examples=150)
@given(_ranges())
def test_entries_match_a_page_walk(case: tuple[int, int, int]) -> None:
    start, size, max_page = case
    assert pci.entries(start, size, max_page) == _greedy(start, size, max_page)


def test_resize_bar(capture_tree: Tree) -> None:
    path = capture_tree.gpu("0000:00:07.0", driver=None, extra={"resource2_resize": "0000000000003fc0\n"})
    root = Root(capture_tree.root)
    dev = pci.read_device(root, "0000:00:07.0")
    assert dev is not None
    bar = dev.bars[1]
    assert bar.resizable[0] == 64 * MiB and bar.resizable[-1] == 8 * GiB
    assert pci.resize_bar(root, dev, 2, 8 * GiB) == 8 * GiB
    assert (path / "resource2_resize").read_text() == "13\n"  # 2**(13+20) bytes = 8 GiB
    done, problems = pci.apply_rebar(root, [dev], "max")
    assert done == [] and problems == []  # 8 GiB < 256 GiB already: nothing to grow


def test_resize_refused_with_a_driver_bound(capture_tree: Tree) -> None:
    capture_tree.gpu("0000:00:07.0", extra={"resource2_resize": "00000000000c0000\n"})
    root = Root(capture_tree.root)
    dev = pci.read_device(root, "0000:00:07.0")
    assert dev is not None
    assert dev.bars[1].resizable == (256 * GiB, 512 * GiB)
    done, problems = pci.apply_rebar(root, [dev], "max")
    assert done == []
    assert problems == ["0000:00:07.0 BAR2: driver nvidia is bound; resize before it loads"]
    assert pci.apply_rebar(root, [dev], "off") == ([], [])


def test_missing_tree_reads_as_no_devices(tmp_path: Path) -> None:
    assert pci.list_devices(Root(tmp_path)) == []
