"""PCI functions and their memory BARs, read from sysfs through the injectable root.

Read-only and stdlib-only: the same code reads a guest's /sys at boot, a captured tree
(``tests/fixtures/``), a host's /sys for the planner, and fake trees in tests. Captured trees
store symlinks (``driver``, ``iommu_group``, ``/sys/bus/pci/devices/<bdf>``) as small files
holding the link text; both forms are read.

For every memory BAR (resources 0-5) we report its size, flags, address, the largest page size
its address and size allow (4 KiB / 2 MiB / 1 GiB) and how many page-table entries a mapping
needs with pages up to each size: a 256 GiB BAR at a 1 GiB-aligned address is 256 entries with
1 GiB pages and 67,108,864 with 4 KiB pages.
"""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass, field

from guestinit.init.root import Root

DEVICES_DIR = "/sys/bus/pci/devices"

PAGE_4K = 4 << 10
PAGE_2M = 2 << 20
PAGE_1G = 1 << 30
PAGE_SIZES = (PAGE_4K, PAGE_2M, PAGE_1G)
PAGE_NAMES = {PAGE_4K: "4K", PAGE_2M: "2M", PAGE_1G: "1G"}

# include/linux/ioport.h
IORESOURCE_IO = 0x00000100
IORESOURCE_MEM = 0x00000200
IORESOURCE_PREFETCH = 0x00002000
IORESOURCE_MEM_64 = 0x00100000
IORESOURCE_UNSET = 0x20000000
IORESOURCE_DISABLED = 0x10000000

VENDOR_NVIDIA = 0x10DE
VENDOR_MELLANOX = 0x15B3
CLASS_BRIDGE_PCI = 0x0604  # class >> 8
CLASS_NVSWITCH = 0x0680  # "other bridge" (class >> 8), NVIDIA vendor
CLASS_DISPLAY = 0x03  # class >> 16: VGA 0x0300 and 3D controller 0x0302
SW_MNG_MARK = b"SW_MNG"
VPD_READ_LIMIT = 32 << 10
BAR_INDEXES = range(6)  # resource 6 is the expansion ROM, 7+ are bridge windows / SR-IOV

_BDF = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")


def is_bdf(text: str) -> bool:
    return bool(_BDF.match(text))


