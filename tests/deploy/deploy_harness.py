"""Builds, prefixes and observations for the deploy tests (no code under test is used here).

A "build" is what `guestctl build` leaves in build/<image>/: random kernel and initrd files and a
manifest.json of the documented shape. An "upstream" prefix is what kata-deploy installs: the
Kata names as symlinks to versioned files and a regular configuration file. ``observe`` reads a
prefix the way Kata and containerd do (through every link) and knows nothing of deploy's layout
beyond the public names of references §2.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

FLAVOUR = "nvidia-gpu"
PUBLIC = {
    "initrd": f"share/kata-containers/kata-containers-initrd-{FLAVOUR}.img",
    "image": f"share/kata-containers/kata-containers-{FLAVOUR}.img",
    "kernel": f"share/kata-containers/vmlinuz-{FLAVOUR}.container",
    "config": f"share/defaults/kata-containers/configuration-qemu-{FLAVOUR}.toml",
    "containerd": f"containerd/config.d/kata-qemu-{FLAVOUR}.toml",
}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_build(
    where: Path,
    version: str,
    *,
    initrd_size: int = 300_000,
    kernel_size: int = 100_000,
    kind: str = "initrd",
    agent: str | None = "3.99.0",
) -> Path:
    """A build directory with a kernel, an initrd (or image) and manifest.json; returns the manifest."""
    where.mkdir(parents=True, exist_ok=True)
    rootfs_name = "guestinit-kata.cpio.lz4" if kind == "initrd" else "guestinit-kata.erofs"
    files = {rootfs_name: (kind, initrd_size), "guestinit-kata.vmlinuz": ("kernel", kernel_size)}
    artifacts = []
    for name, (art_kind, size) in files.items():
        data = os.urandom(size)
        (where / name).write_bytes(data)
        artifacts.append({"name": name, "kind": art_kind, "sha256": sha(data), "size": len(data)})
    manifest = {
        "image": "kata",
        "profile": "default",
        "version": version,
        "built": "2026-11-26T16:10:00+00:00",
        "kernel_version": "6.12.118+deb13-cloud-amd64",
        "artifacts": artifacts,
        "packages": {"python3-minimal": "3.13.5-1"},
    }
    if agent is not None:
        manifest["kata_agent"] = {
            "version": agent,
            "sha256": sha(agent.encode()),
            "source": {
                "given": "kata-static-3.99.0-amd64.tar.zst",
                "kind": "tarball",
                "member": "./opt/kata/share/kata-containers/kata-ubuntu-noble.image!/usr/bin/kata-agent",
            },
            "linking": {"type": "static", "interpreter": None, "needed": []},
        }
    path = where / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def make_upstream(prefix: Path) -> dict[str, bytes | None]:
    """A kata-deploy install of the nvidia-gpu flavour; returns what its public names hold."""
    assets = prefix / "share" / "kata-containers"
    defaults = prefix / "share" / "defaults" / "kata-containers"
    assets.mkdir(parents=True, exist_ok=True)
    defaults.mkdir(parents=True, exist_ok=True)
    (assets / "kata-ubuntu-noble-nvidia-gpu.initrd").write_bytes(b"upstream initrd\n" * 1000)
    (assets / "vmlinuz-6.12.47-166-nvidia-gpu").write_bytes(b"upstream kernel\n" * 500)
    os.symlink("kata-ubuntu-noble-nvidia-gpu.initrd", assets / f"kata-containers-initrd-{FLAVOUR}.img")
    os.symlink("vmlinuz-6.12.47-166-nvidia-gpu", assets / f"vmlinuz-{FLAVOUR}.container")
    (defaults / f"configuration-qemu-{FLAVOUR}.toml").write_text(
        '[hypervisor.qemu]\npath = "/opt/kata/bin/qemu-system-x86_64"\n'
        'kernel = "/opt/kata/share/kata-containers/vmlinuz-nvidia-gpu.container"\n'
        'initrd = "/opt/kata/share/kata-containers/kata-containers-initrd-nvidia-gpu.img"\n'
    )
    return observe(prefix)


def observe(prefix: Path) -> dict[str, bytes | None]:
    """What each public name resolves to (None: absent or dangling)."""
    out: dict[str, bytes | None] = {}
    for key, rel in PUBLIC.items():
        path = prefix / rel
        out[key] = path.read_bytes() if path.exists() else None
    return out


def digest_state(state: dict[str, bytes | None]) -> dict[str, str | None]:
    return {key: (sha(value) if value is not None else None) for key, value in state.items()}


def tree(prefix: Path) -> dict[str, str]:
    """Every entry under prefix: file digests, link targets, directories (for 'nothing changed')."""
    out: dict[str, str] = {}
    for root, dirs, files in os.walk(prefix):
        for name in dirs + files:
            path = Path(root) / name
            rel = os.fspath(path.relative_to(prefix))
            if path.is_symlink():
                out[rel] = "-> " + os.readlink(path)
            elif path.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = sha(path.read_bytes())
    return out


def copy_prefix(src: Path, dest: Path) -> None:
    shutil.copytree(src, dest, symlinks=True)
