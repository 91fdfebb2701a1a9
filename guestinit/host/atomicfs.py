"""Filesystem primitives that never leave a file half-written: a crash leaves old or new, not a mix.

Every new file is written under a temporary name (``TMP_PREFIX``), fsync'd, renamed over its
final name, and its directory fsync'd; a directory is created or removed the same way. A killed
run leaves only temporary names, which the next deploy removes (kataswitch.remove_leftovers).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from guestinit.host.errors import DeployError

TMP_PREFIX = ".gi-tmp."
CHUNK = 1 << 20


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: Path) -> None:
    """mkdir -p, with each new directory's entry fsync'd into its parent."""
    missing: list[Path] = []
    while not path.is_dir():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        directory.mkdir(mode=0o755, exist_ok=True)
        fsync_dir(directory.parent)


def _tmp_path(dest: Path) -> Path:
    return dest.with_name(f"{TMP_PREFIX}{os.getpid()}.{dest.name}")


def write_fd(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def create_file(path: Path, data: bytes | Path, mode: int = 0o644) -> str:
    """Write a new file (bytes, or a copy of a file) with fsync; return its sha256."""
    digest = hashlib.sha256()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)
        if isinstance(data, Path):
            with open(data, "rb") as src:
                while chunk := src.read(CHUNK):
                    digest.update(chunk)
                    write_fd(fd, chunk)
        else:
            digest.update(data)
            write_fd(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    return digest.hexdigest()


def write_atomic(dest: Path, data: bytes | Path, sha256: str | None = None) -> None:
    """Replace ``dest`` by new content: temp name, fsync, rename, fsync the directory.

    With ``sha256`` the content written must hash to it (a copy that changed under us is
    dropped, never renamed into place)."""
    tmp = _tmp_path(dest)
    digest = create_file(tmp, data)
    if sha256 is not None and digest != sha256:
        os.unlink(tmp)
        source = os.fspath(data) if isinstance(data, Path) else "data"
        raise DeployError(
            f"{source}: content changed while it was copied (sha256 {digest[:16]}…): rebuild it"
        )
    os.rename(tmp, dest)
    fsync_dir(dest.parent)


def symlink_atomic(dest: Path, target: str) -> None:
    """Point ``dest`` at ``target``: a temporary link renamed over the old name."""
    tmp = _tmp_path(dest)
    os.symlink(target, tmp)
    try:
        os.rename(tmp, dest)
    except IsADirectoryError:
        os.unlink(tmp)
        raise DeployError(
            f"{dest} is a directory, not a file or link: move it away and deploy again"
        ) from None
    fsync_dir(dest.parent)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def remove_tree_atomic(path: Path) -> None:
    """Rename away, then delete: a kill mid-delete leaves a temporary name, not half a version."""
    doomed = path.with_name(f"{TMP_PREFIX}{os.getpid()}.del.{path.name}")
    os.rename(path, doomed)
    fsync_dir(path.parent)
    shutil.rmtree(doomed)
