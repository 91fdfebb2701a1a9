"""Sizes and versions as ``guestctl plan`` reads and writes them: ``64G`` for QEMU, MiB for Kata."""

from __future__ import annotations

import re

from guestinit.host.errors import UserError

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40

_SIZE = re.compile(r"^(\d+)\s*([kKmMgGtT]?)(?:i?[bB])?$")
_UNIT = {"": MiB, "k": KiB, "m": MiB, "g": GiB, "t": TiB}


def parse_size(text: str) -> int:
    """'64G' / '64GiB' / '65536M' / '65536' (MiB, as QEMU's -m and Kata's default_memory)."""
    m = _SIZE.match(text.strip())
    if not m or int(m.group(1)) == 0:
        raise UserError(f"--memory {text}: not a size", hint="use e.g. 64G, 65536M or 65536 (MiB)")
    return int(m.group(1)) * _UNIT[m.group(2).lower()]


def qemu_size(n: int) -> str:
    for unit, suffix in ((TiB, "T"), (GiB, "G"), (MiB, "M"), (KiB, "K")):
        if n % unit == 0:
            return f"{n // unit}{suffix}"
    return str(n)


def pow2ceil(n: int) -> int:
    return 1 << (n - 1).bit_length() if n > 0 else 0


def pow2floor(n: int) -> int:
    return 1 << (n.bit_length() - 1) if n > 0 else 0


def align_up(n: int, a: int) -> int:
    return -(-n // a) * a


def version_tuple(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    m = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    if not m:
        return None
    return tuple(int(g) for g in m.groups() if g is not None)
