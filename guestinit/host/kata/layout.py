"""Where a Kata flavour's files live under an install prefix: the names Kata and guestinit use.

Kata finds its guest through names under the install prefix (references §2). For one flavour F
(handler ``kata-qemu-F``) guestinit manages:

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
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

SAFE_FLAVOUR = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,40}[a-z0-9])?$")


@dataclass(frozen=True)
class Layout:
    """The paths and names of one flavour under one install prefix."""

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
