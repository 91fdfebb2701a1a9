"""``guestctl plan`` on the real H200 capture and on an 8-GPU HGX host tree cloned from it."""

from __future__ import annotations

import json
import shlex
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import CAPTURE_ROOT, GiB, MiB, Tree

from guestinit.host.errors import UserError
from guestinit.host.plan import host as planhost
from guestinit.host.plan import planner, units

TiB = 1 << 40
HostTree = Callable[..., tuple[Tree, list[str]]]


def test_capture_plan_holds_the_256_gib_bar() -> None:
    p = planner.plan(str(CAPTURE_ROOT), None, 64 * GiB)
    assert [d.dev.address for d in p.devices] == ["0000:00:06.0"]
    d = p.devices[0]
    # Firecracker shows all three BARs 64-bit prefetchable: 16 MiB + 256 GiB + 32 MiB
    assert d.pref64 == 256 * GiB + 48 * MiB and d.mem32 == 0
    assert d.pref64_reserve == 512 * GiB >= max(b.size for b in d.dev.bars)
    assert p.pref64_total == 256 * GiB + 48 * MiB
    assert p.hole64 == 544 * GiB >= p.windows_total
    assert p.ovmf_mmio64_mb == 557_056
    assert p.phys_bits_needed == 41
    rows = {r["index"]: r for r in d.bar_entries()}
    assert (rows[2]["page"], rows[2]["entries"], rows[2]["entries_4k"]) == ("1G", 256, 67_108_864)
    assert p.bar_entries_total() == (67_121_152, 280)
    # the capture has hugepage pools but no pages reserved: THP, with the reservation spelled out
    assert p.backing.kind == "thp" and p.ram_entries() == {"4K": 16_777_216, "2M": 32_768}
    assert any("reserve 64 pages of 1G" in w for w in p.warnings)
    assert any("0000:00:06.0 is bound to nvidia, not vfio-pci" in w for w in p.warnings)
    assert p.kata_settings() == {
        "pcie_root_port": 1,
        "cold_plug_vfio": "root-port",
        "hot_plug_vfio": "no-port",
        "enable_hugepages": False,
        "default_memory": 65536,
        "kernel_params": "cgroup_no_v1=all pci=realloc pci=nocrs pci=assign-busses",
    }
    args = p.qemu_args()
    assert "q35-pcihost.pci-hole64-size=544G" in args
    assert "name=opt/ovmf/X-PciMmio64Mb,string=557056" in args
    assert "pcie-root-port,id=rp0,bus=pcie.0,chassis=1,slot=1,pref64-reserve=512G" in args
    assert "vfio-pci,host=0000:00:06.0,bus=rp0" in args
    assert p.guest_kernel_params() == "pci=realloc=off"


def test_hgx_host_eight_gpus(host_tree: HostTree) -> None:
    tree, gpus = host_tree()
    p = planner.plan(str(tree.root), ["all"], 1 * TiB, qemu_version="7.2.22")
    assert [d.dev.address for d in p.devices] == gpus
    for i, d in enumerate(p.devices):
        assert d.pref64 == 256 * GiB + 32 * MiB and d.pref64_reserve == 512 * GiB
        assert d.mem32 == 16 * MiB and d.mem_reserve == 16 * MiB  # BAR0, 32-bit non-prefetchable
        assert d.dev.numa_node == i // 4 and d.dev.iommu_group == str(20 + i)
    assert p.pref64_total == 8 * (256 * GiB + 32 * MiB)
    assert p.hole64 == 4 * TiB + 32 * GiB and p.ovmf_mmio64_mb == 4_227_072
    assert p.phys_bits_needed == 44 and p.host_phys_bits == 52
    assert p.kata_settings()["pcie_root_port"] == 8
    assert p.kata_settings()["default_memory"] == 1048576
    assert p.bar_entries_total() == (8 * (4096 + 67_108_864 + 8192), 8 * (8 + 256 + 16))
    text = "\n".join(p.warnings)
    assert "host kernel 6.8.0-60-generic < 6.12" in text and "< 6.15" in text
    assert "QEMU 7.2.22 < 9.2" in text
    assert "not vfio-pci" not in text and "IOMMU group" not in text and "physical address bits" not in text
    ports = [a for a in p.qemu_args() if a.startswith("pcie-root-port")]
    assert ports[7] == "pcie-root-port,id=rp7,bus=pcie.0,chassis=8,slot=8,pref64-reserve=512G,mem-reserve=16M"


def test_new_enough_host_has_no_slow_path_warnings(host_tree: HostTree) -> None:
    tree, gpus = host_tree(gpus=1, nvswitches=0)
    p = planner.plan(str(tree.root), gpus, 8 * GiB, host_kernel="6.15.2", qemu_version="9.2.0")
    assert not any(w.startswith(("host kernel", "QEMU")) for w in p.warnings)


def test_gpus_and_nvswitches_by_address(host_tree: HostTree) -> None:
    tree, _ = host_tree()
    p = planner.plan(str(tree.root), ["18:00.0", "0000:A0:00.0"], 64 * GiB)
    assert [d.dev.role for d in p.devices] == ["gpu", "nvswitch"]
    switch = p.devices[1]
    assert (switch.pref64_reserve, switch.mem_reserve) == (0, 32 * MiB)
    assert p.hole64 == 512 * GiB + 32 * GiB
    assert "pcie-root-port,id=rp1,bus=pcie.0,chassis=2,slot=2,mem-reserve=32M" in p.qemu_args()


