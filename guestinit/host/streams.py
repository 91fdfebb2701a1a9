"""Compressed streams: tell gzip, zstd, xz, lz4 and plain apart by their magic, read them, and
write zstd or lz4 (an initrd's compressions).

gzip and xz come from the standard library; zstd and lz4 from their programs (Debian packages
zstd and lz4, among the host packages; Python 3.11 has neither module). lz4 is written in the
legacy frame format (``lz4 -l``), the only one the kernel's initramfs decoder reads. Corrupt or
truncated input raises ``StreamError`` with what the decompressor said."""

from __future__ import annotations

import contextlib
import gzip
import lzma
import shutil
import subprocess
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

MAGICS = (
    (b"\x1f\x8b", "gzip"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"BZh", "bzip2"),
    (b"\x02\x21\x4c\x18", "lz4"),
    (b"\x04\x22\x4d\x18", "lz4"),
)
CHUNK = 1 << 20


class StreamError(ValueError):
    """Corrupt or truncated compressed data, or a compression this host cannot read."""


class MissingProgram(StreamError):
    """A program this needs is not installed (the message names its Debian package)."""


LZ4_LEGACY_MAGIC = b"\x02\x21\x4c\x18"
# The programs that read and write the compressions Python cannot: (program, Debian package),
# how it decompresses to stdout, how it compresses stdin to stdout.
PROGRAMS = {
    "zstd": (("zstd", "zstd"), ("-q", "-d", "-c"), ("-q", "-c")),
    # -9: lz4hc, smaller at the same decoding speed; -l: legacy frames for the kernel
    "lz4": (("lz4", "lz4"), ("-q", "-d", "-c"), ("-q", "-l", "-9", "-c")),
}


def compression(head: bytes) -> str:
    """'gzip', 'zstd', 'xz', 'bzip2', 'lz4' or 'plain' (bzip2 is recognised, not read)."""
    for magic, name in MAGICS:
        if head.startswith(magic):
            return name
    return "plain"


def sniff(path: Path, size: int = 4096) -> tuple[str, bytes]:
    """The file's compression and the first ``size`` bytes of its decompressed content."""
    with open(path, "rb") as handle:
        kind = compression(handle.read(8))
    if kind == "plain":
        with open(path, "rb") as handle:
            return kind, handle.read(size)
    head = b""
    try:
        with opened(path, check=False) as stream:
            head = _read_up_to(stream, size)
    except MissingProgram:
        raise
    except StreamError:
        pass  # corrupt from the start: an empty head, and the caller says so
    return kind, head


def _read_up_to(stream: IO[bytes], size: int) -> bytes:
    parts: list[bytes] = []
    left = size
    while left > 0:
        chunk = stream.read(left)
        if not chunk:
            break
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


# What the decompressors raise on bad data (an OSError of the caller, such as ENOSPC, passes through).
ERRORS = (EOFError, gzip.BadGzipFile, zlib.error, lzma.LZMAError)


@contextlib.contextmanager
def opened(path: Path, check: bool = True) -> Iterator[IO[bytes]]:
    """A readable stream of the decompressed content. With ``check``, a decompressor that fails
    (or, for zstd and lz4, exits non-zero) after the caller is done raises StreamError."""
    with open(path, "rb") as raw:
        kind = compression(raw.read(8))
    if kind in PROGRAMS:
        with _program_stream(kind, path, check) as stream:
            yield stream
        return
    if kind == "bzip2":
        raise StreamError(f"{kind}-compressed, which this tool does not read: decompress it first")
    opener: Any = {"gzip": gzip.open, "xz": lzma.open, "plain": open}[kind]
    try:
        with opener(path, "rb") as stream:
            yield stream
    except StreamError:
        raise
    except ERRORS as exc:
        raise StreamError(f"corrupt or truncated {kind} data ({_why(exc)})") from None


def _why(exc: BaseException) -> str:
    if isinstance(exc, EOFError):
        return "it ends before the end of the compressed stream"
    return str(exc) or type(exc).__name__


@contextlib.contextmanager
def _program_stream(kind: str, path: Path, check: bool) -> Iterator[IO[bytes]]:
    (name, package), decode, _ = PROGRAMS[kind]
    argv = [program(name, package), *decode, "--", str(path)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    failed = False
    try:
        yield proc.stdout
    except BaseException:
        failed = True
        raise
    finally:
        proc.stdout.close()
        err = proc.stderr.read().decode(errors="replace").strip()
        proc.stderr.close()
        rc = proc.wait()
        if check and not failed and rc != 0:
            # zstd and lz4 say "<name, perhaps shortened> : <what>": keep the what.
            last = err.splitlines()[-1].split(" : ", 1)[-1] if err else f"{name} exited {rc}"
            raise StreamError(f"corrupt or truncated {kind} data ({last})")


def compress(data: bytes, kind: str) -> bytes:
    """``data`` compressed as ``kind`` ('zstd', or 'lz4' in legacy frames); the same input gives
    the same bytes."""
    (name, package), _, encode = PROGRAMS[kind]
    proc = subprocess.run([program(name, package), *encode], input=data, capture_output=True, check=False)
    if proc.returncode != 0:
        detail = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        raise StreamError(f"{name} could not compress: {detail[0]}")
    return proc.stdout


def read_all(path: Path) -> bytes:
    """The whole decompressed content of ``path``."""
    with opened(path) as stream:
        return stream.read()


def decompress_to(path: Path, dest: Path) -> int:
    """Write the decompressed content of ``path`` to ``dest``; returns its size."""
    size = 0
    with opened(path) as stream, open(dest, "wb") as out:
        while chunk := stream.read(CHUNK):
            out.write(chunk)
            size += len(chunk)
    return size


def copy_range(src: Path, offset: int, length: int, dest: Path) -> None:
    """Copy ``length`` bytes of ``src`` from ``offset`` into a new file ``dest``."""
    with open(src, "rb") as fin, open(dest, "wb") as fout:
        fin.seek(offset)
        left = length
        while left > 0:
            chunk = fin.read(min(CHUNK, left))
            if not chunk:
                raise StreamError(f"ends {left} bytes before the end of the partition")
            fout.write(chunk)
            left -= len(chunk)


def program(name: str, package: str) -> str:
    """The path of a program, or StreamError naming the Debian package that brings it."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")
    if found is None:
        raise MissingProgram(f"needs the {name} program: apt-get install {package}")
    return found
