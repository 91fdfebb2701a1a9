"""The GPU phase's ``guestinit.*`` keys: resizable BAR, hugepages and THP, the NVIDIA modules'
parameters, and the GPU daemons (nvidia-persistenced, nvidia-smi settings, fabricmanager).

They are part of the one key table (params.PARAMS includes ``PARAMS`` below), so
``guestinit params``, the parser and docs/kernel-cmdline.md know them. They live here, apart
from the code that acts on them (pci, hugepages, nvidia, gpu_services), so that the table
costs a CPU-only boot nothing but this file: stdlib ``re`` and plain classes.
"""

from __future__ import annotations

from guestinit.init.paramtypes import (
    Param,
    ParamError,
    absolute_path,
    boolean,
    choice,
    digits,
    seconds_between,
)
from guestinit.init.problems import excerpt

TYPE_CHECKING = False  # collections.abc is not imported on the boot path; mypy reads this as usual
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from guestinit.init.root import Root

# ------------------------------------------------------------------ resizable BAR (pci)

REBAR_POLICIES = ("off", "max")

# ------------------------------------------------------------------ hugepages and THP (hugepages)

THP_MODES = ("keep", "always", "madvise", "never")
_SIZE_PATTERN = r"^([0-9]{1,10})\s*([kKmMgG])(?:i?[bB])?$"
_UNITS = {"k": 1, "m": 1 << 10, "g": 1 << 20}
# The hugepage sizes x86-64 offers: 2 MiB (PMD) and 1 GiB (PUD, with the pdpe1gb CPU flag).
# 4 KiB is the base page, not a hugepage. At boot the kernel's own list is what counts
# (offered_sizes: /sys/kernel/mm/hugepages).
X86_64_SIZES_KB = (2048, 1 << 20)
MAX_PAGES = (1 << 32) - 1  # per pool; the kernel gives what it can and the shortfall is reported
MAX_NODE = 1023  # x86-64 MAX_NUMNODES (NODES_SHIFT 10)
HUGEPAGES_DIR = "/sys/kernel/mm/hugepages"


def size_name(kb: int) -> str:
    if kb % (1 << 20) == 0:
        return f"{kb >> 20}G"
    if kb % (1 << 10) == 0:
        return f"{kb >> 10}M"
    return f"{kb}K"


class Request:
    """One pool to reserve: ``count`` pages of ``size_kb`` (on NUMA ``node``, or system-wide)."""

    __slots__ = ("count", "node", "size_kb")

    def __init__(self, size_kb: int, count: int, node: int | None = None) -> None:
        self.size_kb = size_kb
        self.count = count
        self.node = node

    def _key(self) -> tuple[int, int, int | None]:
        return (self.size_kb, self.count, self.node)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Request) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"Request({self.size_kb}, {self.count}, {self.node})"

    def __str__(self) -> str:
        at = f"@{self.node}" if self.node is not None else ""
        return f"{size_name(self.size_kb)}:{self.count}{at}"


def parse_size_kb(text: str) -> int:
    import re  # only when this key is given: re is not on the boot path

    m = re.match(_SIZE_PATTERN, text.strip())
    if not m:
        raise ParamError(f"{excerpt(text)} is not a page size (use 2M or 1G)")
    size_kb = int(m.group(1)) * _UNITS[m.group(2).lower()]
    if size_kb not in X86_64_SIZES_KB:
        base = " (4K is the base page size)" if size_kb == 4 else ""
        raise ParamError(f"{excerpt(text)} is not a hugepage size of x86-64{base}: use 2M or 1G")
    return size_kb


def parse_requests(text: str) -> tuple[Request, ...]:
    """'2M:512,1G:4@0' -> requests; raises ParamError naming the bad item."""
    out: list[Request] = []
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        size_text, sep, rest = item.partition(":")
        if not sep:
            raise ParamError(f"{excerpt(item)} is not SIZE:COUNT[@NODE] (e.g. 2M:512 or 1G:4@0)")
        count_text, at, node_text = rest.partition("@")
        size_kb = parse_size_kb(size_text)
        count = digits(count_text, f"{excerpt(item, 16)}: count", 10)
        if count > MAX_PAGES:
            raise ParamError(f"{excerpt(item, 16)}: count {count} is above {MAX_PAGES}")
        node = digits(node_text, f"{excerpt(item, 16)}: NUMA node", 4) if at else None
        if node is not None and node > MAX_NODE:
            raise ParamError(f"{excerpt(item, 16)}: NUMA node {node} is above {MAX_NODE}")
        out.append(Request(size_kb, count, node))
    keys = [(r.size_kb, r.node) for r in out]
    for r in out:
        if keys.count((r.size_kb, r.node)) > 1:
            raise ParamError(f"{r} is given twice")
        if r.node is not None and (r.size_kb, None) in keys:
            raise ParamError(f"{size_name(r.size_kb)} is given both system-wide and per node: use one form")
    return tuple(out)


