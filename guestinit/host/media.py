"""What `guestctl boot` boots: the form of an image (an initrd, or a root disk the kernel mounts
itself), the image built last, the kernel beside it, and extra initrds appended in the image's
own compression."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from pathlib import Path

from guestinit.host.errors import UserError

DEFAULT_IMAGE = Path("build/kata/guestinit-kata.cpio")
# What Kata's runtime adds to the command line for a rootfs image (rootfs_type = "erofs", the
# image on virtio-blk as disable_image_nvdimm = true attaches it): root on the disk's first
# partition, read-only, and systemd's target and masks, which guestinit takes in its stride.
KATA_IMAGE_APPEND = (
    "root=/dev/vda1 rootflags=ro rootfstype=erofs systemd.unit=kata-containers.target "
    "systemd.mask=systemd-networkd.service systemd.mask=systemd-networkd.socket"
)
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
CPIO_MAGIC = b"070701"
GZIP_MAGIC = b"\x1f\x8b"
# The other compressions Debian's kernel unpacks an initrd from (RD_*): lz4 (legacy frames,
# `lz4 -l`), xz, lzma, bzip2, lzo
OTHER_INITRD_MAGICS = (b"\x02\x21\x4c\x18", b"\xfd7zXZ\x00", b"\x5d\x00\x00", b"BZh", b"\x89LZO")


def image_form(image: Path) -> str:
    """ "initrd" (a cpio, plain or compressed) or "image" (a disk with a partition table)."""
    with open(image, "rb") as f:
        head = f.read(512)
    if head.startswith((CPIO_MAGIC, ZSTD_MAGIC, GZIP_MAGIC, *OTHER_INITRD_MAGICS)):
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


def resolve_kernel(image: Path, kernel: Path | None) -> Path:
    if kernel is not None:
        if not kernel.is_file():
            raise UserError(f"kernel {kernel} not found", hint="pass an existing --kernel file")
        return kernel
    name = image.name
    for suffix in (".cpio.zst", ".cpio.gz", ".cpio", ".initrd", ".img"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    candidate = image.with_name(name + ".vmlinuz")
    if not candidate.is_file():
        raise UserError(f"no kernel beside {image} (looked for {candidate.name})", hint="pass --kernel")
    return candidate


def combine_initrd(image: Path, extras: list[Path], out: Path) -> Path:
    """Append extra cpio archives to the image, each in the image's own form: the kernel
    cannot find a plain cpio after a zstd image (its zstd reader takes the rest as more
    frames), so plain extras are compressed after a zstd image; after a plain image, zstd
    extras are decompressed, so the initrd stays one copy the kernel reads without a decoder."""
    if not extras:
        return image
    with open(image, "rb") as f:
        image_zstd = f.read(4) == ZSTD_MAGIC
    with open(out, "wb") as dst:
        with open(image, "rb") as src:
            shutil.copyfileobj(src, dst)
        for extra in extras:
            if not extra.is_file():
                raise UserError(f"extra initrd {extra} not found", hint="pass an existing cpio archive")
            with open(extra, "rb") as f:
                magic = f.read(6)
            extra_zstd = magic[:4] == ZSTD_MAGIC
            if not extra_zstd and not magic.startswith(CPIO_MAGIC):
                raise UserError(
                    f"extra initrd {extra} is neither a newc cpio nor zstd-compressed",
                    hint="create it with `cpio -o -H newc` (optionally zstd-compressed)",
                )
            if extra_zstd == image_zstd:
                with open(extra, "rb") as src:
                    shutil.copyfileobj(src, dst)
            else:
                dst.write(_zstd(extra, decompress=extra_zstd))
    return out


def _zstd(path: Path, decompress: bool) -> bytes:
    argv = ["zstd", "-q", "-c", *(["-d"] if decompress else []), os.fspath(path)]
    try:
        proc = subprocess.run(argv, capture_output=True, check=False)
    except FileNotFoundError:
        raise UserError("zstd not found", hint="apt-get install zstd (or run make setup)") from None
    if proc.returncode != 0:
        what = "decompress" if decompress else "compress"
        detail = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
        raise UserError(
            f"zstd could not {what} extra initrd {path}: {detail[0]}",
            hint="pass a newc cpio or a whole zstd-compressed one",
        )
    return proc.stdout
