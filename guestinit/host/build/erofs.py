"""Kata's rootfs-image form: the image tree as an erofs filesystem (lz4hc) in the one partition
of an MBR disk image, as Kata's own image builder lays it out, for
``root=/dev/vda1 rootflags=ro rootfstype=erofs``.

Both steps are reproducible: mkfs.erofs gets fixed timestamps (-T SOURCE_DATE_EPOCH) and a
UUID derived from the inputs' digest, and the partition table is written here with a disk
signature from the same digest.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import uuid
from pathlib import Path

from guestinit.host.errors import UserError

SECTOR = 512
FIRST_LBA = 2048  # 1 MiB, where partitioning tools start the first partition
ALIGN = 1 << 20  # the disk ends on a MiB boundary too
LINUX = 0x83


def mbr(signature: int, start: int, sectors: int) -> bytes:
    """A 512-byte MBR with one Linux partition (CHS fields set to the LBA-only marker)."""
    entry = struct.pack("<B3sB3sII", 0x00, b"\xfe\xff\xff", LINUX, b"\xfe\xff\xff", start, sectors)
    return bytes(440) + struct.pack("<IH", signature, 0) + entry + bytes(48) + b"\x55\xaa"


def pack(tree: Path, image: Path, epoch: int, digest: str) -> Path:
    """Write ``image`` (a disk) from the folder ``tree``; returns it. ``digest`` (hex) seeds the
    filesystem UUID and the disk signature."""
    mkfs = shutil.which("mkfs.erofs")
    if mkfs is None:
        raise UserError("mkfs.erofs not found", hint="apt-get install erofs-utils (or run make setup)")
    fs = image.with_name(image.name + ".erofs.tmp")
    fs_uuid = uuid.UUID(digest[:32])
    argv = [mkfs, "-zlz4hc", f"-T{epoch}", f"-U{fs_uuid}", "--quiet", os.fspath(fs), os.fspath(tree)]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        fs.unlink(missing_ok=True)
        detail = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise UserError(
            f"mkfs.erofs failed on {tree}: {detail}", hint="see erofs-utils' message", exit_code=1
        )
    size = fs.stat().st_size
    sectors = -(-size // SECTOR)
    total = -(-(FIRST_LBA * SECTOR + sectors * SECTOR) // ALIGN) * ALIGN
    tmp = image.with_name(image.name + ".tmp")
    with open(tmp, "wb") as out:
        out.write(mbr(int(digest[32:40], 16), FIRST_LBA, sectors))
        out.seek(FIRST_LBA * SECTOR)
        with open(fs, "rb") as src:
            shutil.copyfileobj(src, out, 1 << 20)
        out.truncate(total)
    fs.unlink()
    os.replace(tmp, image)
    return image


def partition(image: Path) -> tuple[int, int]:
    """(offset, length) in bytes of the first partition of an MBR disk image."""
    with open(image, "rb") as f:
        head = f.read(SECTOR)
    if len(head) < SECTOR or head[510:512] != b"\x55\xaa":
        raise UserError(
            f"{image}: no MBR partition table", hint="give a disk image `guestctl build --format erofs` made"
        )
    _boot, _chs, _kind, _chs2, start, sectors = struct.unpack("<B3sB3sII", head[446:462])
    if sectors == 0:
        raise UserError(f"{image}: the first partition is empty", hint="rebuild the image")
    return start * SECTOR, sectors * SECTOR
