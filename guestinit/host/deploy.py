"""`guestctl deploy` and `guestctl rollback`: put a built guest into a Kata prefix, atomically.

Kata finds its guest through names under the install prefix (references §2). This module owns
those names for one flavour F (handler ``kata-qemu-F``) and makes them all switch with ONE
rename(2), so a node running tenants never sees half a deploy:

    share/kata-containers/kata-guestinit-<V>-F.initrd         versioned image   (immutable)
    share/kata-containers/vmlinuz-guestinit-<V>-F.container   versioned kernel  (immutable)
    share/guestinit/F/versions/<id>/                          one complete version:
        kata-containers-initrd-F.img -> ../../../../kata-containers/kata-guestinit-<V>-F.initrd
        vmlinuz-F.container          -> ../../../../kata-containers/vmlinuz-guestinit-<V>-F.container
        configuration-qemu-F.toml    kata-qemu-F.toml (containerd)   runtimeclass-kata-qemu-F.yaml
        manifest.json (the build's)  deploy.json (what this version is, sha256 of every member)
    share/guestinit/F/current  -> versions/<id>               THE switch
    share/guestinit/F/previous -> versions/<id>               what `rollback` returns to
    share/kata-containers/kata-containers-initrd-F.img       -> ../guestinit/F/current/<same name>
    share/kata-containers/vmlinuz-F.container                -> ../guestinit/F/current/<same name>
    share/defaults/kata-containers/configuration-qemu-F.toml -> ../../guestinit/F/current/<same name>
    containerd/config.d/kata-qemu-F.toml                     -> ../../share/guestinit/F/current/<same>

Why a kill at any moment leaves the old or the new version, never a mix:
- every file is written under a temporary name, fsync'd, renamed, and its directory fsync'd; a
  version directory is filled under a temporary name and renamed into place whole;
- a public name changes only (a) from "absent" or from what it held to a link through
  ``current`` that resolves to the very same bytes (taking over a foreign install first copies
  that install into a "snapshot" version and points ``current`` at it), or (b) by the switch
  itself, one rename of ``current``;
- leftovers of a killed run are temporary names, removed by the next run; versions are pruned
  only when neither ``current`` nor ``previous`` names them.
The Kata configuration names the versioned kernel and image files, not the public links, so one
read of it gives the runtime a consistent pair even while a switch happens.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import difflib
import fcntl
import hashlib
import json
import os
import re
import shutil
import sys
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2

from guestinit.host.errors import UserError

TMP_PREFIX = ".gi-tmp."
CHUNK = 1 << 20
DEFAULT_PREFIX = Path("/opt/kata")
DEFAULT_MANIFEST = Path("build/kata/manifest.json")
DEFAULT_FLAVOUR = "nvidia-gpu"
DEFAULT_KEEP = 3
DEFAULT_SYSFS_ROOT = "/"
DEFAULT_PLAN_MEMORY = "8G"  # Kata's default_memory for this flavour
NODE_LABEL = "guestinit/kata-runtime"
RUNTIMECLASS_OVERHEAD = {"memory": "160Mi", "cpu": "250m"}
SAFE_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
SAFE_FLAVOUR = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,40}[a-z0-9])?$")
ROOTFS_KINDS = ("initrd", "image")


class DeployError(UserError):
    """A user-facing failure of deploy or rollback: one line naming the input and the fix."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message, hint, exit_code=1)


# --------------------------------------------------------------------------------------------
# The Kata settings this deploy writes: one table (section, key, type, default, help, source).
# source: "default" (upstream's value for large-BAR GPUs, references §2), "plan" (the default,
# unless `guestctl plan` sized it for this host), "image" / "prefix" (computed at deploy time).


@dataclass(frozen=True)
class Setting:
    table: str
    key: str
    kind: type
    default: object
    help: str
    source: str = "default"


QEMU = "hypervisor.qemu"
KATA_SETTINGS: tuple[Setting, ...] = (
    Setting(QEMU, "path", str, None, "QEMU as kata-deploy installs it under the prefix", "prefix"),
    Setting(QEMU, "valid_hypervisor_paths", list, None, "annotations may only name this QEMU", "prefix"),
    Setting(QEMU, "kernel", str, None, "the guest kernel: a versioned file, never rewritten", "image"),
    Setting(QEMU, "initrd", str, None, "the guest initrd (guestinit as PID 1): a versioned file", "image"),
    Setting(QEMU, "image", str, None, "the guest root filesystem image: a versioned file", "image"),
    Setting(QEMU, "rootfs_type", str, None, "filesystem of the guest image", "image"),
    Setting(QEMU, "machine_type", str, "q35", "PCIe machine: root ports for passed-through GPUs"),
    Setting(QEMU, "firmware", str, "", "empty: QEMU's default firmware"),
    Setting(
        QEMU,
        "kernel_params",
        str,
        "cgroup_no_v1=all pci=realloc pci=nocrs pci=assign-busses",
        "appended to Kata's own guest kernel parameters",
        "plan",
    ),
    Setting(QEMU, "default_vcpus", int, 1, "vCPUs at boot"),
    Setting(QEMU, "default_memory", int, 8192, "guest RAM at boot, MiB", "plan"),
    Setting(QEMU, "memory_slots", int, 10, "memory hot-plug slots"),
    Setting(QEMU, "default_bridges", int, 1, "PCI bridges for hot-plug"),
    Setting(
        QEMU, "enable_hugepages", bool, False, "back guest RAM with hugepages (implies preallocation)", "plan"
    ),
    Setting(QEMU, "enable_iommu", bool, False, "no vIOMMU in the guest"),
    Setting(QEMU, "hot_plug_vfio", str, "no-port", "where VFIO devices are hot-plugged", "plan"),
    Setting(QEMU, "cold_plug_vfio", str, "root-port", "where VFIO devices are cold-plugged", "plan"),
    Setting(QEMU, "pcie_root_port", int, 8, "PCIe root ports for large-BAR devices such as GPUs", "plan"),
    Setting(QEMU, "disable_image_nvdimm", bool, True, "attach an image as virtio-blk, not NVDIMM"),
    Setting(QEMU, "shared_fs", str, "virtio-fs", "how container files reach the guest"),
    Setting(QEMU, "virtio_fs_daemon", str, None, "virtiofsd as kata-deploy installs it", "prefix"),
    Setting(
        QEMU, "valid_virtio_fs_daemon_paths", list, None, "annotations may only name this virtiofsd", "prefix"
    ),
    Setting(
        "agent.kata", "dial_timeout", int, 1200, "seconds to reach kata-agent (multi-GPU boots are slow)"
    ),
    Setting("runtime", "create_container_timeout", int, 1200, "seconds for CreateContainer"),
    Setting(
        "runtime", "static_sandbox_resource_mgmt", bool, True, "size the VM up front: no CPU/memory hot-plug"
    ),
    Setting("runtime", "sandbox_cgroup_only", bool, True, "one host cgroup per sandbox"),
)
PLAN_KEYS = frozenset(s.key for s in KATA_SETTINGS if s.source == "plan")


