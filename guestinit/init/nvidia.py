"""The NVIDIA driver in the guest: which modules load with which parameters, the device
nodes, and what the loaded driver says about itself.

One table (``NV_PARAMS``) holds every ``guestinit.nvidia.*`` key: the module and parameter it
sets, its type, default and help. ``NVreg_NvLinkDisable=1`` goes to ``nvidia`` when exactly
one GPU is present (NVRC's rule; ``guestinit.nvidia.nvlink=on|off`` overrides);
``NVreg_DeviceFileMode=0660`` is the default, as NVRC's image ships it. Parameters follow
``/etc/modprobe.d`` options on the module's command line, so ours win (the kernel applies a
repeated parameter's last value).

Without udev nothing creates ``/dev/nvidia*``: ``make_nodes`` does what nvidia-modprobe does
(majors from /proc/devices, one minor per GPU from /proc/driver/nvidia/gpus), and
``await_nodes`` waits for nodes others create with inotify (pyinotify, imported only when
something is missing), bounded by ``guestinit.nvidia.node_timeout``.
"""

from __future__ import annotations

import os
import re
import stat
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from guestinit.init.params import Param, ParamError
from guestinit.init.root import Root

NVIDIA_MAJOR = 195
CTL_MINOR = 255
MODESET_MINOR = 254


def _bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "on", "yes", "true", "y"):
        return True
    if low in ("0", "off", "no", "false", "n"):
        return False
    raise ParamError(f"{text!r} is not a boolean (use on/off, 1/0)")


def _octal_mode(text: str) -> str:
    if not re.fullmatch(r"0?[0-7]{3,4}", text):
        raise ParamError(f"{text!r} is not an octal file mode (e.g. 0660)")
    mode = int(text, 8)
    if mode > 0o7777:
        raise ParamError(f"{text!r} is out of range for a file mode")
    return "0" + format(mode, "o").rjust(3, "0")


def _id(text: str) -> str:
    if not text.isdigit() or int(text) > 0xFFFFFFFE:
        raise ParamError(f"{text!r} is not a numeric uid/gid")
    return str(int(text))


def _nvlink(text: str) -> str:
    if text not in ("auto", "on", "off"):
        raise ParamError(f"{text!r} is not one of auto, on, off")
    return text


def _word(text: str) -> str:
    if not text or any(c.isspace() or c == '"' for c in text):
        raise ParamError(f"{text!r} must be one word without quotes")
    return text


def _extra(text: str) -> tuple[tuple[str, str, str], ...]:
    out = []
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        m = re.fullmatch(r"([A-Za-z0-9_-]+)\.([A-Za-z0-9_]+)=(\S*)", item)
        if not m:
            raise ParamError(f"{item!r} is not MODULE.PARAM=VALUE (e.g. nvidia.NVreg_RmMsg=...)")
        out.append((m.group(1).replace("-", "_"), m.group(2), m.group(3)))
    return tuple(out)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ParamError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value <= 3600:
        raise ParamError(f"{text!r} is out of range (0 <= seconds <= 3600)")
    return value


@dataclass(frozen=True)
class NvParam:
    key: str  # guestinit.nvidia.<key>
    module: str  # "" when the key is not a module parameter
    param: str  # the module's parameter name ("" when not one)
    kind: str
    parse: Callable[[str], object]
    default: object  # None: not passed unless asked
    help: str


# fmt: off
NV_PARAMS: tuple[NvParam, ...] = (
    NvParam("nvlink", "nvidia", "NVreg_NvLinkDisable", "auto|on|off", _nvlink, "auto",
            "NVLink: auto disables it when exactly one GPU is present (NVreg_NvLinkDisable=1), "
            "off always disables it, on never does."),
    NvParam("device_file_mode", "nvidia", "NVreg_DeviceFileMode", "octal", _octal_mode, "0660",
            "Mode of /dev/nvidia* (the driver's and make_nodes')."),
    NvParam("device_file_uid", "nvidia", "NVreg_DeviceFileUID", "uid", _id, None, "Owner of /dev/nvidia*."),
    NvParam("device_file_gid", "nvidia", "NVreg_DeviceFileGID", "gid", _id, None, "Group of /dev/nvidia*."),
    NvParam("resizable_bar", "nvidia", "NVreg_EnableResizableBar", "bool", _bool, None,
            "Let the driver resize BAR1 itself (NVreg_EnableResizableBar)."),
    NvParam("gsp", "nvidia", "NVreg_EnableGpuFirmware", "bool", _bool, None,
            "Run the GPU System Processor firmware (NVreg_EnableGpuFirmware)."),
    NvParam("unsupported_gpus", "nvidia", "NVreg_OpenRmEnableUnsupportedGpus", "bool", _bool, None,
            "Let the open modules drive GPUs they do not list as supported."),
    NvParam("registry_dwords", "nvidia", "NVreg_RegistryDwords", "word", _word, None,
            "Driver registry keys, passed as they are (NVreg_RegistryDwords)."),
    NvParam("uvm_disable_hmm", "nvidia_uvm", "uvm_disable_hmm", "bool", _bool, None,
            "Turn off heterogeneous memory management in nvidia-uvm."),
    NvParam("modeset", "", "", "bool", _bool, False, "Also load nvidia-modeset."),
    NvParam("drm", "nvidia_drm", "modeset", "bool", _bool, False,
            "Also load nvidia-modeset and nvidia-drm (with modeset=1)."),
    NvParam("extra", "", "", "MODULE.PARAM=VALUE,...", _extra, (),
            "Any other module parameters, appended after the ones above."),
    NvParam("node_timeout", "", "", "seconds", _seconds, 10.0,
            "Bound on waiting for /dev/nvidia* nodes after the modules load."),
)
# fmt: on
BY_KEY = {p.key: p for p in NV_PARAMS}