def human_size(n: int) -> str:
    """Binary units: 16 MiB, 256 GiB, 256.05 GiB (two decimals when the unit does not divide)."""
    for shift, unit in ((40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")):
        if n >= 1 << shift:
            if n % (1 << shift) == 0:
                return f"{n >> shift} {unit}"
            return f"{n / (1 << shift):.2f} {unit}"
    return f"{n} B"


def largest_page(start: int, size: int) -> int:
    """The largest of 4 KiB / 2 MiB / 1 GiB that both the address and the size are multiples of
    (4 KiB for anything smaller or misaligned: a mapping cannot use less)."""
    for page in reversed(PAGE_SIZES):
        if size >= page and start % page == 0 and size % page == 0:
            return page
    return PAGE_4K


def entries(start: int, size: int, max_page: int) -> int:
    """Page-table entries needed to map [start, start+size) with pages no larger than
    ``max_page``, each page naturally aligned (a head and tail of smaller pages where the
    range is not aligned to the big one)."""
    if size <= 0:
        return 0
    end = start + size
    smaller = [p for p in PAGE_SIZES if p <= max_page]
    page = smaller[-1]
    if page == PAGE_4K:
        return -(-end // PAGE_4K) - start // PAGE_4K
    lo = -(-start // page) * page
    hi = end // page * page
    if lo >= hi:
        return entries(start, size, smaller[-2])
    return (hi - lo) // page + entries(start, lo - start, smaller[-2]) + entries(hi, end - hi, smaller[-2])


@dataclass(frozen=True)
class Bar:
    """One memory BAR as the kernel's ``resource`` file shows it."""

    index: int
    start: int
    size: int
    flags: int
    resizable: tuple[int, ...] = ()  # sizes offered through resourceN_resize, bytes

    @property
    def is_64bit(self) -> bool:
        return bool(self.flags & IORESOURCE_MEM_64)

    @property
    def prefetchable(self) -> bool:
        return bool(self.flags & IORESOURCE_PREFETCH)

    @property
    def assigned(self) -> bool:
        return self.start != 0 and not self.flags & (IORESOURCE_UNSET | IORESOURCE_DISABLED)

    @property
    def largest_page(self) -> int:
        return largest_page(self.start, self.size)

    def entries(self, max_page: int) -> int:
        return entries(self.start, self.size, max_page)

    @property
    def size_allows(self) -> int:
        """The largest page the size alone would allow (what a well-placed BAR gets)."""
        return largest_page(0, self.size)

    def as_dict(self) -> dict[str, object]:
        d: dict[str, object] = {
            "index": self.index,
            "size": self.size,
            "size_human": human_size(self.size),
            "address": f"0x{self.start:x}",
            "flags": f"0x{self.flags:x}",
            "is_64bit": self.is_64bit,
            "prefetchable": self.prefetchable,
            "assigned": self.assigned,
            "largest_page": PAGE_NAMES[self.largest_page],
            "entries": {PAGE_NAMES[p]: self.entries(p) for p in PAGE_SIZES},
        }
        if self.resizable:
            d["resizable"] = [human_size(s) for s in self.resizable]
        return d


def parse_resource(text: str) -> list[Bar]:
    """Memory BARs (resources 0-5 with IORESOURCE_MEM and a size) from a ``resource`` file."""
    bars: list[Bar] = []
    for index, line in enumerate(text.splitlines()):
        if index not in BAR_INDEXES:
            break
        parts = line.split()
        if len(parts) != 3:
            continue
        try:
            start, end, flags = (int(p, 16) for p in parts)
        except ValueError:
            continue
        if not flags & IORESOURCE_MEM or end <= start:
            continue
        bars.append(Bar(index, start, end - start + 1, flags))
    return bars


def parse_rebar_mask(text: str) -> tuple[int, ...]:
    """resourceN_resize reads as a bitmask: bit k set means 2**(k+20) bytes is supported."""
    try:
        mask = int(text.strip(), 16)
    except ValueError:
        return ()
    return tuple(1 << (k + 20) for k in range(mask.bit_length()) if mask >> k & 1)


@dataclass(frozen=True)
class Link:
    current_speed: str | None = None
    current_width: int | None = None
    max_speed: str | None = None
    max_width: int | None = None

    def __str__(self) -> str:
        if self.current_speed is None and self.current_width is None:
            return "-"
        cur = f"{self.current_speed} x{self.current_width}"
        if (self.max_speed, self.max_width) != (self.current_speed, self.current_width):
            cur += f" (max {self.max_speed} x{self.max_width})"
        return cur


@dataclass(frozen=True)
class PciDevice:
    address: str
    vendor: int
    device: int
    class_code: int
    path: str  # the device's guest path under /sys/devices
    subsystem_vendor: int | None = None
    subsystem_device: int | None = None
    revision: int | None = None
    driver: str | None = None
    numa_node: int | None = None
    iommu_group: str | None = None
    link: Link = field(default_factory=Link)
    bars: tuple[Bar, ...] = ()
    sw_mng: bool = False
    vpd_error: str = ""

    @property
    def upstream(self) -> list[str]:
        """Bridges between this function and its root complex, nearest last."""
        parts = self.path.split("/")
        return [p for p in parts[:-1] if is_bdf(p)]

    @property
    def is_gpu(self) -> bool:
        return self.vendor == VENDOR_NVIDIA and self.class_code >> 16 == CLASS_DISPLAY

    @property
    def is_nvswitch(self) -> bool:
        return self.vendor == VENDOR_NVIDIA and self.class_code >> 8 == CLASS_NVSWITCH

    @property
    def is_bridge(self) -> bool:
        return self.class_code >> 8 == CLASS_BRIDGE_PCI

    @property
    def role(self) -> str:
        if self.is_gpu:
            return "gpu"
        if self.is_nvswitch:
            return "nvswitch"
        if self.sw_mng:
            return "sw_mng"
        if self.is_bridge:
            return "bridge"
        return "other"

    @property
    def ids(self) -> str:
        return f"{self.vendor:04x}:{self.device:04x}"

    def bars_total(self, *, prefetchable: bool | None = None, is_64bit: bool | None = None) -> int:
        return sum(
            b.size
            for b in self.bars
            if (prefetchable is None or b.prefetchable == prefetchable)
            and (is_64bit is None or b.is_64bit == is_64bit)
        )

    def as_dict(self) -> dict[str, object]:
        d: dict[str, object] = {
            "address": self.address,
            "role": self.role,
            "vendor": f"0x{self.vendor:04x}",
            "device": f"0x{self.device:04x}",
            "class": f"0x{self.class_code:06x}",
            "subsystem": (
                f"{self.subsystem_vendor:04x}:{self.subsystem_device:04x}"
                if self.subsystem_vendor is not None and self.subsystem_device is not None
                else None
            ),
            "revision": f"0x{self.revision:02x}" if self.revision is not None else None,
            "driver": self.driver,
            "numa_node": self.numa_node,
            "iommu_group": self.iommu_group,
            "link": {
                "current_speed": self.link.current_speed,
                "current_width": self.link.current_width,
                "max_speed": self.link.max_speed,
                "max_width": self.link.max_width,
            },
            "upstream": self.upstream,
            "bars": [b.as_dict() for b in self.bars],
        }
        if self.vendor == VENDOR_MELLANOX:
            d["sw_mng"] = self.sw_mng
            if self.vpd_error:
                d["vpd_error"] = self.vpd_error
        return d


def _link_target(root: Root, guest_path: str) -> str | None:
    """Where a sysfs link points, as a normalised guest path; captured trees hold the link
    text in a plain file."""
    host = root(guest_path)
    try:
        target = os.readlink(host)
    except OSError:
        try:
            with open(host, encoding="utf-8") as f:
                target = f.read(4096).strip()
        except (OSError, UnicodeDecodeError):
            return None
        if not target.startswith(("../", "/")):
            return None
    return posixpath.normpath(posixpath.join(posixpath.dirname(guest_path), target))


def _text(root: Root, path: str) -> str | None:
    try:
        return root.read_text(path).strip()
    except OSError:
        return None


def _int(root: Root, path: str, base: int = 0) -> int | None:
    text = _text(root, path)
    if text is None:
        return None
    try:
        return int(text, base)
    except ValueError:
        return None


def device_path(root: Root, address: str) -> str:
    """The guest path of a function's directory (under /sys/devices when the link resolves)."""
    entry = f"{DEVICES_DIR}/{address}"
    target = _link_target(root, entry)
    if target is not None and os.path.isdir(root(target)):
        return target
    return entry


def _read_vpd(root: Root, path: str) -> tuple[bool, str]:
    try:
        with open(root(f"{path}/vpd"), "rb") as f:
            data = f.read(VPD_READ_LIMIT)
    except FileNotFoundError:
        return False, ""
    except OSError as exc:
        return False, f"vpd unreadable: {exc.strerror or exc}"
    return SW_MNG_MARK in data, ""


def read_device(root: Root, address: str) -> PciDevice | None:
    """One function, or None when its identity files are missing."""
    path = device_path(root, address)
    vendor = _int(root, f"{path}/vendor", 16)
    device = _int(root, f"{path}/device", 16)
    class_code = _int(root, f"{path}/class", 16)
    if vendor is None or device is None or class_code is None:
        return None
    bars = parse_resource(_text(root, f"{path}/resource") or "")
    resized: list[Bar] = []
    for bar in bars:
        mask = _text(root, f"{path}/resource{bar.index}_resize")
        resized.append(
            Bar(bar.index, bar.start, bar.size, bar.flags, parse_rebar_mask(mask)) if mask else bar
        )
    driver = _link_target(root, f"{path}/driver")
    group = _link_target(root, f"{path}/iommu_group")
    sw_mng, vpd_error = (False, "")
    if vendor == VENDOR_MELLANOX:
        sw_mng, vpd_error = _read_vpd(root, path)
    return PciDevice(
        address=address,
        vendor=vendor,
        device=device,
        class_code=class_code,
        path=path,
        subsystem_vendor=_int(root, f"{path}/subsystem_vendor", 16),
        subsystem_device=_int(root, f"{path}/subsystem_device", 16),
        revision=_int(root, f"{path}/revision", 16),
        driver=posixpath.basename(driver) if driver else None,
        numa_node=_int(root, f"{path}/numa_node", 10),
        iommu_group=posixpath.basename(group) if group else None,
        link=Link(
            _text(root, f"{path}/current_link_speed"),
            _int(root, f"{path}/current_link_width", 10),
            _text(root, f"{path}/max_link_speed"),
            _int(root, f"{path}/max_link_width", 10),
        ),
        bars=tuple(resized),
        sw_mng=sw_mng,
        vpd_error=vpd_error,
    )


def list_devices(root: Root) -> list[PciDevice]:
    """Every readable PCI function under /sys/bus/pci/devices, by address."""
    devices = []
    for address in root.listdir(DEVICES_DIR):
        if not is_bdf(address):
            continue
        dev = read_device(root, address)
        if dev is not None:
            devices.append(dev)
    return devices


def bar_warnings(devices: list[PciDevice]) -> list[str]:
    """BARs whose placement rules out the 2 MiB / 1 GiB mappings their size would allow."""
    out: list[str] = []
    for dev in devices:
        for bar in dev.bars:
            if not bar.assigned or bar.largest_page >= bar.size_allows:
                continue
            want = bar.size_allows
            out.append(
                f"{dev.address} BAR{bar.index} {human_size(bar.size)} at 0x{bar.start:x} is not "
                f"{human_size(want)} aligned: largest page {human_size(bar.largest_page)}, "
                f"{bar.entries(PAGE_1G):,} entries instead of {bar.size // want:,}"
            )
    return out


class RebarError(ValueError):
    pass


def resize_bar(root: Root, dev: PciDevice, index: int, size: int | None = None) -> int:
    """Resize one BAR through ``resourceN_resize`` (largest offered size when ``size`` is None).

    The kernel refuses while a driver is bound, so this runs before the driver loads. Returns
    the new size in bytes. Raises RebarError with a one-line reason."""
    bar = next((b for b in dev.bars if b.index == index), None)
    if bar is None or not bar.resizable:
        raise RebarError(f"{dev.address} BAR{index} is not resizable (no resource{index}_resize)")
    if dev.driver:
        raise RebarError(f"{dev.address} BAR{index}: driver {dev.driver} is bound; resize before it loads")
    target = max(bar.resizable) if size is None else size
    if target not in bar.resizable:
        offered = ", ".join(human_size(s) for s in bar.resizable)
        raise RebarError(f"{dev.address} BAR{index}: {human_size(target)} not offered ({offered})")
    if target == bar.size:
        return target
    try:
        root.write_text(f"{dev.path}/resource{index}_resize", f"{target.bit_length() - 21}\n")
    except OSError as exc:
        raise RebarError(f"{dev.address} BAR{index}: resize to {human_size(target)} failed: {exc}") from None
    return target


def apply_rebar(root: Root, devices: list[PciDevice], policy: str) -> tuple[list[str], list[str]]:
    """With policy ``max``, grow every resizable BAR of every GPU to the largest size it offers.

    Returns (what was done, problems); nothing here raises. The policy is guestinit.rebar
    (gpu_params.REBAR_POLICIES: off, max)."""
    done: list[str] = []
    problems: list[str] = []
    if policy != "max":
        return done, problems
    for dev in devices:
        if not dev.is_gpu:
            continue
        for bar in dev.bars:
            if not bar.resizable or bar.size >= max(bar.resizable):
                continue
            try:
                new = resize_bar(root, dev, bar.index)
            except RebarError as exc:
                problems.append(str(exc))
                continue
            done.append(f"{dev.address} BAR{bar.index} {human_size(bar.size)} -> {human_size(new)}")
    return done, problems
