"""One version directory under share/guestinit/F/versions: what it holds, making it, checking it.

A version is filled under a temporary name and renamed into place whole; its deploy.json records
the sha256 of every member, so a rollback can check it is restored byte for byte.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from guestinit.host.atomicfs import TMP_PREFIX, create_file, fsync_dir, sha256_file
from guestinit.host.build.manifest import BuildManifest
from guestinit.host.errors import DeployError
from guestinit.host.kata.layout import Layout
from guestinit.host.kata.render import render_containerd, render_kata_config, render_runtimeclass
from guestinit.host.kata.settings import Plan


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


def utc_stamp() -> str:
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
    base = f"snapshot-{utc_stamp()}"
    version_id, n = base, 1
    while (layout.versions / version_id).exists():
        n += 1
        version_id = f"{base}-{n}"
    plan = VersionPlan(version_id, {"id": version_id, "source": "snapshot", "taken": utc_stamp()})
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
        digest = create_file(tmp / name, data)
        if plan.sha256.get(name, digest) != digest:
            shutil.rmtree(tmp)
            raise DeployError(
                f"{data if isinstance(data, Path) else name}: changed while it was copied: run again"
            )
    for name, target in sorted(plan.links.items()):
        os.symlink(target, tmp / name)
    create_file(tmp / "deploy.json", (json.dumps(plan.record, indent=2, sort_keys=True) + "\n").encode())
    fsync_dir(tmp)
    os.rename(tmp, final)
    fsync_dir(layout.versions)


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
