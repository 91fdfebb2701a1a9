from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from guestinit.atomicfile import write_atomic


def test_replaces_whole_file_and_creates_folder(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "file.txt"
    write_atomic(target, "one\n")
    write_atomic(target, b"two\n", mode=0o600)
    assert target.read_bytes() == b"two\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert os.listdir(target.parent) == ["file.txt"]


def test_failure_leaves_old_content_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "file.txt"
    write_atomic(target, "old")

    class Boom(str):
        def encode(self, *args: object, **kwargs: object) -> bytes:
            raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        write_atomic(target, Boom("new"))
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["file.txt"]
