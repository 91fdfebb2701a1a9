"""Fuzz target: agentsource's ELF reader on arbitrary bytes (a user's "kata-agent" can be anything).
It may refuse (ElfError) but never raise anything else, loop, or read out of bounds."""

from __future__ import annotations

import struct

from guestinit.host.agentsource import elf


def tiny_elf(
    interp: bytes = b"/lib64/ld-linux-x86-64.so.2", needed: tuple[bytes, ...] = (b"libc.so.6",)
) -> bytes:
    """A 64-bit x86-64 ET_DYN with PT_LOAD, PT_INTERP and PT_DYNAMIC (DT_NEEDED, DT_STRTAB)."""
    phoff, phnum = 64, 3
    strtab_off = phoff + 56 * phnum
    strtab = b"\0" + b"".join(n + b"\0" for n in needed)
    interp_off = strtab_off + len(strtab)
    dyn_off = interp_off + len(interp) + 1
    offsets, pos = [], 1
    for n in needed:
        offsets.append(pos)
        pos += len(n) + 1
    dyn = b"".join(struct.pack("<qQ", 1, o) for o in offsets) + struct.pack("<qQqQ", 5, strtab_off, 0, 0)
    size = dyn_off + len(dyn)
    header = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    header += struct.pack("<HHIQQQIHHHHHH", 3, 62, 1, 0, phoff, 0, 0, 64, 56, phnum, 64, 0, 0)
    ph = struct.pack("<IIQQQQQQ", 1, 5, 0, 0, 0, size, size, 0x1000)
    ph += struct.pack(
        "<IIQQQQQQ", 3, 4, interp_off, interp_off, interp_off, len(interp) + 1, len(interp) + 1, 1
    )
    ph += struct.pack("<IIQQQQQQ", 2, 6, dyn_off, dyn_off, dyn_off, len(dyn), len(dyn), 8)
    return header + ph + strtab + interp + b"\0" + dyn


SEEDS: list[bytes] = [
    tiny_elf(),
    tiny_elf(needed=(b"libdevmapper.so.1.02.1", b"libseccomp.so.2", b"libc.so.6")),
]


def TestOneInput(data: bytes) -> None:
    try:
        info = elf.parse(data)
    except elf.ElfError:
        return
    assert info.bits in (32, 64)
    assert all(isinstance(n, str) for n in info.needed)
    assert info.linking in ("static", "dynamic")
