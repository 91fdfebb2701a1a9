"""The erofs form's disk image: an MBR with one partition holding an erofs filesystem that
fsck.erofs reads back whole, the same bytes for the same tree and date."""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from guestinit.host.build import erofs
from guestinit.host.errors import UserError

pytestmark = pytest.mark.skipif(shutil.which("mkfs.erofs") is None, reason="erofs-utils not installed")
DIGEST = hashlib.sha256(b"inputs").hexdigest()


def tree(where: Path) -> Path:
    (where / "usr/bin").mkdir(parents=True)
    (where / "etc").mkdir()
    (where / "init").write_text("#!/bin/sh\nexec true\n")
    (where / "init").chmod(0o755)
    (where / "usr/bin/big").write_bytes(b"guestinit " * 50_000)
    (where / "etc/resolv.conf").write_text("")
    os.symlink("usr/bin", where / "bin")
    return where


def test_the_disk_holds_one_partition_with_the_tree(tmp_path: Path) -> None:
    image = erofs.pack(tree(tmp_path / "root"), tmp_path / "disk.img", 1796349683, DIGEST)
    offset, length = erofs.partition(image)
    assert offset == 1 << 20 and image.stat().st_size % (1 << 20) == 0
    head = image.read_bytes()[:512]
    assert head[510:] == b"\x55\xaa" and head[450] == 0x83  # one Linux partition
    assert struct.unpack("<I", head[440:444])[0] == int(DIGEST[32:40], 16)
    fs = tmp_path / "fs.erofs"
    with open(image, "rb") as src, open(fs, "wb") as dst:
        src.seek(offset)
        dst.write(src.read(length))
    out = tmp_path / "out"
    subprocess.run(["fsck.erofs", f"--extract={out}", os.fspath(fs)], check=True, capture_output=True)
    assert (out / "usr/bin/big").read_bytes() == b"guestinit " * 50_000
    assert os.readlink(out / "bin") == "usr/bin" and os.access(out / "init", os.X_OK)
    assert length < 200_000  # lz4hc made 500 KB of repeats small


def test_same_tree_same_date_same_bytes(tmp_path: Path) -> None:
    root = tree(tmp_path / "root")
    a = erofs.pack(root, tmp_path / "a.img", 1796349683, DIGEST).read_bytes()
    os.utime(root / "init", (1, 1))  # mtimes in the tree do not matter: -T sets them all
    b = erofs.pack(root, tmp_path / "b.img", 1796349683, DIGEST).read_bytes()
    assert a == b
    c = erofs.pack(root, tmp_path / "c.img", 1796349684, DIGEST).read_bytes()
    assert c != a


def test_a_file_without_a_partition_table_is_refused(tmp_path: Path) -> None:
    bogus = tmp_path / "x.img"
    bogus.write_bytes(bytes(4096))
    with pytest.raises(UserError, match="no MBR partition table"):
        erofs.partition(bogus)
