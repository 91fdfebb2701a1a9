"""The plan itself: what each passed-through device needs (root port, reserves, page-table
entries), the 64-bit MMIO window that holds them all, RAM backing, and the plan rendered as
text, JSON, QEMU arguments or Kata settings (templates/)."""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from guestinit.host.errors import UserError
from guestinit.host.plan.units import GiB, MiB, align_up, pow2ceil, pow2floor, qemu_size
from guestinit.init.gpu import pci

DEFAULT_HOLE64 = 32 * GiB  # QEMU q35's own default, kept for every other device
Q35_LOWMEM_LIMIT = 0xB0000000  # below this much RAM q35 keeps it all under 4 GiB
Q35_LOWMEM = 0x80000000  # else 2 GiB stay low, the rest goes above 4 GiB
MIN_PHYS_BITS = 40  # QEMU's default for TCG and most models
REPO = Path(__file__).resolve().parents[3]
KERNEL_CMDLINE_DIR = REPO / "kernel-config" / "cmdline"


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
            loader=FileSystemLoader(os.path.join(os.path.dirname(__file__), "templates")),
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
