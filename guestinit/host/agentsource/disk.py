"""A Kata guest disk image, read without mounting: its partition table (MBR or GPT), the one
partition holding an ext4 or erofs filesystem, and that filesystem's files.

Kata's image builder writes an MBR with one partition (1 MiB in; 3 MiB behind a DAX header),
and a measured rootfs adds a dm-verity hash partition without a superblock: so the partition to
read is the one, and only one, that holds a filesystem. ext4 is read with debugfs (e2fsprogs)
at the partition's offset; erofs is extracted whole with ``fsck.erofs --extract`` (erofs-utils
1.5 has neither single-file extraction nor an offset option), after copying the partition out."""

from __future__ import annotations

import re
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from guestinit.host.agentsource.trees import DirTree, Entry, TreeError, Unreadable
from guestinit.host.streams import copy_range, program

SECTOR = 512
EXT_MAGIC_AT, EXT_MAGIC = 1024 + 56, b"\x53\xef"
EROFS_MAGIC_AT, EROFS_MAGIC = 1024, struct.pack("<I", 0xE0F5E1E2)
MBR_EXTENDED = {0x05, 0x0F, 0x85}
MBR_PROTECTIVE = 0xEE
MAX_GPT_ENTRIES = 1024


@dataclass(frozen=True)
class Partition:
    number: int
    start: int  # bytes
    size: int  # bytes
    fs: str | None  # "ext4", "erofs" or None


def fs_at(image: Path, offset: int) -> str | None:
    with open(image, "rb") as f:
        f.seek(offset + EXT_MAGIC_AT)
        if f.read(2) == EXT_MAGIC:
            return "ext4"
        f.seek(offset + EROFS_MAGIC_AT)
        if f.read(4) == EROFS_MAGIC:
            return "erofs"
    return None


def fs_in_head(head: bytes) -> str | None:
    """The filesystem whose superblock starts a file (from its first 4 KiB), if any."""
    if head[EXT_MAGIC_AT : EXT_MAGIC_AT + 2] == EXT_MAGIC:
        return "ext4"
    if head[EROFS_MAGIC_AT : EROFS_MAGIC_AT + 4] == EROFS_MAGIC:
        return "erofs"
    return None


def has_partition_table(head: bytes) -> bool:
    return len(head) >= SECTOR and head[510:512] == b"\x55\xaa"


def partitions(image: Path) -> list[Partition]:
    """The partitions of an MBR or GPT disk image ([] when it has no partition table)."""
    size = image.stat().st_size
    with open(image, "rb") as f:
        mbr = f.read(SECTOR)
        if not has_partition_table(mbr):
            return []
        raw: list[tuple[int, int, int]] = []
        entries = [mbr[446 + 16 * i : 462 + 16 * i] for i in range(4)]
        if any(e[4] == MBR_PROTECTIVE for e in entries):
            raw = _gpt(f, size)
        else:
            for i, e in enumerate(entries, 1):
                kind = e[4]
                first, count = struct.unpack_from("<II", e, 8)
                if kind and kind not in MBR_EXTENDED and count:
                    raw.append((i, first * SECTOR, count * SECTOR))
    found = []
    for number, start, length in raw:
        if start + length > size:
            past = start + length - size
            raise TreeError(f"truncated image: partition {number} ends {past} bytes past the end of the file")
        found.append(Partition(number, start, length, fs_at(image, start)))
    return found


def _gpt(fh: BinaryIO, size: int) -> list[tuple[int, int, int]]:
    for sector in (SECTOR, 4096):
        fh.seek(sector)
        header = fh.read(92)
        if header[:8] == b"EFI PART" and len(header) == 92:
            break
    else:
        raise TreeError("protective MBR without a GPT header")
    entries_lba, count, entry_size = struct.unpack_from("<QII", header, 72)
    if count > MAX_GPT_ENTRIES or entry_size < 128 or entry_size > 4096 or entries_lba * sector >= size:
        raise TreeError("corrupt GPT header")
    fh.seek(entries_lba * sector)
    table = fh.read(count * entry_size)
    if len(table) < count * entry_size:
        raise TreeError("truncated image (the GPT partition entries run past the end)")
    raw = []
    for i in range(count):
        e = table[i * entry_size : (i + 1) * entry_size]
        if e[:16] == bytes(16):
            continue
        first, last = struct.unpack_from("<QQ", e, 32)
        if last >= first:
            raw.append((i + 1, first * sector, (last - first + 1) * sector))
    return raw


