"""``guestctl plan``: the BAR / MMIO / hugepage settings a GPU VM needs, from the host's sysfs.

  guestctl plan [--sysfs-root DIR] [--gpus BDF,...|all] [--memory SIZE]
                [--format text|json|qemu|kata] [--hugepages auto|1G|2M|thp|off] [--cpu MODEL]

For the devices to pass through it prints: the prefetchable 64-bit MMIO they need; one
``pcie-root-port`` per device whose ``pref64-reserve`` holds its prefetchable BARs (a power of
two, so the largest BAR stays naturally aligned wherever the window lands) and whose
``mem-reserve`` holds the rest; q35's ``pci-hole64-size`` and OVMF's ``X-PciMmio64Mb`` holding
all windows; the guest-physical address bits that needs; hugepage backing for guest RAM;
Kata's settings; the page-table entries for BARs and RAM at 4 KiB versus the chosen page size;
and warnings for the known slow paths (host kernel < 6.12 / 6.15, QEMU < 9.2; references §5).

``--sysfs-root`` is a tree shaped like / (``/`` itself, or a capture's ``root/``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from guestinit.host.errors import UserError
from guestinit.init import hugepages, pci
from guestinit.init.root import Root

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40
DEFAULT_HOLE64 = 32 * GiB  # QEMU q35's own default, kept for every other device
Q35_LOWMEM_LIMIT = 0xB0000000  # below this much RAM q35 keeps it all under 4 GiB
Q35_LOWMEM = 0x80000000  # else 2 GiB stay low, the rest goes above 4 GiB
MIN_PHYS_BITS = 40  # QEMU's default for TCG and most models
SLOW_KERNEL_HUGE_FAULTS = (6, 12)
SLOW_KERNEL_PFNMAP_DMA = (6, 15)
SLOW_QEMU_BAR_MMAP = (9, 2)
REPO = Path(__file__).resolve().parents[2]
KERNEL_CMDLINE_DIR = REPO / "kernel-config" / "cmdline"
FORMATS = ("text", "json", "qemu", "kata")
BACKINGS = ("auto", "1G", "2M", "thp", "off")

_SIZE = re.compile(r"^(\d+)\s*([kKmMgGtT]?)(?:i?[bB])?$")
_UNIT = {"": MiB, "k": KiB, "m": MiB, "g": GiB, "t": TiB}


def parse_size(text: str) -> int:
    """'64G' / '64GiB' / '65536M' / '65536' (MiB, as QEMU's -m and Kata's default_memory)."""
    m = _SIZE.match(text.strip())
    if not m or int(m.group(1)) == 0:
        raise UserError(f"--memory {text}: not a size", hint="use e.g. 64G, 65536M or 65536 (MiB)")
    return int(m.group(1)) * _UNIT[m.group(2).lower()]


def qemu_size(n: int) -> str:
    for unit, suffix in ((TiB, "T"), (GiB, "G"), (MiB, "M"), (KiB, "K")):
        if n % unit == 0:
            return f"{n // unit}{suffix}"
    return str(n)


def pow2ceil(n: int) -> int:
    return 1 << (n - 1).bit_length() if n > 0 else 0


def pow2floor(n: int) -> int:
    return 1 << (n.bit_length() - 1) if n > 0 else 0


def align_up(n: int, a: int) -> int:
    return -(-n // a) * a


def version_tuple(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    m = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    if not m:
        return None
    return tuple(int(g) for g in m.groups() if g is not None)


def kernel_params(name: str) -> str:
    """A fragment of kernel-config/cmdline/ as one line (comments dropped)."""
    path = KERNEL_CMDLINE_DIR / f"{name}.conf"
    try:
        text = path.read_text()
    except OSError as exc:
        raise UserError(f"{path}: {exc.strerror}", hint="run guestctl from the guestinit checkout") from None
    words: list[str] = []
    for line in text.splitlines():
        words.extend(line.split("#", 1)[0].split())
    return " ".join(words)


@dataclass
class Passthrough:
    dev: pci.PciDevice
    port: str

    @property
    def pref64(self) -> int:
        return sum(b.size for b in self.dev.bars if b.prefetchable and b.is_64bit)

    @property
    def mem32(self) -> int:
        return sum(b.size for b in self.dev.bars if not (b.prefetchable and b.is_64bit))

    @property
    def pref64_reserve(self) -> int:
        return pow2ceil(self.pref64)

    @property
    def mem_reserve(self) -> int:
        return max(MiB, pow2ceil(self.mem32)) if self.mem32 else 0

    def bar_entries(self) -> list[dict[str, object]]:
        rows = []
        for b in self.dev.bars:
            page = b.largest_page
            rows.append(
                {
                    "index": b.index,
                    "size": b.size,
                    "size_human": pci.human_size(b.size),
                    "host_address": f"0x{b.start:x}",
                    "page": pci.PAGE_NAMES[page],
                    "entries_4k": b.entries(pci.PAGE_4K),
                    "entries": b.entries(page),
                }
            )
        return rows

    def as_dict(self) -> dict[str, object]:
        return {
            "address": self.dev.address,
            "role": self.dev.role,
            "ids": self.dev.ids,
            "driver": self.dev.driver,
            "numa_node": self.dev.numa_node,
            "iommu_group": self.dev.iommu_group,
            "port": self.port,
            "pref64": self.pref64,
            "pref64_reserve": self.pref64_reserve,
            "mem32": self.mem32,
            "mem_reserve": self.mem_reserve,
            "bars": self.bar_entries(),
        }


@dataclass
class Backing:
    kind: str  # hugetlb | thp | none
    page: int  # the page size RAM mappings get
    pool_free: int | None = None

    @property
    def name(self) -> str:
        if self.kind == "hugetlb":
            return f"hugetlbfs {pci.PAGE_NAMES[self.page]} pages"
        if self.kind == "thp":
            return "transparent hugepages (2M)"
        return "4K pages"


@dataclass
class Plan:
    sysfs_root: str
    devices: list[Passthrough]
    memory: int
    backing: Backing
    cpu: str
    host_kernel: str | None
    qemu_version: str | None
    host_phys_bits: int | None
    warnings: list[str] = field(default_factory=list)

    # ----------------------------------------------------------------- the numbers

    @property
    def pref64_total(self) -> int:
        return sum(d.pref64 for d in self.devices)

    @property
    def windows_total(self) -> int:
        return sum(d.pref64_reserve for d in self.devices)

    @property
    def hole64(self) -> int:
        return align_up(self.windows_total + DEFAULT_HOLE64, GiB)

    @property
    def ovmf_mmio64_mb(self) -> int:
        return self.hole64 // MiB

    @property
    def ram_top(self) -> int:
        low = self.memory if self.memory < Q35_LOWMEM_LIMIT else Q35_LOWMEM
        return 4 * GiB + (self.memory - low)

    @property
    def phys_bits_needed(self) -> int:
        """Address bits the guest needs: QEMU's hole64 sits right above RAM; OVMF aligns its
        aperture to the largest power of two not above its size."""
        start = align_up(self.ram_top, GiB)
        qemu_end = start + self.hole64
        ovmf_end = align_up(start, pow2floor(self.hole64)) + self.hole64
        return max(MIN_PHYS_BITS, (max(qemu_end, ovmf_end) - 1).bit_length())

    def ram_entries(self) -> dict[str, int]:
        return {
            "4K": self.memory // pci.PAGE_4K,
            pci.PAGE_NAMES[self.backing.page]: self.memory // self.backing.page,
        }

    def bar_entries_total(self) -> tuple[int, int]:
        rows = [r for d in self.devices for r in d.bar_entries()]
        return sum(int(str(r["entries_4k"])) for r in rows), sum(int(str(r["entries"])) for r in rows)

    # ----------------------------------------------------------------- outputs

    def guest_kernel_params(self) -> str:
        return kernel_params("large-bar")

    def qemu_args(self) -> list[str]:
        args = ["-machine", "q35" + (",memory-backend=mem0" if self.backing.kind != "none" else "")]
        if self.cpu == "host":
            args += ["-cpu", "host,host-phys-bits=on"]
        else:
            args += ["-cpu", f"{self.cpu},phys-bits={self.phys_bits_needed}"]
        size = qemu_size(self.memory)
        args += ["-m", size]
        if self.backing.kind == "hugetlb":
            args += [
                "-object",
                f"memory-backend-memfd,id=mem0,size={size},hugetlb=on,"
                f"hugetlbsize={qemu_size(self.backing.page)},share=on,prealloc=on",
            ]
        elif self.backing.kind == "thp":
            args += ["-object", f"memory-backend-ram,id=mem0,size={size}"]
        args += ["-global", f"q35-pcihost.pci-hole64-size={qemu_size(self.hole64)}"]
        args += ["-fw_cfg", f"name=opt/ovmf/X-PciMmio64Mb,string={self.ovmf_mmio64_mb}"]
        for i, d in enumerate(self.devices):
            port = f"pcie-root-port,id={d.port},bus=pcie.0,chassis={i + 1},slot={i + 1}"
            if d.pref64_reserve:
                port += f",pref64-reserve={qemu_size(d.pref64_reserve)}"
            if d.mem_reserve:
                port += f",mem-reserve={qemu_size(d.mem_reserve)}"
            args += ["-device", port]
        for d in self.devices:
            args += ["-device", f"vfio-pci,host={d.dev.address},bus={d.port}"]
        return args

    def kata_settings(self) -> dict[str, object]:
        """Keys of [hypervisor.qemu] in configuration-qemu-nvidia-gpu.toml."""
        return {
            "pcie_root_port": len(self.devices),
            "cold_plug_vfio": "root-port",
            "hot_plug_vfio": "no-port",
            "enable_hugepages": self.backing.kind == "hugetlb",
            "default_memory": self.memory // MiB,
            "kernel_params": kernel_params("kata-nvidia-gpu"),
        }

    def as_dict(self) -> dict[str, object]:
        bars_4k, bars_chosen = self.bar_entries_total()
        return {
            "sysfs_root": self.sysfs_root,
            "devices": [d.as_dict() for d in self.devices],
            "pref64_total": self.pref64_total,
            "pref64_total_human": pci.human_size(self.pref64_total),
            "pci_hole64_size": self.hole64,
            "pci_hole64_size_human": pci.human_size(self.hole64),
            "ovmf_x_pcimmio64mb": self.ovmf_mmio64_mb,
            "phys_bits_needed": self.phys_bits_needed,
            "host_phys_bits": self.host_phys_bits,
            "memory": self.memory,
            "backing": {"kind": self.backing.kind, "page": pci.PAGE_NAMES[self.backing.page]},
            "page_table_entries": {
                "ram": self.ram_entries(),
                "bars_4k": bars_4k,
                "bars_chosen": bars_chosen,
            },
            "host_kernel": self.host_kernel,
            "qemu_version": self.qemu_version,
            "guest_kernel_params": self.guest_kernel_params(),
            "qemu_args": self.qemu_args(),
            "kata": self.kata_settings(),
            "warnings": self.warnings,
        }

    def render(self, fmt: str) -> str:
        if fmt == "json":
            return json.dumps(self.as_dict(), indent=2) + "\n"
        from jinja2 import Environment, FileSystemLoader, StrictUndefined

        env = Environment(
            loader=FileSystemLoader(os.path.dirname(__file__)),
            undefined=StrictUndefined,
            keep_trailing_newline=True,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        env.filters["human"] = pci.human_size
        env.filters["qsize"] = qemu_size
        env.filters["num"] = lambda n: f"{n:,}"
        env.filters["toml"] = _toml_value
        bars_4k, bars_chosen = self.bar_entries_total()
        template = env.get_template(
            {"text": "plan_text.j2", "qemu": "plan_qemu.j2", "kata": "plan_kata.toml.j2"}[fmt]
        )
        return template.render(
            plan=self,
            args=_arg_lines(self.qemu_args()),
            kata=self.kata_settings(),
            bars_4k=bars_4k,
            bars_chosen=bars_chosen,
            ram=self.ram_entries(),
        )


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    return json.dumps(str(v))


def _arg_lines(args: list[str]) -> list[str]:
    """'-opt value' pairs, shell-quoted, one per line."""
    lines: list[str] = []
    i = 0
    while i < len(args):
        if i + 1 < len(args) and not args[i + 1].startswith("-"):
            lines.append(f"{args[i]} {shlex.quote(args[i + 1])}")
            i += 2
        else:
            lines.append(args[i])
            i += 1
    return lines


# --------------------------------------------------------------------- reading the host


def _root_for(sysfs_root: str) -> Root:
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


def _read_host_kernel(root: Root) -> str | None:
    text = root.read_text("/proc/sys/kernel/osrelease", "").strip()
    if text:
        return text
    return os.uname().release if root.is_real else None


def _read_phys_bits(root: Root) -> int | None:
    m = re.search(r"address sizes\s*:\s*(\d+) bits physical", root.read_text("/proc/cpuinfo", ""))
    return int(m.group(1)) if m else None


def local_qemu_version(binary: str = "qemu-system-x86_64") -> str | None:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"version (\d+\.\d+(?:\.\d+)?)", out.stdout)
    return m.group(1) if m else None


def _choose_backing(root: Root, memory: int, want: str, warnings: list[str]) -> Backing:
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


def _device_warnings(root: Root, chosen: list[pci.PciDevice], warnings: list[str]) -> None:
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


def _version_warnings(plan: Plan) -> None:
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


def plan(
    sysfs_root: str,
    gpus: list[str] | None,
    memory_bytes: int,
    *,
    hugepages_mode: str = "auto",
    cpu: str = "host",
    host_kernel: str | None = None,
    qemu_version: str | None = None,
) -> Plan:
    """The plan for passing ``gpus`` (addresses, or None / ['all'] for every NVIDIA GPU) of the
    host at ``sysfs_root`` to a VM with ``memory_bytes`` of RAM. Raises UserError on bad input."""
    if hugepages_mode not in BACKINGS:
        raise UserError(f"--hugepages {hugepages_mode}: not one of {', '.join(BACKINGS)}")
    root = _root_for(sysfs_root)
    where = root("/sys/bus/pci/devices")
    chosen = select(pci.list_devices(root), gpus, where)
    warnings: list[str] = []
    backing = _choose_backing(root, memory_bytes, hugepages_mode, warnings)
    _device_warnings(root, chosen, warnings)
    if qemu_version is None and root.is_real:
        qemu_version = local_qemu_version()
    result = Plan(
        sysfs_root=root.path,
        devices=[Passthrough(d, f"rp{i}") for i, d in enumerate(chosen)],
        memory=memory_bytes,
        backing=backing,
        cpu=cpu,
        host_kernel=host_kernel or _read_host_kernel(root),
        qemu_version=qemu_version,
        host_phys_bits=_read_phys_bits(root),
        warnings=warnings,
    )
    _version_warnings(result)
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="guestctl plan",
        description="BAR / MMIO / hugepage settings for a GPU VM, from the host's sysfs.",
    )
    parser.add_argument("--sysfs-root", default="/", help="a tree shaped like / (default: /)")
    parser.add_argument("--gpus", default="all", help="BDF,... of the devices to pass through, or all (GPUs)")
    parser.add_argument(
        "--memory", default="8G", help="guest RAM, e.g. 64G (bare numbers are MiB; default 8G)"
    )
    parser.add_argument("--format", choices=FORMATS, default="text")
    parser.add_argument("--hugepages", choices=BACKINGS, default="auto", help="RAM backing (default: auto)")
    parser.add_argument("--cpu", default="host", help="QEMU CPU model (default host; e.g. max under TCG)")
    parser.add_argument("--host-kernel", help="the host kernel's version (default: read from the root)")
    parser.add_argument(
        "--qemu-version", help="QEMU's version (default: ask qemu-system-x86_64 when planning /)"
    )
    args = parser.parse_args(argv)
    try:
        gpus = None if args.gpus == "all" else [g for g in args.gpus.split(",") if g.strip()]
        result = plan(
            args.sysfs_root,
            gpus,
            parse_size(args.memory),
            hugepages_mode=args.hugepages,
            cpu=args.cpu,
            host_kernel=args.host_kernel,
            qemu_version=args.qemu_version,
        )
        sys.stdout.write(result.render(args.format))
    except UserError as exc:
        print(f"guestctl plan: {exc.line()}", file=sys.stderr)
        return exc.exit_code
    return 0
