"""image/mkosi.postoutput: the initrd re-framed as a zstd stream of stored blocks, which zstd
(and the kernel) read back byte for byte."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import shutil
import struct
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "image" / "mkosi.postoutput"
pytestmark = pytest.mark.skipif(shutil.which("zstd") is None, reason="zstd not installed")


def _load() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("mkosi_postoutput", os.fspath(SCRIPT))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def _blocks(frame: bytes) -> list[tuple[int, int, bool]]:
    """(type, size, last) of each block of a frame written without content size or dictionary."""
    assert frame[:4] == b"\x28\xb5\x2f\xfd" and frame[4] == 0
    pos, out = 6, []
    while True:
        (header,) = struct.unpack("<I", frame[pos : pos + 3] + b"\0")
        kind, size, last = (header >> 1) & 3, header >> 3, bool(header & 1)
        out.append((kind, size, last))
        pos += 3 + size
        if last:
            assert pos == len(frame)
            return out


@pytest.mark.parametrize("size", [0, 1, 128 * 1024 - 1, 128 * 1024, 300_001])
def test_stored_frame_reads_back(size: int) -> None:
    data = os.urandom(size)
    frame = _load().stored_frame(data)
    out = subprocess.run(["zstd", "-q", "-d", "-c"], input=frame, capture_output=True, check=True).stdout
    assert out == data
    blocks = _blocks(frame)
    assert all(kind == 0 for kind, _, _ in blocks)  # raw: copied, not decoded
    assert sum(s for _, s, _ in blocks) == size and len(frame) == size + 6 + 3 * len(blocks)


def test_output_file_is_replaced_in_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = b"070701" + bytes(range(256)) * 2000
    image = tmp_path / "guestinit-kata.cpio.zst"
    image.write_bytes(subprocess.run(["zstd", "-q", "-19", "-c"], input=data, capture_output=True).stdout)
    module = _load()
    monkeypatch.setenv("OUTPUTDIR", os.fspath(tmp_path))
    monkeypatch.setenv("IMAGE_ID", "guestinit-kata")
    monkeypatch.setenv("PROFILES", "")
    assert module.main([]) == 0
    stored = image.read_bytes()
    assert _blocks(stored)[0][0] == 0
    out = subprocess.run(["zstd", "-q", "-d", "-c"], input=stored, capture_output=True, check=True).stdout
    assert out == data
    monkeypatch.setenv("PROFILES", "gpu")  # profiles keep mkosi's compression
    image.write_bytes(b"untouched")
    assert module.main([]) == 0 and image.read_bytes() == b"untouched"
    assert module.main([os.fspath(tmp_path / "missing.cpio.zst")]) == 1
