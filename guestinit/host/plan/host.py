"""Reading the host for ``guestctl plan``: which devices, their IOMMU groups and drivers, the
hugepage pools and THP mode that decide RAM backing, and the kernel / QEMU / CPU facts behind
the slow-path warnings (references §5)."""

from __future__ import annotations

import os
import re
import subprocess

from guestinit.host.errors import UserError
from guestinit.host.plan.layout import Backing, Plan
from guestinit.host.plan.units import KiB, qemu_size, version_tuple
from guestinit.init.gpu import hugepages, pci
from guestinit.init.root import Root

SLOW_KERNEL_HUGE_FAULTS = (6, 12)
SLOW_KERNEL_PFNMAP_DMA = (6, 15)
SLOW_QEMU_BAR_MMAP = (9, 2)


def root_for(sysfs_root: str) -> Root:
    path = os.path.abspath(sysfs_root)
    if os.path.isdir(os.path.join(path, "sys", "bus", "pci")):
        return Root(path if path != "/" else "/")
    if os.path.basename(path) == "sys" and os.path.isdir(os.path.join(path, "bus", "pci")):
        return Root(os.path.dirname(path))
    raise UserError(
        f"--sysfs-root {sysfs_root}: no sys/bus/pci under it",
        hint="give a tree shaped like / (/ itself, or a capture's root/ directory)",
    )


def _normalise_bdf(text: str) -> str:
    t = text.strip().lower()
    return t if t.count(":") == 2 else f"0000:{t}"


def select(devices: list[pci.PciDevice], gpus: list[str] | None, where: str) -> list[pci.PciDevice]:
    by_address = {d.address: d for d in devices}
    all_gpus = [d for d in devices if d.is_gpu]
    if gpus is None or [g.lower() for g in gpus] == ["all"]:
        if not all_gpus:
            raise UserError(f"no NVIDIA GPU under {where}", hint="name the devices with --gpus BDF,...")
        return all_gpus
    chosen = []
    for text in gpus:
        bdf = _normalise_bdf(text)
        if not pci.is_bdf(bdf) or bdf not in by_address:
            listed = ", ".join(d.address for d in all_gpus) or "none"
            raise UserError(
                f"--gpus {text}: no PCI function {bdf} under {where}", hint=f"GPUs there: {listed}"
            )
        if by_address[bdf] not in chosen:
            chosen.append(by_address[bdf])
    return chosen


def read_host_kernel(root: Root) -> str | None:
    text = root.read_text("/proc/sys/kernel/osrelease", "").strip()
    if text:
        return text
    return os.uname().release if root.is_real else None


def read_phys_bits(root: Root) -> int | None:
    m = re.search(r"address sizes\s*:\s*(\d+) bits physical", root.read_text("/proc/cpuinfo", ""))
    return int(m.group(1)) if m else None


def local_qemu_version(binary: str = "qemu-system-x86_64") -> str | None:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"version (\d+\.\d+(?:\.\d+)?)", out.stdout)
    return m.group(1) if m else None