# --------------------------------------------------------------------------------------------
# Atomic filesystem primitives.


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: Path) -> None:
    """mkdir -p, with each new directory's entry fsync'd into its parent."""
    missing: list[Path] = []
    while not path.is_dir():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        directory.mkdir(mode=0o755, exist_ok=True)
        _fsync_dir(directory.parent)


def _tmp_path(dest: Path) -> Path:
    return dest.with_name(f"{TMP_PREFIX}{os.getpid()}.{dest.name}")


def _write_fd(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _create_file(path: Path, data: bytes | Path, mode: int = 0o644) -> str:
    """Write a new file (bytes, or a copy of a file) with fsync; return its sha256."""
    digest = hashlib.sha256()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)
        if isinstance(data, Path):
            with open(data, "rb") as src:
                while chunk := src.read(CHUNK):
                    digest.update(chunk)
                    _write_fd(fd, chunk)
        else:
            digest.update(data)
            _write_fd(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    return digest.hexdigest()


def write_atomic(dest: Path, data: bytes | Path, sha256: str | None = None) -> None:
    """Replace ``dest`` by new content: temp name, fsync, rename, fsync the directory.

    With ``sha256`` the content written must hash to it (a copy that changed under us is
    dropped, never renamed into place)."""
    tmp = _tmp_path(dest)
    digest = _create_file(tmp, data)
    if sha256 is not None and digest != sha256:
        os.unlink(tmp)
        source = os.fspath(data) if isinstance(data, Path) else "data"
        raise DeployError(
            f"{source}: content changed while it was copied (sha256 {digest[:16]}…): rebuild it"
        )
    os.rename(tmp, dest)
    _fsync_dir(dest.parent)


def symlink_atomic(dest: Path, target: str) -> None:
    """Point ``dest`` at ``target``: a temporary link renamed over the old name."""
    tmp = _tmp_path(dest)
    os.symlink(target, tmp)
    try:
        os.rename(tmp, dest)
    except IsADirectoryError:
        os.unlink(tmp)
        raise DeployError(
            f"{dest} is a directory, not a file or link: move it away and deploy again"
        ) from None
    _fsync_dir(dest.parent)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _remove_tree_atomic(path: Path) -> None:
    """Rename away, then delete: a kill mid-delete leaves a temporary name, not half a version."""
    doomed = path.with_name(f"{TMP_PREFIX}{os.getpid()}.del.{path.name}")
    os.rename(path, doomed)
    _fsync_dir(path.parent)
    shutil.rmtree(doomed)


# --------------------------------------------------------------------------------------------
# Where things live.


@dataclass(frozen=True)
class Layout:
    prefix: Path
    flavour: str

    @property
    def handler(self) -> str:
        return f"kata-qemu-{self.flavour}"

    @property
    def assets(self) -> Path:
        return self.prefix / "share" / "kata-containers"

    @property
    def defaults(self) -> Path:
        return self.prefix / "share" / "defaults" / "kata-containers"

    @property
    def containerd(self) -> Path:
        return self.prefix / "containerd" / "config.d"

    @property
    def state(self) -> Path:
        return self.prefix / "share" / "guestinit" / self.flavour

    @property
    def versions(self) -> Path:
        return self.state / "versions"

    @property
    def current(self) -> Path:
        return self.state / "current"

    @property
    def previous(self) -> Path:
        return self.state / "previous"

    def rootfs_member(self, kind: str) -> str:
        return (
            f"kata-containers-initrd-{self.flavour}.img"
            if kind == "initrd"
            else f"kata-containers-{self.flavour}.img"
        )

    @property
    def kernel_member(self) -> str:
        return f"vmlinuz-{self.flavour}.container"

    @property
    def config_member(self) -> str:
        return f"configuration-qemu-{self.flavour}.toml"

    @property
    def containerd_member(self) -> str:
        return f"{self.handler}.toml"

    @property
    def runtimeclass_member(self) -> str:
        return f"runtimeclass-{self.handler}.yaml"

    def public(self) -> dict[str, Path]:
        """Member name inside a version directory -> the public path Kata and containerd read."""
        return {
            self.rootfs_member("initrd"): self.assets / self.rootfs_member("initrd"),
            self.rootfs_member("image"): self.assets / self.rootfs_member("image"),
            self.kernel_member: self.assets / self.kernel_member,
            self.config_member: self.defaults / self.config_member,
            self.containerd_member: self.containerd / self.containerd_member,
        }

    def stable_target(self, member: str) -> str:
        """What a public name holds once guestinit manages it: a relative link through current."""
        return os.path.relpath(self.current / member, self.public()[member].parent)

    def versioned_name(self, kind: str, version: str) -> str:
        if kind == "kernel":
            return f"vmlinuz-guestinit-{version}-{self.flavour}.container"
        return f"kata-guestinit-{version}-{self.flavour}.{kind}"

    def is_versioned_name(self, name: str) -> bool:
        f = re.escape(self.flavour)
        return bool(
            re.fullmatch(
                rf"(vmlinuz-guestinit-.+-{f}\.container|kata-guestinit-.+-{f}\.(initrd|image))", name
            )
        )

    def rel(self, path: Path) -> str:
        return os.path.relpath(path, self.prefix)


# --------------------------------------------------------------------------------------------
# The build manifest (written by `guestctl build`).


@dataclass(frozen=True)
class Artifact:
    name: str
    kind: str
    sha256: str
    size: int
    path: Path


@dataclass(frozen=True)
class BuildManifest:
    path: Path
    raw: bytes
    image: str
    profile: str
    version: str
    built: str
    kernel_version: str
    kernel: Artifact
    rootfs: Artifact


def _field(doc: Mapping[str, Any], key: str, where: Path, kind: type = str) -> Any:
    value = doc.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise DeployError(
            f"{where}: '{key}' is missing or not a {kind.__name__}: rebuild with `guestctl build`"
        )
    return value


def load_manifest(path: Path) -> BuildManifest:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DeployError(
            f"{path}: no build manifest there: run `guestctl build kata` or pass --manifest PATH"
        ) from None
    except OSError as exc:
        raise DeployError(f"{path}: cannot read the build manifest ({exc.strerror})") from None
    try:
        doc = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DeployError(f"{path}: not valid JSON ({exc}): rebuild with `guestctl build`") from None
    if not isinstance(doc, dict):
        raise DeployError(f"{path}: not a JSON object: rebuild with `guestctl build`")
    version = _field(doc, "version", path)
    if not SAFE_VERSION.match(version):
        raise DeployError(
            f"{path}: version {version!r} is not a safe file-name part ([A-Za-z0-9._+-]): rebuild"
        )
    entries = _field(doc, "artifacts", path, list)
    found: dict[str, Artifact] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            raise DeployError(f"{path}: an 'artifacts' entry is not an object: rebuild with `guestctl build`")
        name = _field(entry, "name", path)
        kind = _field(entry, "kind", path)
        sha = _field(entry, "sha256", path)
        size = _field(entry, "size", path, int)
        if "/" in name or name in (".", "..") or not name:
            raise DeployError(f"{path}: artifact name {name!r} is not a plain file name: rebuild")
        if not re.fullmatch(r"[0-9a-f]{64}", sha):
            raise DeployError(f"{path}: artifact {name}: sha256 {sha!r} is not 64 hex digits: rebuild")
        if kind in found:
            raise DeployError(
                f"{path}: two artifacts of kind {kind!r}: a deploy takes one kernel and one image"
            )
        found[kind] = Artifact(name, kind, sha, size, path.parent / name)
    if "kernel" not in found:
        raise DeployError(f"{path}: no artifact of kind 'kernel': rebuild with `guestctl build`")
    rootfs = [found[k] for k in ROOTFS_KINDS if k in found]
    if len(rootfs) != 1:
        raise DeployError(
            f"{path}: need exactly one artifact of kind 'initrd' or 'image', found {len(rootfs)}"
        )
    return BuildManifest(
        path=path,
        raw=raw,
        image=_field(doc, "image", path),
        profile=str(doc.get("profile", "default")),
        version=version,
        built=str(doc.get("built", "unknown")),
        kernel_version=str(doc.get("kernel_version") or "unknown"),
        kernel=found["kernel"],
        rootfs=rootfs[0],
    )


def verify_artifact(artifact: Artifact) -> None:
    try:
        size = artifact.path.stat().st_size
        digest = sha256_file(artifact.path)
    except FileNotFoundError:
        raise DeployError(
            f"{artifact.path}: missing (the manifest lists it): rebuild with `guestctl build`"
        ) from None
    except OSError as exc:
        raise DeployError(f"{artifact.path}: cannot read it ({exc.strerror})") from None
    if size != artifact.size or digest != artifact.sha256:
        raise DeployError(
            f"{artifact.path}: sha256 {digest[:16]}… ({size} bytes) does not match the manifest's "
            f"{artifact.sha256[:16]}… ({artifact.size} bytes): it changed after the build, rebuild it"
        )


# --------------------------------------------------------------------------------------------
# Rendering (jinja2: every generated configuration).


def toml_value(value: object) -> str:
    """A TOML literal for a bool, int, str or list of those."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        # A JSON string (UTF-8, not \u surrogate pairs) is a TOML basic string once DEL, which
        # JSON leaves raw and TOML forbids, is escaped too.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("guestinit.host", "templates"),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["toml"] = toml_value
    return env


def known_kata_keys() -> dict[str, frozenset[str]]:
    text = (Path(__file__).parent / "templates" / "kata-known-keys.json").read_text()
    return {table: frozenset(keys) for table, keys in json.loads(text)["tables"].items()}


def unknown_kata_keys(document: Mapping[str, Any]) -> list[str]:
    """Dotted keys of a parsed Kata configuration that Kata's runtime does not read."""
    known = known_kata_keys()
    unknown: list[str] = []

    def walk(node: Mapping[str, Any], path: str) -> None:
        for key, value in node.items():
            dotted = f"{path}.{key}" if path else key
            if path in known:
                if key not in known[path]:
                    unknown.append(dotted)
            elif isinstance(value, dict) and any(t == dotted or t.startswith(dotted + ".") for t in known):
                walk(value, dotted)
            else:
                unknown.append(dotted)

    walk(document, "")
    return unknown


@dataclass(frozen=True)
class Plan:
    """Values from `guestctl plan` for this host (PLAN_KEYS) and how they were asked for."""

    settings: Mapping[str, object]
    summary: str


def kata_items(layout: Layout, manifest: BuildManifest, plan: Plan | None) -> list[dict[str, object]]:
    prefix = os.fspath(layout.prefix)
    qemu = f"{prefix}/bin/qemu-system-x86_64"
    virtiofsd = f"{prefix}/libexec/virtiofsd"
    computed: dict[str, object] = {
        "path": qemu,
        "valid_hypervisor_paths": [qemu],
        "virtio_fs_daemon": virtiofsd,
        "valid_virtio_fs_daemon_paths": [virtiofsd],
        "kernel": os.fspath(layout.assets / layout.versioned_name("kernel", manifest.version)),
        manifest.rootfs.kind: os.fspath(
            layout.assets / layout.versioned_name(manifest.rootfs.kind, manifest.version)
        ),
    }
    if manifest.rootfs.kind == "image":
        computed["rootfs_type"] = "erofs"
    items: list[dict[str, object]] = []
    for setting in KATA_SETTINGS:
        source = setting.source
        if source in ("image", "prefix"):
            value = computed.get(setting.key)
            source = "the image" if source == "image" else "--prefix"
        elif source == "plan" and plan is not None and setting.key in plan.settings:
            value = plan.settings[setting.key]
            source = "guestctl plan"
        else:
            value, source = setting.default, "default"
        if value is None:
            continue
        items.append(
            {
                "table": setting.table,
                "key": setting.key,
                "value": value,
                "help": setting.help,
                "source": source,
            }
        )
    return items


def render_kata_config(layout: Layout, manifest: BuildManifest, plan: Plan | None) -> bytes:
    items = kata_items(layout, manifest, plan)
    tables: list[dict[str, Any]] = []
    for item in items:
        if not tables or tables[-1]["name"] != item["table"]:
            tables.append({"name": item["table"], "entries": []})
        tables[-1]["entries"].append(item)
    text = (
        _environment()
        .get_template("configuration-qemu.toml.j2")
        .render(
            flavour=layout.flavour,
            image={
                "image": manifest.image,
                "version": manifest.version,
                "profile": manifest.profile,
                "built": manifest.built,
                "kernel_version": manifest.kernel_version,
            },
            planned=plan.summary if plan else "",
            tables=tables,
        )
    )
    unknown = unknown_kata_keys(tomllib.loads(text))
    if unknown:
        raise DeployError(
            f"the Kata template writes keys Kata does not read: {', '.join(unknown)}: fix the table"
        )
    return text.encode()


def render_containerd(layout: Layout) -> bytes:
    text = (
        _environment()
        .get_template("containerd-runtime.toml.j2")
        .render(
            handler=layout.handler,
            flavour=layout.flavour,
            config_dir=os.fspath(layout.containerd),
            shim=os.fspath(layout.prefix / "bin" / "containerd-shim-kata-v2"),
            config_path=os.fspath(layout.public()[layout.config_member]),
        )
    )
    tomllib.loads(text)
    return text.encode()


def render_runtimeclass(layout: Layout) -> bytes:
    return (
        _environment()
        .get_template("runtimeclass.yaml.j2")
        .render(
            handler=layout.handler,
            flavour=layout.flavour,
            node_label=NODE_LABEL,
            overhead_memory=RUNTIMECLASS_OVERHEAD["memory"],
            overhead_cpu=RUNTIMECLASS_OVERHEAD["cpu"],
        )
        .encode()
    )


# --------------------------------------------------------------------------------------------
# Versions: what one complete version directory holds.


@dataclass
class VersionPlan:
    """Members of a version directory: files (bytes or a file to copy) and links."""

    id: str
    record: dict[str, Any]
    files: dict[str, bytes | Path] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)
    sha256: dict[str, str] = field(default_factory=dict)

    def members(self) -> set[str]:
        return set(self.files) | set(self.links)