PARAMS: tuple[Param, ...] = tuple(
    Param(f"nvidia.{p.key}", p.kind, p.parse, p.default if p.default is not None else "", p.help)
    for p in NV_PARAMS
)


def value(values: Mapping[str, object], key: str) -> object:
    """A guestinit.nvidia.* value from parsed config values ('' and None mean: not given)."""
    got = values.get(f"nvidia.{key}")
    if got is None or got == "":
        return BY_KEY[key].default
    return got


@dataclass(frozen=True)
class ModuleLoad:
    name: str
    params: str

    def __str__(self) -> str:
        return f"{self.name} {self.params}".strip()


def module_params(module: str, gpu_count: int, values: Mapping[str, object]) -> list[str]:
    """NAME=VALUE words for one module, in table order, then the extra ones."""
    words: list[str] = []
    for p in NV_PARAMS:
        if p.module != module or not p.param:
            continue
        v = value(values, p.key)
        if p.key == "nvlink":
            if v == "off" or (v == "auto" and gpu_count == 1):
                words.append(f"{p.param}=1")
            continue
        if p.key == "drm":
            if v is True:
                words.append(f"{p.param}=1")
            continue
        if isinstance(v, bool):
            words.append(f"{p.param}={int(v)}")
        elif v is not None:
            words.append(f"{p.param}={v}")
    extra = value(values, "extra")
    assert isinstance(extra, tuple)
    words.extend(f"{param}={val}" for mod, param, val in extra if mod == module)
    return words


def module_plan(
    spec_modules: tuple[str, ...], gpu_count: int, values: Mapping[str, object]
) -> list[ModuleLoad]:
    """The modules a mode loads (topology.ModeSpec.modules) plus the ones asked for, with their
    parameters. Dependencies are ordered by modules.ModuleTree.order at load time."""
    names = list(spec_modules)
    if "nvidia" in names:
        if value(values, "modeset") is True or value(values, "drm") is True:
            names.append("nvidia_modeset")
        if value(values, "drm") is True:
            names.append("nvidia_drm")
    return [ModuleLoad(n, " ".join(module_params(n, gpu_count, values))) for n in names]


# ---------------------------------------------------------------- what the loaded driver says


@dataclass(frozen=True)
class DriverInfo:
    version: str
    flavour: str  # "open" or "proprietary"
    line: str

    def as_dict(self) -> dict[str, str]:
        return {"version": self.version, "flavour": self.flavour, "line": self.line}


def read_version(root: Root) -> DriverInfo | None:
    text = root.read_text("/proc/driver/nvidia/version", "")
    for line in text.splitlines():
        if line.startswith("NVRM version:"):
            m = re.search(r"\s(\d+\.\d+(?:\.\d+)?)\s", line + " ")
            flavour = "open" if "Open Kernel Module" in line else "proprietary"
            return DriverInfo(m.group(1) if m else "", flavour, line.strip())
    return None


def read_params(root: Root) -> dict[str, str]:
    """/proc/driver/nvidia/params: ``Name: value`` lines; quoted empty strings become ''."""
    out: dict[str, str] = {}
    for line in root.read_text("/proc/driver/nvidia/params", "").splitlines():
        name, sep, val = line.partition(":")
        if sep:
            v = val.strip()
            if len(v) >= 2 and v[0] == v[-1] == '"':
                v = v[1:-1]
            out[name.strip()] = v
    return out