# ------------------------------------------------------------------ NVIDIA modules (nvidia)


def offered_sizes(root: Root) -> tuple[int, ...]:
    """The hugepage sizes (KiB) this kernel offers: /sys/kernel/mm/hugepages/hugepages-NkB
    (empty when the directory is not there, as in an image tree)."""
    out = []
    for entry in root.listdir(HUGEPAGES_DIR):
        number = entry[len("hugepages-") : -len("kB")]
        if entry.startswith("hugepages-") and entry.endswith("kB") and number.isascii() and number.isdigit():
            out.append(int(number))
    return tuple(sorted(out))


def unoffered(requests: tuple[Request, ...], offered: tuple[int, ...]) -> tuple[Request, ...]:
    """The requests for sizes the kernel does not offer (none when ``offered`` is unknown)."""
    return tuple(r for r in requests if offered and r.size_kb not in offered)


def _octal_mode(text: str) -> str:
    import re  # only when this key is given: re is not on the boot path

    if not re.fullmatch(r"0?[0-7]{3,4}", text):
        raise ParamError(f"{excerpt(text)} is not an octal file mode (e.g. 0660)")
    return "0" + format(int(text, 8), "o").rjust(3, "0")


def _id(text: str) -> str:
    value = digits(text, "uid/gid", 10)
    if value > 0xFFFFFFFE:
        raise ParamError(f"{value} is not a numeric uid/gid (at most 4294967294)")
    return str(value)


def _word(text: str) -> str:
    if not text or len(text) > 1024 or any(c.isspace() or c == '"' or not c.isprintable() for c in text):
        raise ParamError(f"{excerpt(text)} must be one word without quotes (at most 1024 characters)")
    return text


def _extra(text: str) -> tuple[tuple[str, str, str], ...]:
    import re  # only when this key is given: re is not on the boot path

    out = []
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        m = re.fullmatch(r"([A-Za-z0-9_-]{1,56})\.([A-Za-z0-9_]{1,64})=([!-~]{0,1024})", item)
        if not m:
            raise ParamError(f"{excerpt(item)} is not MODULE.PARAM=VALUE (e.g. nvidia.NVreg_RmMsg=...)")
        out.append((m.group(1).replace("-", "_"), m.group(2), m.group(3)))
    return tuple(out)


class NvParam:
    """A ``guestinit.nvidia.<key>``: the module parameter it sets (if any), type, default, help."""

    __slots__ = ("default", "help", "key", "kind", "module", "param", "parse")

    def __init__(
        self,
        key: str,
        module: str,
        param: str,
        kind: str,
        parse: Callable[[str], object],
        default: object,
        help: str,
    ) -> None:
        self.key = key  # guestinit.nvidia.<key>
        self.module = module  # "" when the key is not a module parameter
        self.param = param  # the module's parameter name ("" when not one)
        self.kind = kind
        self.parse = parse
        self.default = default  # None: not passed unless asked
        self.help = help


# fmt: off
NV_PARAMS: tuple[NvParam, ...] = (
    NvParam("nvlink", "nvidia", "NVreg_NvLinkDisable", "auto|on|off", choice("auto", "on", "off"), "auto",
            "NVLink: auto disables it when exactly one GPU is present (NVreg_NvLinkDisable=1), "
            "off always disables it, on never does."),
    NvParam("device_file_mode", "nvidia", "NVreg_DeviceFileMode", "octal", _octal_mode, "0660",
            "Mode of /dev/nvidia* (the driver's and the nodes guestinit makes)."),
    NvParam("device_file_uid", "nvidia", "NVreg_DeviceFileUID", "uid", _id, None, "Owner of /dev/nvidia*."),
    NvParam("device_file_gid", "nvidia", "NVreg_DeviceFileGID", "gid", _id, None, "Group of /dev/nvidia*."),
    NvParam("resizable_bar", "nvidia", "NVreg_EnableResizableBar", "bool", boolean, None,
            "Let the driver resize BAR1 itself (NVreg_EnableResizableBar)."),
    NvParam("gsp", "nvidia", "NVreg_EnableGpuFirmware", "bool", boolean, None,
            "Run the GPU System Processor firmware (NVreg_EnableGpuFirmware)."),
    NvParam("unsupported_gpus", "nvidia", "NVreg_OpenRmEnableUnsupportedGpus", "bool", boolean, None,
            "Let the open modules drive GPUs they do not list as supported."),
    NvParam("registry_dwords", "nvidia", "NVreg_RegistryDwords", "word", _word, None,
            "Driver registry keys, passed as they are (NVreg_RegistryDwords)."),
    NvParam("uvm_disable_hmm", "nvidia_uvm", "uvm_disable_hmm", "bool", boolean, None,
            "Turn off heterogeneous memory management in nvidia-uvm."),
    NvParam("modeset", "", "", "bool", boolean, False, "Also load nvidia-modeset."),
    NvParam("drm", "nvidia_drm", "modeset", "bool", boolean, False,
            "Also load nvidia-modeset and nvidia-drm (with modeset=1)."),
    NvParam("extra", "", "", "MODULE.PARAM=VALUE,...", _extra, (),
            "Any other module parameters, appended after the ones above."),
    NvParam("node_timeout", "", "", "seconds", seconds_between(0, 3600, zero_ok=True), 10.0,
            "Bound on waiting for /dev/nvidia* nodes after the modules load."),
)
# fmt: on
BY_KEY = {p.key: p for p in NV_PARAMS}


