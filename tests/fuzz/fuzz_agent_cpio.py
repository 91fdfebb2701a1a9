"""Fuzz target: agentsource's newc cpio reader (a Kata initrd) on arbitrary bytes. It may refuse
(TreeError) but never raise anything else, and what it indexes stays inside the archive."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from guestinit.host.agentsource.cpio import CpioTree
from guestinit.host.agentsource.trees import TreeError


def member(name: bytes, mode: int, data: bytes = b"", ino: int = 1, nlink: int = 1) -> bytes:
    fields = [ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0]
    header = b"070701" + b"".join(b"%08X" % f for f in fields)
    out = header + name + b"\0"
    out += b"\0" * (-len(out) % 4)
    out += data + b"\0" * (-len(data) % 4)
    return out


def archive(*members: bytes) -> bytes:
    return b"".join(members) + member(b"TRAILER!!!", 0)


SEEDS: list[bytes] = [
    archive(
        member(b".", 0o40755), member(b"sbin", 0o40755), member(b"sbin/init", 0o100755, b"\x7fELF agent")
    ),
    archive(member(b"init", 0o120777, b"/sbin/init"), member(b"usr/bin/kata-agent", 0o100755, b"x" * 13)),
    archive(member(b"a", 0o100644, b"", ino=7, nlink=2), member(b"b", 0o100644, b"data", ino=7, nlink=2)),
]


def TestOneInput(data: bytes) -> None:
    fd, name = tempfile.mkstemp(prefix="fuzz-cpio-")
    try:
        os.write(fd, data)
        os.close(fd)
        try:
            tree = CpioTree(Path(name))
        except TreeError:
            return
        for path, (offset, length) in tree.data.items():
            assert offset >= 0 and offset + length <= len(data), path
            assert ".." not in path.split("/")
    finally:
        os.unlink(name)
