"""The build manifest, build/<image>/manifest.json: written by `guestctl build` (what was built,
from what, with which kata-agent), read by `guestctl deploy` and `guestctl boot` with every
field and artifact checked."""

from __future__ import annotations

import contextlib
import datetime
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from guestinit import __version__
from guestinit.atomicfile import write_atomic
from guestinit.host.atomicfs import sha256_file
from guestinit.host.errors import DeployError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from guestinit.host.build.images import Target

SAFE_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
ROOTFS_KINDS = ("initrd", "image")


@dataclass(frozen=True)
class Artifact:
    name: str
    kind: str
    sha256: str
    size: int
    path: Path


@dataclass(frozen=True)
class AgentRecord:
    """The kata-agent inside the image, as `guestctl build` recorded it."""

    version: str
    sha256: str
    source: str
    linking: str


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
    agent: AgentRecord | None  # None: the image carries no kata-agent


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
    agent = _agent(doc.get("kata_agent"), path)
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
        agent=agent,
    )


def _agent(entry: object, where: Path) -> AgentRecord | None:
    if entry is None:
        return None
    if not isinstance(entry, dict):
        raise DeployError(f"{where}: 'kata_agent' is not an object: rebuild with `guestctl build`")
    sha = _field(entry, "sha256", where)
    if not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise DeployError(f"{where}: kata_agent sha256 {sha[:80]!r} is not 64 hex digits: rebuild")
    source, linking = entry.get("source"), entry.get("linking")
    if isinstance(source, dict):  # {given, kind, container, member, ...}
        member = source.get("member")
        source = f"{source.get('given', '?')}" + (f" ({member})" if member else "")
    if isinstance(linking, dict):  # {type, interpreter, needed}
        needed = linking.get("needed") or []
        linking = f"{linking.get('type', '?')}" + (f": {', '.join(map(str, needed))}" if needed else "")
    return AgentRecord(
        version=_field(entry, "version", where),
        sha256=sha,
        source=str(source or ""),
        linking=str(linking or ""),
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


# ------------------------------------------------------------------ writing (guestctl build)


def _artifacts(out: Path, image_id: str) -> list[dict[str, object]]:
    kinds = {
        ".cpio": "initrd",
        ".cpio.zst": "initrd",
        ".cpio.lz4": "initrd",
        ".img": "image",
        ".vmlinuz": "kernel",
    }
    artifacts = []
    for path in sorted(out.iterdir()):
        if path.is_symlink() or not path.is_file() or not path.name.startswith(image_id):
            continue
        kind = next((k for suffix, k in kinds.items() if path.name.endswith(suffix)), None)
        if kind is None:
            continue
        artifacts.append(
            {"name": path.name, "kind": kind, "sha256": sha256_file(path), "size": path.stat().st_size}
        )
    return artifacts


def _packages(out: Path, image_id: str) -> dict[str, str]:
    manifest = out / f"{image_id}.manifest"
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(manifest.read_text())
        return {p["name"]: p["version"] for p in data.get("packages", []) if "name" in p}
    return {}


def write_manifest(
    out: Path,
    build: Target,
    digest: str,
    seconds: float,
    epoch: int,
    agent: dict[str, object] | None = None,
) -> Path:
    """manifest.json: what was built from what. Everything but build_seconds follows from the
    inputs: the version is the guestinit release, the inputs' date (SOURCE_DATE_EPOCH) and
    their digest, so two builds of the same inputs name the same version."""
    spec = build.spec
    kver_file = out / f"{spec.image_id}.kver"
    when = datetime.datetime.fromtimestamp(epoch, datetime.UTC)
    manifest = {
        "image": spec.name,
        "profile": build.profile,
        "form": build.form,
        "version": f"{__version__}-{when.strftime('%Y%m%d%H%M%S')}-{digest[:8]}",
        "built": when.isoformat(timespec="seconds"),
        "source_date_epoch": epoch,
        "build_seconds": round(seconds, 1),
        "input_digest": digest,
        "kernel_version": kver_file.read_text().strip() if kver_file.is_file() else "",
        "artifacts": _artifacts(out, spec.image_id),
        "packages": _packages(out, spec.image_id),
    }
    if agent is not None:
        manifest["kata_agent"] = agent
    path = out / "manifest.json"
    write_atomic(path, json.dumps(manifest, indent=2) + "\n")
    return path


def up_to_date(out: Path, digest: str) -> bool:
    with contextlib.suppress(OSError, ValueError):
        data = json.loads((out / "manifest.json").read_text())
        if data.get("input_digest") != digest:
            return False
        return all(
            (out / a["name"]).is_file() and (out / a["name"]).stat().st_size == a["size"]
            for a in data["artifacts"]
        )
    return False
