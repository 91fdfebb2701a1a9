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

import argparse
import sys

from guestinit.host.errors import UserError
from guestinit.host.plan.host import (
    choose_backing,
    device_warnings,
    local_qemu_version,
    read_host_kernel,
    read_phys_bits,
    root_for,
    select,
    version_warnings,
)
from guestinit.host.plan.layout import Passthrough, Plan
from guestinit.host.plan.units import parse_size
from guestinit.init.gpu import pci

FORMATS = ("text", "json", "qemu", "kata")
BACKINGS = ("auto", "1G", "2M", "thp", "off")


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
    root = root_for(sysfs_root)
    where = root("/sys/bus/pci/devices")
    chosen = select(pci.list_devices(root), gpus, where)
    warnings: list[str] = []
    backing = choose_backing(root, memory_bytes, hugepages_mode, warnings)
    device_warnings(root, chosen, warnings)
    if qemu_version is None and root.is_real:
        qemu_version = local_qemu_version()
    result = Plan(
        sysfs_root=root.path,
        devices=[Passthrough(d, f"rp{i}") for i, d in enumerate(chosen)],
        memory=memory_bytes,
        backing=backing,
        cpu=cpu,
        host_kernel=host_kernel or read_host_kernel(root),
        qemu_version=qemu_version,
        host_phys_bits=read_phys_bits(root),
        warnings=warnings,
    )
    version_warnings(result)
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
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="text",
        help="text, json, QEMU arguments or Kata settings (default text)",
    )
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