def _utc_stamp() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")


def build_version(layout: Layout, manifest: BuildManifest, plan: Plan | None) -> VersionPlan:
    config = render_kata_config(layout, manifest, plan)
    containerd = render_containerd(layout)
    runtimeclass = render_runtimeclass(layout)
    kernel_file = layout.versioned_name("kernel", manifest.version)
    rootfs_file = layout.versioned_name(manifest.rootfs.kind, manifest.version)
    files: dict[str, bytes | Path] = {
        layout.config_member: config,
        layout.containerd_member: containerd,
        layout.runtimeclass_member: runtimeclass,
        "manifest.json": manifest.raw,
    }
    # Links are relative to versions/<id>/, which sits two levels below the state directory.
    links = {
        layout.kernel_member: os.path.relpath(layout.assets / kernel_file, layout.versions / "x"),
        layout.rootfs_member(manifest.rootfs.kind): os.path.relpath(
            layout.assets / rootfs_file, layout.versions / "x"
        ),
    }
    sha = {name: hashlib.sha256(data).hexdigest() for name, data in files.items() if isinstance(data, bytes)}
    sha[layout.kernel_member] = manifest.kernel.sha256
    sha[layout.rootfs_member(manifest.rootfs.kind)] = manifest.rootfs.sha256
    digest = hashlib.sha256(json.dumps([sorted(sha.items()), sorted(links.items())]).encode()).hexdigest()
    version_id = f"{manifest.version}+{digest[:8]}"
    record = {
        "id": version_id,
        "source": "build",
        "image": manifest.image,
        "profile": manifest.profile,
        "version": manifest.version,
        "kernel_version": manifest.kernel_version,
        "built": manifest.built,
        "installed": {kernel_file: manifest.kernel.sha256, rootfs_file: manifest.rootfs.sha256},
        "plan": dict(plan.settings) if plan else None,
        "sha256": sha,
    }
    return VersionPlan(version_id, record, files, links, sha)


