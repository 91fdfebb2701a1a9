"""Replacing a file so that a crash leaves the old content or the new, never a mix.

One helper for every side (guest, service VM, host; standard library only): the data goes to
a temporary file in the same folder, is fsync'd, renamed over the target, and the folder is
fsync'd so the rename itself survives a power cut. A failure removes the temporary file.
(Deploy has its own primitives in guestinit/host/atomicfs.py: it also needs hashes and
recognisable temporary names to clean up after a SIGKILL.)
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(
    path: str | os.PathLike[str],
    data: str | bytes,
    mode: int = 0o644,
    owner: tuple[int, int] | None = None,
) -> None:
    """Replace ``path`` with ``data`` (text is UTF-8), creating its folder when missing; ``owner``
    (uid, gid) is given to the new file before it takes the name."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            if owner is not None:
                os.fchown(f.fileno(), *owner)
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
