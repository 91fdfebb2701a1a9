"""The NVIDIA driver in the guest: which modules load with which parameters, the device
nodes, and what the loaded driver says about itself.

One table (``gpu_params.NV_PARAMS``, part of the one key table) holds every
``guestinit.nvidia.*`` key: the module and parameter it sets, its type, default and help.
``NVreg_NvLinkDisable=1`` goes to ``nvidia`` when exactly one GPU is present (NVRC's rule;
``guestinit.nvidia.nvlink=on|off`` overrides); ``NVreg_DeviceFileMode=0660`` is the default,
as NVRC's image ships it. Parameters follow ``/etc/modprobe.d`` options on the module's
command line, so ours win (the kernel applies a repeated parameter's last value).

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
from collections.abc import Mapping
from dataclasses import dataclass

from guestinit.init.gpu.params import NV_PARAMS, nvidia_value
from guestinit.init.root import Root

value = nvidia_value  # a guestinit.nvidia.* value from parsed config values

NVIDIA_MAJOR = 195
CTL_MINOR = 255
MODESET_MINOR = 254


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
    import warnings

    with warnings.catch_warnings():  # pyinotify imports asyncore, deprecated in 3.11
        warnings.simplefilter("ignore", DeprecationWarning)
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