def snapshot_version(layout: Layout) -> VersionPlan:
    """A version holding what the public names resolve to now (a foreign install, taken over)."""
    base = f"snapshot-{_utc_stamp()}"
    version_id, n = base, 1
    while (layout.versions / version_id).exists():
        n += 1
        version_id = f"{base}-{n}"
    plan = VersionPlan(version_id, {"id": version_id, "source": "snapshot", "taken": _utc_stamp()})
    state = os.fspath(layout.state) + os.sep
    for member, public in layout.public().items():
        if not public.exists():
            continue  # absent or dangling: absent in this version too
        real = os.path.realpath(public)
        if public.is_symlink() and not real.startswith(state):
            plan.links[member] = os.path.relpath(real, layout.versions / "x")
        else:
            plan.files[member] = Path(real)
        plan.sha256[member] = sha256_file(Path(real))
    plan.record["sha256"] = dict(plan.sha256)
    return plan


def read_record(directory: Path) -> dict[str, Any]:
    try:
        record = json.loads((directory / "deploy.json").read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def create_version(layout: Layout, plan: VersionPlan) -> None:
    final = layout.versions / plan.id
    tmp = layout.versions / f"{TMP_PREFIX}{os.getpid()}.{plan.id}"
    os.mkdir(tmp, 0o755)
    for name, data in sorted(plan.files.items()):
        digest = _create_file(tmp / name, data)
        if plan.sha256.get(name, digest) != digest:
            shutil.rmtree(tmp)
            raise DeployError(
                f"{data if isinstance(data, Path) else name}: changed while it was copied: run again"
            )
    for name, target in sorted(plan.links.items()):
        os.symlink(target, tmp / name)
    _create_file(tmp / "deploy.json", (json.dumps(plan.record, indent=2, sort_keys=True) + "\n").encode())
    _fsync_dir(tmp)
    os.rename(tmp, final)
    _fsync_dir(layout.versions)


def version_matches(layout: Layout, plan: VersionPlan) -> bool:
    directory = layout.versions / plan.id
    for name, data in plan.files.items():
        path = directory / name
        if path.is_symlink() or not path.is_file():
            return False
        if isinstance(data, bytes) and path.read_bytes() != data:
            return False
    return all(
        (directory / name).is_symlink() and os.readlink(directory / name) == t
        for name, t in plan.links.items()
    )


def verify_version(layout: Layout, version_id: str) -> None:
    """Every member of a kept version still hashes to what was recorded when it was made."""
    directory = layout.versions / version_id
    record = read_record(directory)
    sums = record.get("sha256")
    if not isinstance(sums, dict) or not sums:
        raise DeployError(
            f"{directory}: no deploy.json with checksums: this version cannot be restored safely"
        )
    for member, expected in sorted(sums.items()):
        try:
            actual = sha256_file(directory / member)
        except OSError:
            raise DeployError(f"{directory / member}: missing: version {version_id} is incomplete") from None
        if actual != expected:
            raise DeployError(
                f"{directory / member}: sha256 differs from when it was deployed: it was modified"
            )


# --------------------------------------------------------------------------------------------
# The state of a prefix.


def _read_pointer(link: Path) -> str | None:
    try:
        target = os.readlink(link)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DeployError(f"{link}: not a symlink ({exc.strerror}): move it away and deploy again") from None
    return Path(target).name


def classify(layout: Layout) -> dict[str, str]:
    """Each public name: 'ours' (a link through current), 'absent', or 'foreign'."""
    out: dict[str, str] = {}
    for member, public in layout.public().items():
        if not os.path.lexists(public):
            out[member] = "absent"
        elif public.is_symlink() and os.readlink(public) == layout.stable_target(member):
            out[member] = "ours"
        else:
            out[member] = "foreign"
    return out


def remove_leftovers(layout: Layout) -> list[Path]:
    """Delete temporary names a killed run left behind (the caller holds the lock)."""
    removed: list[Path] = []
    for directory in {layout.assets, layout.defaults, layout.containerd, layout.state, layout.versions}:
        if not directory.is_dir():
            continue
        for entry in directory.iterdir():
            if entry.name.startswith(TMP_PREFIX):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
                removed.append(entry)
        if removed:
            _fsync_dir(directory)
    return removed


@contextlib.contextmanager
def locked(layout: Layout) -> Iterator[None]:
    """One deploy or rollback per prefix and flavour at a time (released by the kernel on death)."""
    make_dirs(layout.versions)
    fd = os.open(layout.state / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DeployError(
                f"{layout.state}: another deploy or rollback is running there: wait for it"
            ) from None
        yield
    finally:
        os.close(fd)


# History: one JSON line per switch, appended (and fsync'd) BEFORE the switch. The version to roll
# back to is the "from" of the newest line whose "to" is the current version, so a kill between
# the append and the switch cannot mislead a later rollback.


def history_path(layout: Layout) -> Path:
    return layout.state / "history.jsonl"


def read_history(layout: Layout) -> list[dict[str, str]]:
    try:
        lines = history_path(layout).read_text().splitlines()
    except FileNotFoundError:
        return []
    entries: list[dict[str, str]] = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a line cut short by a kill
        if isinstance(entry, dict) and isinstance(entry.get("to"), str):
            entries.append(entry)
    return entries


def append_history(layout: Layout, entry: dict[str, str]) -> None:
    path = history_path(layout)
    entries = read_history(layout)
    if len(entries) >= 500:  # keep it short: rewrite the newest 100 atomically
        text = "".join(json.dumps(e, sort_keys=True) + "\n" for e in entries[-100:])
        write_atomic(path, text.encode())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        _write_fd(fd, (json.dumps(entry, sort_keys=True) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    _fsync_dir(layout.state)


def current_version(layout: Layout) -> str | None:
    return _read_pointer(layout.current)


def previous_version(layout: Layout, current: str | None = None) -> str | None:
    current = current if current is not None else current_version(layout)
    for entry in reversed(read_history(layout)):
        if entry["to"] == current:
            before = entry.get("from")
            return before if isinstance(before, str) and before else None
    return None


def switch(layout: Layout, target: str, why: str) -> str | None:
    """Make ``target`` the current version: one rename. Returns the version it replaced."""
    old = current_version(layout)
    if old == target:
        return old
    append_history(layout, {"from": old or "", "to": target, "at": _utc_stamp(), "by": why})
    symlink_atomic(layout.current, f"versions/{target}")
    return old


def adopt(layout: Layout) -> str | None:
    """Bring foreign public names under guestinit without changing what any of them resolves to.

    Their content is kept as a snapshot version first (so `rollback` can restore it byte for
    byte), ``current`` is pointed at it, then each foreign name becomes a link through current."""
    kinds = classify(layout)
    if "foreign" in kinds.values():
        snapshot = snapshot_version(layout)
        create_version(layout, snapshot)
        switch(layout, snapshot.id, "adopt")
        for member, kind in kinds.items():
            if kind == "foreign":
                symlink_atomic(layout.public()[member], layout.stable_target(member))
    return current_version(layout)


def link_public(layout: Layout, members: set[str]) -> None:
    """Make sure each public name of ``members`` is a link through current (before a switch)."""
    kinds = classify(layout)
    for member in sorted(members & set(kinds)):
        if kinds[member] != "ours":
            public = layout.public()[member]
            make_dirs(public.parent)
            symlink_atomic(public, layout.stable_target(member))


def tidy(layout: Layout) -> None:
    """Drop our public links that the current version has no member for (they dangle)."""
    for member, kind in classify(layout).items():
        if kind == "ours" and not os.path.lexists(layout.current / member):
            public = layout.public()[member]
            public.unlink()
            _fsync_dir(public.parent)


def kept_versions(layout: Layout) -> list[tuple[float, str, dict[str, Any]]]:
    """(made at, id, record) of every complete version, newest first."""
    out: list[tuple[float, str, dict[str, Any]]] = []
    if not layout.versions.is_dir():
        return out
    for entry in layout.versions.iterdir():
        if entry.name.startswith(TMP_PREFIX) or not entry.is_dir():
            continue
        try:
            made = (entry / "deploy.json").stat().st_mtime
        except OSError:
            made = 0.0
        out.append((made, entry.name, read_record(entry)))
    out.sort(key=lambda item: (item[0], item[1]), reverse=True)
    return out


def prune_candidates(layout: Layout, keep: int, current: str | None) -> list[str]:
    """Build versions beyond the newest ``keep``, never the current one nor the one before it."""
    protected = {current, previous_version(layout, current)}
    builds = [vid for _, vid, record in kept_versions(layout) if record.get("source") == "build"]
    return [vid for vid in builds[keep:] if vid not in protected]


def prune(layout: Layout, keep: int) -> list[str]:
    doomed = prune_candidates(layout, keep, current_version(layout))
    for vid in doomed:
        _remove_tree_atomic(layout.versions / vid)
    referenced: set[str] = set()
    for _, vid, _ in kept_versions(layout):
        for member in (layout.versions / vid).iterdir():
            if member.is_symlink():
                referenced.add(Path(os.readlink(member)).name)
    if layout.assets.is_dir():
        for entry in layout.assets.iterdir():
            if layout.is_versioned_name(entry.name) and entry.name not in referenced:
                entry.unlink()
                doomed.append(entry.name)
        _fsync_dir(layout.assets)
    return doomed


# --------------------------------------------------------------------------------------------
# What would change: the public names as they resolve now versus in the target version.


@dataclass(frozen=True)
class Resolved:
    label: str
    sha256: str
    text: str | None


def _text_of(data: bytes) -> str | None:
    if len(data) > 256 * 1024:
        return None
    try:
        return data.decode()
    except UnicodeDecodeError:
        return None


def _resolve_file(path: Path) -> Resolved | None:
    if not path.exists():
        return None
    real = Path(os.path.realpath(path))
    size = real.stat().st_size
    text = _text_of(real.read_bytes()) if size <= 256 * 1024 else None
    return Resolved(real.name, sha256_file(real), text)


def public_view(layout: Layout) -> dict[str, Resolved | None]:
    return {member: _resolve_file(path) for member, path in layout.public().items()}


def version_view(layout: Layout, version_id: str) -> dict[str, Resolved | None]:
    return {member: _resolve_file(layout.versions / version_id / member) for member in layout.public()}


def plan_view(layout: Layout, plan: VersionPlan) -> dict[str, Resolved | None]:
    view: dict[str, Resolved | None] = {}
    for member in layout.public():
        if member in plan.links:
            view[member] = Resolved(Path(plan.links[member]).name, plan.sha256[member], None)
        elif member in plan.files:
            data = plan.files[member]
            blob = data if isinstance(data, bytes) else data.read_bytes()
            view[member] = Resolved(
                member, plan.sha256.get(member, hashlib.sha256(blob).hexdigest()), _text_of(blob)
            )
        else:
            view[member] = None
    return view


def describe_changes(
    layout: Layout,
    before: Mapping[str, Resolved | None],
    after: Mapping[str, Resolved | None],
    diffs: bool = True,
) -> list[str]:
    """One line per public name whose content differs (with a unified diff for text files)."""
    lines: list[str] = []
    for member, public in layout.public().items():
        old, new = before.get(member), after.get(member)
        name = layout.rel(public)
        if (old is None and new is None) or (old and new and old.sha256 == new.sha256):
            continue
        if new is None:
            lines.append(f"  remove   {name}")
        elif old is not None and old.text is not None and new.text is not None:
            lines.append(f"  change   {name}{':' if diffs else ''}")
            if not diffs:
                continue
            diff = difflib.unified_diff(
                old.text.splitlines(), new.text.splitlines(), "now", "after", lineterm="", n=1
            )
            lines.extend(f"             {line}" for line in diff)
        elif old is None:
            lines.append(f"  create   {name}" + ("" if new.text is not None else f" -> {new.label}"))
        else:
            lines.append(f"  switch   {name}: {old.label} -> {new.label}")
    return lines


# --------------------------------------------------------------------------------------------
# The two commands.


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def flavour_name(text: str) -> str:
    if not SAFE_FLAVOUR.match(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a flavour name: use lowercase letters, digits and '-'"
        )
    return text


def planned_settings(sysfs_root: str | None, gpus: str | None, memory: str | None) -> Plan | None:
    """Ask the BAR/MMIO planner (`guestctl plan`, guestinit.host.plan) for this host's Kata settings.

    Same flags, same meaning as `guestctl plan`: --sysfs-root is a tree shaped like / (or its
    sys/), --gpus BDF,...|all, --memory SIZE (bare numbers are MiB)."""
    if sysfs_root is None and gpus is None and memory is None:
        return None
    from guestinit.host import plan as planner  # imported on use: a plain deploy does not need it

    root = sysfs_root or DEFAULT_SYSFS_ROOT
    chosen = None if gpus in (None, "all") else [g for g in (gpus or "").split(",") if g.strip()]
    try:
        memory_bytes = planner.parse_size(memory or DEFAULT_PLAN_MEMORY)
        result = planner.plan(root, chosen, memory_bytes)
        settings = dict(result.kata_settings())
    except UserError as exc:
        raise DeployError(f"planning for {root}: {exc.line()}") from None
    summary = f"--sysfs-root {root} --gpus {gpus or 'all'} --memory {memory or DEFAULT_PLAN_MEMORY}"
    return Plan(_check_plan(settings), summary)


def _check_plan(settings: Mapping[str, object]) -> dict[str, object]:
    kinds = {s.key: s.kind for s in KATA_SETTINGS if s.source == "plan"}
    out: dict[str, object] = {}
    for key, value in settings.items():
        if key not in kinds:
            raise DeployError(
                f"the planner returned Kata key {key!r}, which deploy does not write: update deploy's table"
            )
        if key == "kernel_params" and isinstance(value, (list, tuple)):
            value = " ".join(str(v) for v in value)
        if not isinstance(value, kinds[key]) or (kinds[key] is int and isinstance(value, bool)):
            raise DeployError(f"the planner returned {key}={value!r}, not a {kinds[key].__name__}")
        out[key] = value
    return out


def run_deploy(args: argparse.Namespace) -> list[str]:
    layout = Layout(args.prefix.absolute(), args.flavour)
    manifest = load_manifest(args.manifest)
    for artifact in (manifest.kernel, manifest.rootfs):
        verify_artifact(artifact)
    plan = planned_settings(args.sysfs_root, args.gpus, args.memory)
    new = build_version(layout, manifest, plan)
    lines = [
        f"{'would deploy' if args.dry_run else 'deploying'} {manifest.image} {manifest.version} "
        f"(profile {manifest.profile}, kernel {manifest.kernel_version}) "
        f"to {layout.prefix} as {layout.handler}",
        f"  verify   {manifest.kernel.name} ({_size(manifest.kernel.size)}), "
        f"{manifest.rootfs.name} ({_size(manifest.rootfs.size)}): sha256 as in {manifest.path}",
    ]
    installs = [
        (artifact, layout.assets / layout.versioned_name(artifact.kind, manifest.version))
        for artifact in (manifest.kernel, manifest.rootfs)
    ]
    if args.dry_run:
        for artifact, dest in installs:
            if not dest.exists():
                lines.append(f"  install  {layout.rel(dest)} ({_size(artifact.size)})")
        foreign = [layout.rel(layout.public()[m]) for m, k in classify(layout).items() if k == "foreign"]
        if foreign:
            lines.append(f"  adopt    {', '.join(foreign)}: kept as a snapshot version for rollback")
        exists = (layout.versions / new.id).is_dir()
        lines.append(f"  version  {new.id} ({'kept already' if exists else 'new'})")
        changes = describe_changes(layout, public_view(layout), plan_view(layout, new))
        lines.extend(changes or ["  nothing changes: this version is current"])
        current = current_version(layout)
        if current and current != new.id:
            lines.append(f"  previous {current} (kept for `guestctl rollback`)")
        lines.append("nothing was written (--dry-run)")
        return lines
    with locked(layout):
        remove_leftovers(layout)
        adopt(layout)
        for artifact, dest in installs:
            make_dirs(dest.parent)
            if dest.exists():
                if sha256_file(dest) != artifact.sha256:
                    raise DeployError(
                        f"{dest}: already installed with other content for version {manifest.version}: "
                        "rebuild (a new version) or remove that file"
                    )
            else:
                write_atomic(dest, artifact.path, artifact.sha256)
                lines.append(f"  install  {layout.rel(dest)}")
        if not (layout.versions / new.id).exists():
            create_version(layout, new)
        elif not version_matches(layout, new):  # its name is a hash of its content: it was edited
            if new.id == current_version(layout):
                raise DeployError(
                    f"{layout.versions / new.id}: the current version was modified by hand: "
                    "roll back to another (`guestctl rollback --list`), then deploy again"
                )
            _remove_tree_atomic(layout.versions / new.id)
            create_version(layout, new)
        link_public(layout, new.members())
        before = version_view(layout, current_version(layout) or new.id)
        old = switch(layout, new.id, "deploy")
        tidy(layout)
        lines.extend(
            describe_changes(layout, before if old else {}, version_view(layout, new.id), diffs=False)
        )
        pruned = prune(layout, args.keep)
    if old == new.id:
        lines.append(f"  {new.id} was already current: nothing switched")
    else:
        lines.append(
            f"deployed {new.id}; previous: {old} (`guestctl rollback` restores it)"
            if old
            else f"deployed {new.id}: the first version here, nothing to roll back to"
        )
    lines.extend(f"  pruned   {name}" for name in pruned)
    return lines


def list_versions(layout: Layout) -> list[str]:
    current = current_version(layout)
    previous = previous_version(layout, current)
    lines = [f"versions of {layout.handler} under {layout.versions}:"]
    for made, vid, record in kept_versions(layout):
        mark = " (current)" if vid == current else " (previous)" if vid == previous else ""
        when = dt.datetime.fromtimestamp(made, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        lines.append(f"  {vid:<48} {when}  {record.get('source', '?')}{mark}")
    if len(lines) == 1:
        lines.append("  none: nothing was deployed here")
    return lines


def run_rollback(args: argparse.Namespace) -> list[str]:
    layout = Layout(args.prefix.absolute(), args.flavour)
    if args.list:
        return list_versions(layout)
    current = current_version(layout)
    target = args.to or previous_version(layout, current)
    if target is None:
        raise DeployError(
            f"{layout.state}: no previous version to roll back to: see `guestctl rollback --list`"
        )
    if not SAFE_VERSION.match(target) or not (layout.versions / target).is_dir():
        raise DeployError(
            f"version {target!r} is not kept under {layout.versions}: see `guestctl rollback --list`"
        )
    foreign = "foreign" in classify(layout).values()
    if target == current and not foreign:
        raise DeployError(f"{target} is already current: name another with --to (see --list)")
    verify_version(layout, target)
    lines = [
        f"{'would roll back' if args.dry_run else 'rolling back'} {layout.handler} "
        f"to {target} (now: {current})"
    ]
    if args.dry_run:
        lines.extend(describe_changes(layout, public_view(layout), version_view(layout, target)))
        lines.append("nothing was written (--dry-run)")
        return lines
    with locked(layout):
        remove_leftovers(layout)
        adopt(layout)
        before = public_view(layout)
        link_public(layout, {m for m in layout.public() if os.path.lexists(layout.versions / target / m)})
        old = switch(layout, target, "rollback")
        tidy(layout)
        lines.extend(describe_changes(layout, before, public_view(layout), diffs=False))
    lines.append(f"rolled back to {target}; `guestctl rollback` again returns to {old}")
    return lines


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--prefix", type=Path, default=DEFAULT_PREFIX, help="Kata install prefix (default /opt/kata)"
    )
    parser.add_argument(
        "--flavour",
        type=flavour_name,
        default=DEFAULT_FLAVOUR,
        help="Kata flavour: names and handler kata-qemu-FLAVOUR",
    )
    parser.add_argument("--dry-run", action="store_true", help="print what would change; write nothing")


def deploy_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="guestctl deploy",
        description="Install a built guest into a Kata prefix atomically, keeping the previous version.",
    )
    parser.add_argument(
        "--manifest", type=Path, default=DEFAULT_MANIFEST, help="build manifest (build/kata/manifest.json)"
    )
    _common(parser)
    parser.add_argument(
        "--keep", type=int, default=DEFAULT_KEEP, help="build versions to keep (default 3, at least 1)"
    )
    parser.add_argument(
        "--sysfs-root",
        help="size the Kata settings with `guestctl plan` for the host whose tree (shaped like /) is here",
    )
    parser.add_argument("--gpus", help="for the planner: BDF,... of the devices to pass through, or all")
    parser.add_argument("--memory", help="for the planner: guest RAM, e.g. 64G (bare numbers are MiB)")
    return parser


def rollback_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="guestctl rollback",
        description="Switch a Kata prefix back to the version before the current one, byte for byte.",
    )
    _common(parser)
    parser.add_argument("--to", metavar="ID", help="a kept version to switch to (see --list)")
    parser.add_argument("--list", action="store_true", help="list kept versions")
    return parser


def _main(parser: argparse.ArgumentParser, runner: Any, argv: Sequence[str]) -> int:
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exc:  # --help, or a usage error argparse already printed
        code: object = exc.code
        return code if isinstance(code, int) else 2
    if getattr(args, "keep", 1) < 1:
        print(f"{parser.prog}: --keep {args.keep}: keep at least 1 version", file=sys.stderr)
        return 2
    try:
        lines = runner(args)
    except UserError as exc:
        print(f"{parser.prog}: {exc.line()}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        where = exc.filename or args.prefix
        print(
            f"{parser.prog}: {where}: {exc.strerror}: check the path and permissions (root for /opt/kata)",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print(
            f"{parser.prog}: interrupted: run it again to finish (nothing half-written is used)",
            file=sys.stderr,
        )
        return 130
    try:
        print("\n".join(lines))
    except BrokenPipeError:  # `| head`: the work is done, the reader left
        sys.stderr.close()
    return 0


def deploy_main(argv: list[str]) -> int:
    return _main(deploy_parser(), run_deploy, argv)


def rollback_main(argv: list[str]) -> int:
    return _main(rollback_parser(), run_rollback, argv)


if __name__ == "__main__":
    commands = {"deploy": deploy_main, "rollback": rollback_main}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        print("usage: python -m guestinit.host.deploy deploy|rollback [options]", file=sys.stderr)
        sys.exit(2)
    sys.exit(commands[sys.argv[1]](sys.argv[2:]))