def choose_backing(root: Root, memory: int, want: str, warnings: list[str]) -> Backing:
    pools = {p.size_kb * KiB: p for p in hugepages.read_pools(root) if p.node is None}
    thp_mode = hugepages.thp(root)["enabled"]

    def fits(page: int) -> bool:
        pool = pools.get(page)
        if pool is None or memory % page:
            return False
        free = pool.free if pool.free is not None else pool.total
        return free >= memory // page

    def advice(page: int) -> str:
        n = memory // page
        return (
            f"reserve {n} pages of {pci.PAGE_NAMES[page]}: echo {n} > "
            f"/sys/kernel/mm/hugepages/hugepages-{page // KiB}kB/nr_hugepages, or "
            f"hugepagesz={pci.PAGE_NAMES[page]} hugepages={n} on the host kernel command line"
        )

    if want in ("1G", "2M"):
        page = pci.PAGE_1G if want == "1G" else pci.PAGE_2M
        if memory % page:
            raise UserError(
                f"--memory {qemu_size(memory)} is not a multiple of {want} pages", hint="round it"
            )
        if page not in pools:
            warnings.append(f"the host kernel has no {want} hugepage pool")
        elif not fits(page):
            warnings.append(f"too few free {want} hugepages for {qemu_size(memory)} of RAM: {advice(page)}")
        return Backing("hugetlb", page, pools[page].free if page in pools else None)
    if want == "thp":
        return Backing("thp", pci.PAGE_2M)
    if want == "off":
        return Backing("none", pci.PAGE_4K)
    for page in (pci.PAGE_1G, pci.PAGE_2M):
        if fits(page):
            return Backing("hugetlb", page, pools[page].free)
    best = pci.PAGE_1G if pci.PAGE_1G in pools and memory % pci.PAGE_1G == 0 else pci.PAGE_2M
    hint = f"for hugetlbfs backing (pins 5-10x faster than 4K pages), {advice(best)}"
    if thp_mode in ("always", "madvise"):
        warnings.append(
            f"no hugepage pool holds {qemu_size(memory)}: backing RAM with THP ({thp_mode}); {hint}"
        )
        return Backing("thp", pci.PAGE_2M)
    warnings.append(f"no hugepage pool holds {qemu_size(memory)} and THP is {thp_mode}: 4K pages; {hint}")
    return Backing("none", pci.PAGE_4K)


def device_warnings(root: Root, chosen: list[pci.PciDevice], warnings: list[str]) -> None:
    addresses = {d.address for d in chosen}
    for d in chosen:
        if d.driver != "vfio-pci":
            warnings.append(
                f"{d.address} is bound to {d.driver or 'no driver'}, not vfio-pci: "
                "bind it to vfio-pci before passing it through"
            )
        if d.iommu_group is not None:
            members = root.listdir(f"/sys/kernel/iommu_groups/{d.iommu_group}/devices")
            others = [m for m in members if m not in addresses and pci.is_bdf(m)]
            if others:
                warnings.append(
                    f"{d.address}: IOMMU group {d.iommu_group} also holds {', '.join(others)}: "
                    "every endpoint in a group must go to the same VM"
                )
    for text in pci.bar_warnings(chosen):
        warnings.append(f"host {text} (the host mapping cannot use the larger pages)")


def version_warnings(plan: Plan) -> None:
    kv = version_tuple(plan.host_kernel)
    if kv is None:
        plan.warnings.append("host kernel version unknown: give --host-kernel to check for the slow paths")
    else:
        if kv < SLOW_KERNEL_HUGE_FAULTS:
            plan.warnings.append(
                f"host kernel {plan.host_kernel} < 6.12: vfio-pci maps BARs with 4K pages (no huge faults); "
                "every BAR sizing in the guest remaps page by page, about 2 s per config write"
            )
        if kv < SLOW_KERNEL_PFNMAP_DMA:
            plan.warnings.append(
                f"host kernel {plan.host_kernel} < 6.15: DMA-mapping a BAR goes page by page "
                "(about 1 s per 32 GB BAR; 6.15 uses the mapping's page mask)"
            )
    qv = version_tuple(plan.qemu_version)
    if qv is None:
        plan.warnings.append("QEMU version unknown: give --qemu-version to check for the slow path")
    elif qv < SLOW_QEMU_BAR_MMAP:
        plan.warnings.append(
            f"QEMU {plan.qemu_version} < 9.2: BAR mmaps are not aligned, so the host cannot use "
            "2M / 1G mappings for them"
        )
    if plan.host_phys_bits is not None and plan.host_phys_bits < plan.phys_bits_needed:
        plan.warnings.append(
            f"the host CPU has {plan.host_phys_bits} physical address bits; this layout needs "
            f"{plan.phys_bits_needed}: fewer GPUs per VM or less RAM"
        )
