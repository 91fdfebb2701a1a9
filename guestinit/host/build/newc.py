"""newc (``070701``) cpio archives, the format Linux unpacks as an initramfs: written with fixed
owners and mtimes so the same entries give the same bytes, and read member by member with
every header checked, so a truncated or corrupt archive is one clear error, not a traceback.

Compressed archives (gzip, xz, zstd, lz4: what Kata, mkosi and ``guestctl build`` write) are
opened by their magic (guestinit.host.streams).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from guestinit.host import streams

S_IFMT = 0o170000
S_IFDIR, S_IFREG, S_IFLNK, S_IFCHR = 0o040000, 0o100000, 0o120000, 0o020000
MAGIC = b"070701"
TRAILER = "TRAILER!!!"
HEADER = 110


class NewcError(ValueError):
    """Not a newc archive, or a truncated or corrupt one; the message says where."""


@dataclass(frozen=True)
class Entry:
    """One member: its path (no leading /), st_mode, content (a link's target for symlinks)."""

    name: str
    mode: int
    data: bytes = b""
    rdevmajor: int = 0
    rdevminor: int = 0
    mtime: int = 0
    uid: int = 0
    gid: int = 0

    @property
    def kind(self) -> int:
        return self.mode & S_IFMT


def write(entries: list[Entry]) -> bytes:
    """A newc archive of ``entries`` plus the trailer, padded to 512 bytes. Owners and mtimes
    are the entries' own (0 unless set), inode numbers count from 1."""
    out = bytearray()

    def member(ino: int, e: Entry) -> None:
        name = e.name.encode() + b"\0"
        nlink = 2 if e.kind == S_IFDIR else 1
        fields = (ino, e.mode, e.uid, e.gid, nlink, e.mtime, len(e.data), 0, 0, e.rdevmajor, e.rdevminor)
        out.extend(MAGIC + b"".join(b"%08X" % f for f in (*fields, len(name), 0)) + name)
        out.extend(b"\0" * (-len(out) % 4))
        out.extend(e.data)
        out.extend(b"\0" * (-len(out) % 4))

    for ino, entry in enumerate(entries, start=1):
        member(ino, entry)
    member(0, Entry(TRAILER, 0))
    out.extend(b"\0" * (-len(out) % 512))
    return bytes(out)


def read(data: bytes, where: str = "archive") -> Iterator[Entry]:
    """The members of one or more concatenated newc archives (the kernel reads on after a
    trailer too; zero padding between them is skipped)."""
    off, seen = 0, 0
    while off < len(data):
        if data[off] == 0:  # padding after a trailer
            off += 1
            continue
        header = data[off : off + HEADER]
        if len(header) < HEADER:
            raise NewcError(f"{where}: truncated: a member header ends at byte {len(data)}")
        if header[:6] != MAGIC:
            raise NewcError(
                f"{where}: not a newc cpio member at byte {off} (magic {header[:6]!r}; 070701 expected)"
            )
        try:
            fields = [int(header[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
        except ValueError:
            raise NewcError(f"{where}: corrupt header at byte {off} (non-hex field)") from None
        _ino, mode, uid, gid, _nlink, mtime, size, _dmaj, _dmin, rmaj, rmin, namesize, _check = fields
        name_end = off + HEADER + namesize
        if namesize == 0 or name_end > len(data):
            raise NewcError(f"{where}: truncated in a member name at byte {off}")
        name = data[off + HEADER : name_end - 1].decode("utf-8", "surrogateescape")
        body = name_end + (-name_end % 4)
        end = body + size
        if end > len(data):
            raise NewcError(f"{where}: truncated: {name!r} wants {size} bytes, the archive ends first")
        off = end + (-end % 4)
        seen += 1
        if name == TRAILER:
            continue
        yield Entry(name.lstrip("/").removeprefix("./"), mode, data[body:end], rmaj, rmin, mtime, uid, gid)
    if seen == 0:
        raise NewcError(f"{where}: empty: no cpio member")


def read_file(path: Path) -> Iterator[Entry]:
    """The members of the archive at ``path``, decompressed as needed."""
    where = os.fspath(path)
    try:
        data = streams.read_all(path)
    except streams.StreamError as exc:
        raise NewcError(f"{where}: {exc}") from None
    return read(data, where)
