"""What `guestctl boot` boots: the form of an image (an initrd, or a root disk the kernel mounts
itself), the image built last, the kernel beside it, and extra initrds appended in the image's
own compression."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

from guestinit.host import streams
from guestinit.host.errors import UserError

DEFAULT_IMAGE = Path("build/kata/guestinit-kata.cpio.lz4")
# What an image file's name ends with; the kernel beside it is the name without it + .vmlinuz
INITRD_SUFFIXES = (".cpio.lz4", ".cpio.zst", ".cpio.gz", ".cpio", ".initrd", ".img")
# What Kata's runtime adds to the command line for a rootfs image (rootfs_type = "erofs", the
# image on virtio-blk as disable_image_nvdimm = true attaches it): root on the disk's first
# partition, read-only, and systemd's target and masks, which guestinit takes in its stride.
KATA_IMAGE_APPEND = (
    "root=/dev/vda1 rootflags=ro rootfstype=erofs systemd.unit=kata-containers.target "
    "systemd.mask=systemd-networkd.service systemd.mask=systemd-networkd.socket"
)
CPIO_MAGIC = b"070701"
# The other compressions Debian's kernel unpacks an initrd from (RD_*) that streams.py does not
# name: lzma, lzo
OTHER_INITRD_MAGICS = (b"\x5d\x00\x00", b"\x89LZO")


def image_form(image: Path) -> str:
    """ "initrd" (a cpio, plain or compressed) or "image" (a disk with a partition table)."""
    with open(image, "rb") as f:
        head = f.read(512)
    if head.startswith((CPIO_MAGIC, *OTHER_INITRD_MAGICS)) or streams.compression(head) != "plain":
        return "initrd"
    if len(head) == 512 and head[510:] == b"\x55\xaa":
        return "image"
    raise UserError(
        f"{image} is neither an initrd (newc cpio, plain or compressed) nor a disk image",
        hint="give what `guestctl build` wrote (build/kata/)",
    )


def default_image(root: Path | None = None) -> Path:
    """The rootfs of the Kata image form built last (`guestctl build kata [--format erofs]`)."""
    from guestinit.host.build.images import last_build, repo_root

    try:
        base = root or repo_root()
    except UserError:
        return DEFAULT_IMAGE
    folder = last_build(base)
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        artifacts = json.loads((folder / "manifest.json").read_text())["artifacts"]
        for artifact in artifacts:
            if artifact["kind"] in ("initrd", "image"):
                return folder / str(artifact["name"])
    return folder / DEFAULT_IMAGE.name


def stem(image: Path) -> str:
    """The image's name without its kind's suffix: the name of the files beside it (.vmlinuz, .kver)."""
    name = image.name
    for suffix in INITRD_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def resolve_kernel(image: Path, kernel: Path | None) -> Path:
    if kernel is not None:
        if not kernel.is_file():
            raise UserError(f"kernel {kernel} not found", hint="pass an existing --kernel file")
        return kernel
    candidate = image.with_name(stem(image) + ".vmlinuz")
    if not candidate.is_file():
        raise UserError(f"no kernel beside {image} (looked for {candidate.name})", hint="pass --kernel")
    return candidate


def combine_initrd(image: Path, extras: list[Path], out: Path) -> Path:
    """Append extra cpio archives to the image, each in the image's own form. The kernel's zstd
    and lz4 readers take whatever follows an image of theirs as more frames (lz4's legacy frames
    have no end mark), so after such an image every extra is compressed the same way; after a
    plain image, compressed extras are decompressed, so the initrd stays one copy the kernel
    reads without a decoder. ``out`` appears whole or not at all."""
    if not extras:
        return image
    with open(image, "rb") as f:
        image_kind = streams.compression(f.read(8))
    target = image_kind if image_kind in streams.PROGRAMS else "plain"
    tmp = out.with_name(out.name + ".tmp")
    try:
        with open(tmp, "wb") as dst:
            with open(image, "rb") as src:
                shutil.copyfileobj(src, dst)
            for extra in extras:
                dst.write(_extra_as(extra, target))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _extra_as(extra: Path, target: str) -> bytes:
    """The extra initrd's bytes in the ``target`` compression ('plain', 'zstd' or 'lz4')."""
    hint = "create it with `cpio -o -H newc` (optionally compressed with zstd, lz4 -l, gzip or xz)"
    if not extra.is_file():
        raise UserError(f"extra initrd {extra} not found", hint="pass an existing cpio archive")
    raw = extra.read_bytes()
    kind = streams.compression(raw[:8])
    try:
        data = raw if kind == "plain" else streams.read_all(extra)
        if not data.startswith(CPIO_MAGIC):
            raise UserError(f"extra initrd {extra} is not a newc cpio (plain or compressed)", hint=hint)
        if kind == target:
            return raw
        return data if target == "plain" else streams.compress(data, target)
    except streams.StreamError as exc:
        raise UserError(f"extra initrd {extra}: {exc}", hint=hint) from None