def read_char_majors(root: Root) -> dict[str, int]:
    """Character device majors by name from /proc/devices."""
    out: dict[str, int] = {}
    section = ""
    for line in root.read_text("/proc/devices", "").splitlines():
        if line.endswith(":"):
            section = line
            continue
        parts = line.split()
        if section.startswith("Character") and len(parts) == 2 and parts[0].isdigit():
            out.setdefault(parts[1], int(parts[0]))
    return out


def gpu_minors(root: Root) -> dict[str, int]:
    """Device minor of each GPU the driver attached, by PCI address."""
    out: dict[str, int] = {}
    base = "/proc/driver/nvidia/gpus"
    for bdf in root.listdir(base):
        for line in root.read_text(f"{base}/{bdf}/information", "").splitlines():
            name, _, val = line.partition(":")
            if name.strip() == "Device Minor" and val.strip().isdigit():
                out[bdf] = int(val.strip())
    return out


@dataclass(frozen=True)
class Node:
    path: str  # guest path
    major: int
    minor: int


def expected_nodes(root: Root) -> list[Node]:
    """The /dev/nvidia* nodes the loaded modules serve (from /proc/devices and the GPU list)."""
    majors = read_char_majors(root)
    nodes: list[Node] = []
    nv = majors.get("nvidia-frontend", majors.get("nvidia"))
    if nv is not None:
        nodes.append(Node("/dev/nvidiactl", nv, CTL_MINOR))
        nodes.extend(Node(f"/dev/nvidia{m}", nv, m) for m in sorted(gpu_minors(root).values()))
        if root.exists("/sys/module/nvidia_modeset"):
            nodes.append(Node("/dev/nvidia-modeset", nv, MODESET_MINOR))
    uvm = majors.get("nvidia-uvm")
    if uvm is not None:
        nodes.append(Node("/dev/nvidia-uvm", uvm, 0))
        nodes.append(Node("/dev/nvidia-uvm-tools", uvm, 1))
    return nodes


def make_nodes(root: Root, values: Mapping[str, object]) -> tuple[list[str], list[str]]:
    """Create the missing nodes with the configured mode/owner. Returns (created, problems)."""
    mode_text = value(values, "device_file_mode")
    assert isinstance(mode_text, str)
    mode = int(mode_text, 8)
    uid = value(values, "device_file_uid")
    gid = value(values, "device_file_gid")
    created: list[str] = []
    problems: list[str] = []
    for node in expected_nodes(root):
        path = root(node.path)
        if os.path.lexists(path):
            continue
        try:
            os.mknod(path, stat.S_IFCHR | mode, os.makedev(node.major, node.minor))
            os.chmod(path, mode)  # mknod applies the umask
            if uid is not None or gid is not None:
                os.chown(
                    path, int(str(uid)) if uid is not None else -1, int(str(gid)) if gid is not None else -1
                )
            created.append(node.path)
        except OSError as exc:
            problems.append(f"mknod {node.path}: {exc.strerror or exc}")
    return created, problems


def _nearest_dir(path: str) -> str:
    d = os.path.dirname(path)
    while d and not os.path.isdir(d):
        parent = os.path.dirname(d)
        if parent == d:
            break
        d = parent
    return d or "/"


def await_paths(paths: list[str], timeout_s: float) -> list[str]:
    """Wait until every path exists or ``timeout_s`` passes; returns the ones still missing.

    Nothing is imported or watched when all exist already; otherwise pyinotify watches the
    nearest existing directory of each missing path (re-watching as directories appear)."""
    missing = [p for p in paths if not os.path.lexists(p)]
    if not missing or timeout_s <= 0:
        return missing
    import pyinotify

    wm = pyinotify.WatchManager()
    notifier = pyinotify.Notifier(wm, pyinotify.ProcessEvent())
    mask = pyinotify.IN_CREATE | pyinotify.IN_MOVED_TO | pyinotify.IN_ATTRIB
    watched: set[str] = set()
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            for p in missing:
                d = _nearest_dir(p)
                if d not in watched:
                    wm.add_watch(d, mask, quiet=True)
                    watched.add(d)
            missing = [p for p in missing if not os.path.lexists(p)]
            left = deadline - time.monotonic()
            if not missing or left <= 0:
                return missing
            if notifier.check_events(timeout=max(1, int(left * 1000))):
                notifier.read_events()
                notifier.process_events()
    finally:
        notifier.stop()


def await_nodes(root: Root, values: Mapping[str, object], nodes: list[Node] | None = None) -> list[str]:
    """Wait (bounded) for the expected /dev/nvidia* nodes; returns the guest paths still missing."""
    timeout = value(values, "node_timeout")
    assert isinstance(timeout, float | int)
    wanted = expected_nodes(root) if nodes is None else nodes
    missing = await_paths([root(n.path) for n in wanted], float(timeout))
    return [n.path for n in wanted if root(n.path) in missing]
