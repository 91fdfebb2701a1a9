"""Fuzz target: agentsource's partition-table reader (a Kata guest disk image: MBR or GPT) on
arbitrary bytes. It may refuse (TreeError) but never raise anything else or point past the file."""

from __future__ import annotations

import os
import struct
import tempfile
from pathlib import Path

from guestinit.host.agentsource import disk
from guestinit.host.agentsource.trees import TreeError

SECTOR = 512


def mbr_image(start_sector: int = 8, sectors: int = 8, fs: bytes = b"\x53\xef") -> bytes:
    mbr = bytearray(SECTOR)
    mbr[446:462] = bytes([0, 0, 0, 0, 0x83, 0, 0, 0]) + struct.pack("<II", start_sector, sectors)
    mbr[510:512] = b"\x55\xaa"
    image = bytearray(mbr) + bytearray((start_sector + sectors) * SECTOR - SECTOR)
    at = start_sector * SECTOR + 1080
    image[at : at + len(fs)] = fs
    return bytes(image)


def gpt_image() -> bytes:
    image = bytearray(40 * SECTOR)
    image[446:462] = bytes([0, 0, 0, 0, 0xEE, 0, 0, 0]) + struct.pack("<II", 1, 39)
    image[510:512] = b"\x55\xaa"
    header = b"EFI PART" + bytes(64) + struct.pack("<QII", 2, 4, 128)
    image[SECTOR : SECTOR + len(header)] = header
    entry = b"\x11" * 16 + bytes(16) + struct.pack("<QQ", 34, 39)
    image[2 * SECTOR : 2 * SECTOR + len(entry)] = entry
    image[34 * SECTOR + 1024 : 34 * SECTOR + 1028] = struct.pack("<I", 0xE0F5E1E2)
    return bytes(image)


SEEDS: list[bytes] = [mbr_image(), gpt_image(), mbr_image(fs=b"")]


def TestOneInput(data: bytes) -> None:
    fd, name = tempfile.mkstemp(prefix="fuzz-disk-")
    try:
        os.write(fd, data)
        os.close(fd)
        try:
            offset, fs, size = disk.data_partition(Path(name))
        except TreeError:
            return
        assert fs in ("ext4", "erofs")
        assert offset >= 0 and offset + size <= len(data)
    finally:
        os.unlink(name)