def data_partition(image: Path) -> tuple[int, str, int]:
    """(offset, filesystem, size) of the one ext4/erofs filesystem in a disk image (offset 0 for a
    bare filesystem with no partition table)."""
    bare = fs_at(image, 0)
    if bare is not None:
        return 0, bare, image.stat().st_size
    parts = partitions(image)
    if not parts:
        raise TreeError("no partition table and no ext4 or erofs filesystem")
    with_fs = [p for p in parts if p.fs is not None]
    if len(with_fs) != 1:
        listing = ", ".join(f"{p.number}: {p.fs or 'no filesystem'}" for p in parts)
        raise TreeError(f"{len(with_fs)} partitions hold an ext4 or erofs filesystem, not one ({listing})")
    p = with_fs[0]
    assert p.fs is not None
    return p.start, p.fs, p.size


class Ext4Tree:
    """An ext4 filesystem at ``offset`` in ``image``, read with debugfs (read-only, -c)."""

    def __init__(self, image: Path, offset: int) -> None:
        self.device = f"{image}?offset={offset}" if offset else str(image)
        self.debugfs = program("debugfs", "e2fsprogs")
        self.cache: dict[str, Entry | None] = {}
        if self.entry("") is None:
            raise TreeError("the ext4 filesystem has no root directory")

    def _run(self, request: str) -> tuple[str, str]:
        proc = subprocess.run(
            [self.debugfs, "-c", "-R", request, self.device], capture_output=True, timeout=120, check=False
        )
        out = proc.stdout.decode("utf-8", "surrogateescape")
        err = proc.stderr.decode("utf-8", "surrogateescape")
        if "while trying to open" in err or "Filesystem not open" in err:
            reason = next((ln for ln in err.splitlines() if "while trying" in ln), "cannot open it")
            raise Unreadable(f"unreadable ext4 filesystem ({reason.removeprefix('debugfs: ').strip()})")
        return out, err

    @staticmethod
    def _quote(path: str) -> str:
        if any(c in path for c in '"\n\r\\'):
            raise TreeError(f"{path!r}: a name this reader does not handle")
        return f'"/{path}"'

    def entry(self, path: str) -> Entry | None:
        if path in self.cache:
            return self.cache[path]
        out, err = self._run(f"stat {self._quote(path)}")
        found: Entry | None
        kind = re.search(r"Type: (\w+)", out)
        if kind is None:
            if "not found" in err or "No such file" in err:
                found = None
            else:
                problem = "; ".join(ln for ln in err.splitlines() if not ln.startswith("debugfs "))
                raise Unreadable(f"unreadable ext4 filesystem at /{path} ({problem or 'no answer'})")
        else:
            size_match = re.search(r"\bSize: (\d+)", out)
            size = int(size_match.group(1)) if size_match else 0
            if kind.group(1) == "symlink":
                fast = re.search(r'Fast link dest: "(.*)"\s*$', out, re.M)
                found = Entry("link", fast.group(1) if fast else self._slow_link(path, size))
            elif kind.group(1) == "regular":
                found = Entry("file", size=size)
            elif kind.group(1) == "directory":
                found = Entry("dir")
            else:
                found = Entry("other")
        self.cache[path] = found
        return found

    def _slow_link(self, path: str, size: int) -> str:
        out, _err = self._run(f"cat {self._quote(path)}")
        return out[:size]

    def copy_out(self, path: str, dest: Path) -> None:
        entry = self.entry(path)
        if entry is None or entry.kind != "file":
            raise TreeError(f"/{path}: not a regular file")
        _out, err = self._run(f"dump {self._quote(path)} {dest}")
        if not dest.exists() or dest.stat().st_size != entry.size:
            problem = "; ".join(ln for ln in err.splitlines() if not ln.startswith("debugfs "))
            raise Unreadable(f"/{path}: could not read it from the ext4 filesystem ({problem or 'short'})")


def erofs_tree(image: Path, offset: int, size: int, scratch: Path) -> DirTree:
    """Extract the erofs filesystem at ``offset`` into ``scratch`` (a new directory's parent)."""
    fsck = program("fsck.erofs", "erofs-utils")
    fs = image
    if offset:
        fs = scratch / "partition.erofs"
        copy_range(image, offset, size, fs)
    out = scratch / "erofs"
    proc = subprocess.run(
        [fsck, f"--extract={out}", "--no-preserve", str(fs)], capture_output=True, timeout=1800, check=False
    )
    if proc.returncode != 0:
        lines = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        why = lines[-1] if lines else f"exit status {proc.returncode}"
        raise Unreadable(f"fsck.erofs could not extract the erofs filesystem ({why})")
    if fs != image:
        fs.unlink()
    return DirTree(out)