def nvidia_value(values: Mapping[str, object], key: str) -> object:
    """A guestinit.nvidia.* value from parsed config values ('' and None mean: not given)."""
    got = values.get(f"nvidia.{key}")
    if got is None or got == "":
        return BY_KEY[key].default
    return got


# ------------------------------------------------------------------ GPU daemons (gpu_services)


def _clocks(text: str) -> str:
    """nvidia-smi -lgc / -lmc: one clock or MIN,MAX in MHz."""
    parts = text.split(",")
    if not 1 <= len(parts) <= 2 or not all(
        p.isascii() and p.isdigit() and len(p) <= 5 and 0 < int(p) < 100000 for p in parts
    ):
        raise ParamError(f"{excerpt(text)} is not MHz or MIN,MAX in MHz (1..99999, e.g. 1980 or 1500,1980)")
    if len(parts) == 2 and int(parts[0]) > int(parts[1]):
        raise ParamError(f"{excerpt(text)}: the minimum is above the maximum")
    return ",".join(str(int(p)) for p in parts)


def _watts(text: str) -> str:
    import re  # only when this key is given: re is not on the boot path

    if not re.fullmatch(r"[0-9]{1,5}(\.[0-9]{1,2})?", text) or float(text) <= 0:
        raise ParamError(f"{excerpt(text)} is not a power limit in watts (e.g. 700)")
    return text


# fmt: off
DAEMON_PARAMS: tuple[Param, ...] = (
    Param("persistenced.uvm", "bool", boolean, True,
          "Start nvidia-persistenced with --uvm-persistence-mode (NVRC's default; the driver supports "
          "it for single-GPU confidential computing and warns otherwise)."),
    Param("smi.lgc", "MHz[,MHz]", _clocks, "",
          "Lock GPU clocks after the driver is up: nvidia-smi -lgc VALUE (every GPU)."),
    Param("smi.lmc", "MHz[,MHz]", _clocks, "",
          "Lock memory clocks: nvidia-smi -lmc VALUE (every GPU)."),
    Param("smi.pl", "watts", _watts, "", "Power limit: nvidia-smi -pl VALUE (every GPU)."),
    Param("smi.srs", "0|1", choice("0", "1"), "",
          "Confidential computing ready state, set last, after every other GPU service: "
          "nvidia-smi conf-compute -srs VALUE."),
    Param("fabricmanager.config", "path", absolute_path, "/etc/guestinit/gpu/fabricmanager.cfg",
          "fabricmanager's configuration in the NVLink GPU modes (gpu-nvl4, gpu-nvl5): FABRIC_MODE=0, "
          "in the foreground; its FM_CMD_BIND_INTERFACE:FM_CMD_PORT_NUMBER is the readiness address."),
    Param("gpu.timeout", "seconds", seconds_between(0, 3600), 30.0,
          "Readiness bound of each GPU service (nvidia-persistenced, nvidia-smi settings, CDI, "
          "fabricmanager) for no GPU; guestinit.gpu.timeout_per_gpu is added for every GPU."),
    Param("gpu.timeout_per_gpu", "seconds", seconds_between(0, 600, zero_ok=True), 10.0,
          "Added to guestinit.gpu.timeout for every GPU (persistenced attaches GPUs one by one; "
          "3-4 s each with confidential computing)."),
)
# fmt: on

# fmt: off
PARAMS: tuple[Param, ...] = (
    Param("rebar", "|".join(REBAR_POLICIES), choice(*REBAR_POLICIES), "off",
          "Resizable BAR: max grows each GPU BAR that offers resourceN_resize to its largest size "
          "before the driver loads (needs room in the bridge window; see guestctl plan)."),
    Param("hugepages", "SIZE:COUNT[@NODE],...", parse_requests, (),
          "Hugepages to reserve at boot, e.g. 2M:512,1G:4 or per NUMA node 1G:2@0,1G:2@1. SIZE is a "
          "hugepage size of x86-64 (2M or 1G) that the kernel offers (/sys/kernel/mm/hugepages); "
          "COUNT 0..4294967295, NODE 0..1023."),
    Param("thp", "|".join(THP_MODES), choice(*THP_MODES), "keep",
          "Transparent hugepages mode written to /sys/kernel/mm/transparent_hugepage/enabled."),
    *(Param(f"nvidia.{p.key}", p.kind, p.parse, p.default if p.default is not None else "", p.help)
      for p in NV_PARAMS),
    *DAEMON_PARAMS,
)
# fmt: on