def test_hugepage_backing_when_the_host_has_pages(host_tree: HostTree) -> None:
    tree, _ = host_tree(gpus=1, nvswitches=0)
    tree.hugepages({1048576: (80, 70), 2048: (0, 0)})
    p = planner.plan(str(tree.root), None, 64 * GiB)
    assert (p.backing.kind, p.backing.page) == ("hugetlb", GiB)
    assert p.kata_settings()["enable_hugepages"] is True
    assert p.ram_entries() == {"4K": 16_777_216, "1G": 64}
    backend = "memory-backend-memfd,id=mem0,size=64G,hugetlb=on,hugetlbsize=1G,share=on,prealloc=on"
    assert backend in p.qemu_args()
    assert not any("hugepage" in w for w in p.warnings)
    p2 = planner.plan(str(tree.root), None, 96 * GiB)  # 70 free 1G pages are too few: THP
    assert p2.backing.kind == "thp"
    p3 = planner.plan(str(tree.root), None, 96 * GiB, hugepages_mode="2M")
    assert p3.backing.kind == "hugetlb" and p3.backing.page == 2 * MiB
    assert any("too few free 2M hugepages" in w for w in p3.warnings)


def test_shared_iommu_group_is_warned(host_tree: HostTree) -> None:
    tree, gpus = host_tree(gpus=1, nvswitches=0)
    grp = tree.root / "sys/kernel/iommu_groups/20/devices"
    (grp / "0000:18:00.1").symlink_to("../../../../devices/pci0000:00/0000:00:01.0")
    p = planner.plan(str(tree.root), gpus, 8 * GiB)
    assert any("IOMMU group 20 also holds 0000:18:00.1" in w for w in p.warnings)


def test_too_few_host_address_bits(host_tree: HostTree) -> None:
    tree, _ = host_tree()
    tree.proc("cpuinfo", "address sizes\t: 43 bits physical, 48 bits virtual\n")
    p = planner.plan(str(tree.root), None, 8 * GiB)
    assert any("43 physical address bits; this layout needs 44" in w for w in p.warnings)


def test_formats_render_the_same_plan(
    host_tree: HostTree, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    tree, _ = host_tree()
    base = ["--sysfs-root", str(tree.root), "--memory", "256G", "--cpu", "max", "--qemu-version", "9.2.0"]
    expected = planner.plan(str(tree.root), None, 256 * GiB, cpu="max", qemu_version="9.2.0")

    assert planner.main([*base, "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["pci_hole64_size"] == expected.hole64 and data["kata"] == expected.kata_settings()
    assert data["qemu_args"] == expected.qemu_args()

    assert planner.main([*base, "--format", "kata"]) == 0
    toml = tomllib.loads(capsys.readouterr().out)
    assert toml == {"hypervisor": {"qemu": expected.kata_settings()}}

    assert planner.main([*base, "--format", "qemu"]) == 0
    out = capsys.readouterr().out
    body = "\n".join(line for line in out.splitlines() if not line.startswith("#"))
    assert shlex.split(body.replace("\\\n", " ")) == expected.qemu_args()

    assert planner.main(base) == 0
    text = capsys.readouterr().out
    assert "q35 pci-hole64-size: 4128G" in text and "OVMF X-PciMmio64Mb: 4227072" in text
    assert "rp0  0000:18:00.0  gpu 10de:2335  driver vfio-pci  NUMA node 0  IOMMU group 20" in text
    assert "BAR2 256 GiB at 0x200000000000: 1G pages, 256 entries (4K pages: 67,108,864)" in text
    assert "pcie_root_port = 8" in text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--memory", "lots"],
            "guestctl plan: --memory lots: not a size; use e.g. 64G, 65536M or 65536 (MiB)",
        ),
        (["--gpus", "07:00.0"], "guestctl plan: --gpus 07:00.0: no PCI function 0000:07:00.0 under "),
        (
            ["--memory", "3000M", "--hugepages", "1G"],
            "guestctl plan: --memory 3000M is not a multiple of 1G pages",
        ),
    ],
)
def test_bad_input_is_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert planner.main(["--sysfs-root", str(CAPTURE_ROOT), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1


def test_bad_sysfs_root(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no sys/bus/pci under it"):
        planner.plan(str(tmp_path), None, GiB)
    (tmp_path / "sys/bus/pci/devices").mkdir(parents=True)
    with pytest.raises(UserError, match="no NVIDIA GPU under"):
        planner.plan(str(tmp_path / "sys"), None, GiB)  # a sysfs dir itself is accepted


def test_sizes_and_versions() -> None:
    assert units.parse_size("64G") == 64 * GiB == units.parse_size("65536") == units.parse_size("64GiB")
    assert units.qemu_size(4 * TiB + 32 * GiB) == "4128G" and units.qemu_size(TiB) == "1T"
    assert units.version_tuple("6.12.118+deb13-cloud-amd64") == (6, 12, 118)
    assert units.version_tuple("QEMU emulator version 9.2.0") == (9, 2, 0)


def test_local_qemu_version(fp) -> None:  # type: ignore[no-untyped-def]
    fp.register(
        ["qemu-system-x86_64", "--version"], stdout="QEMU emulator version 9.2.3 (v9.2.3)\nCopyright\n"
    )
    assert planhost.local_qemu_version() == "9.2.3"
    fp.register(["qemu-system-x86_64", "--version"], returncode=127, stdout="")
    assert planhost.local_qemu_version() is None
