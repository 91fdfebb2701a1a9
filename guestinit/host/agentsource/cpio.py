"""A newc (SVR4) cpio archive, as the kernel unpacks an initramfs: an index of its members.

The archive is a decompressed file on disk; members are read by offset, nothing is extracted
but what is asked for. Concatenated archives (what the kernel accepts) are read in turn; hard
links (newc stores the data once, with the last link) share their data."""

from __future__ import annotations

import stat
from pathlib import Path

from guestinit.host.agentsource.trees import Entry, TreeError, Unreadable, split

MAGICS = (b"070701", b"070702")
HEADER = 110
TRAILER = "TRAILER!!!"
MAX_NAME = 4096
MAX_LINK = 4096
HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")


def is_cpio(head: bytes) -> bool:
    return head[:6] in MAGICS


def _pad4(n: int) -> int:
    return (n + 3) & ~3


class CpioTree:
    def __init__(self, archive: Path) -> None:
        self.archive = archive
        self.entries: dict[str, Entry] = {}
        self.data: dict[str, tuple[int, int]] = {}
        self._index()

    def _index(self) -> None:
        size = self.archive.stat().st_size
        links: dict[tuple[int, int, int], list[str]] = {}
        with open(self.archive, "rb") as f:
            pos = 0
            members = 0
            while pos + HEADER <= size:
                f.seek(pos)
                header = f.read(HEADER)
                if header[:6] not in MAGICS:
                    if header[:4] == b"\0\0\0\0" and members:
                        pos += 4  # zeros between concatenated archives, skipped as the kernel does
                        continue
                    raise TreeError(f"not a newc cpio member at offset {pos}")
                # eight hex digits a field: int(x, 16) alone would also take "-1", " +1" and "0x1"
                if not all(c in HEX_DIGITS for c in header[6:HEADER]):
                    raise TreeError(f"corrupt cpio header at offset {pos}")
                fields = [int(header[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
                ino, mode, _uid, _gid, nlink, _mtime, filesize, major, minor = fields[:9]
                namesize = fields[11]
                if not 0 < namesize <= MAX_NAME:
                    raise TreeError(f"corrupt cpio header at offset {pos} (name size {namesize})")
                name_raw = f.read(namesize)
                if len(name_raw) < namesize:
                    raise TreeError("truncated cpio archive (a name runs past the end)")
                name = name_raw.rstrip(b"\0").decode("utf-8", "surrogateescape")
                data_at = pos + _pad4(HEADER + namesize)
                if data_at + filesize > size:
                    raise TreeError(f"truncated cpio archive ({name} runs past the end)")
                pos = data_at + _pad4(filesize)
                members += 1
                if name == TRAILER:
                    continue
                key = "/".join(split(name))
                if not key or ".." in key.split("/"):
                    continue  # the root itself, or a name the kernel would not place inside
                self._add_parents(key)
                if stat.S_ISLNK(mode):
                    if filesize > MAX_LINK:
                        raise TreeError(f"{name}: symlink target of {filesize} bytes")
                    f.seek(data_at)
                    target = f.read(filesize).decode("utf-8", "surrogateescape")
                    self.entries[key] = Entry("link", target)
                elif stat.S_ISDIR(mode):
                    self.entries[key] = Entry("dir")
                elif stat.S_ISREG(mode):
                    self.entries[key] = Entry("file", size=filesize)
                    self.data[key] = (data_at, filesize)
                    if nlink > 1:
                        links.setdefault((ino, major, minor), []).append(key)
                else:
                    self.entries[key] = Entry("other")
        if not members:
            raise TreeError("empty cpio archive")
        for names in links.values():
            with_data = [n for n in names if self.data[n][1] > 0]
            for n in names:
                if with_data and self.data[n][1] == 0:
                    self.data[n] = self.data[with_data[-1]]
                    self.entries[n] = Entry("file", size=self.data[n][1])

    def _add_parents(self, key: str) -> None:
        parts = key.split("/")
        for i in range(1, len(parts)):
            self.entries.setdefault("/".join(parts[:i]), Entry("dir"))

    def entry(self, path: str) -> Entry | None:
        return self.entries.get(path)

    def copy_out(self, path: str, dest: Path) -> None:
        offset, length = self.data[path]
        with open(self.archive, "rb") as fin, open(dest, "xb") as fout:
            fin.seek(offset)
            left = length
            while left > 0:
                chunk = fin.read(min(1 << 20, left))
                if not chunk:
                    raise Unreadable(f"{path}: truncated cpio archive")
                fout.write(chunk)
                left -= len(chunk)
