"""What an ELF file is: class, byte order, machine, type, interpreter, DT_NEEDED, PIE flag.

Reads only the headers it needs (bounded; a truncated or hostile file raises ``ElfError``, never
a struct error), so a multi-megabyte agent is never read whole."""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

ET_EXEC, ET_DYN = 2, 3
PT_LOAD, PT_DYNAMIC, PT_INTERP = 1, 2, 3
DT_NULL, DT_NEEDED, DT_STRTAB, DT_FLAGS_1 = 0, 1, 5, 0x6FFFFFFB
DF_1_PIE = 0x08000000
EM_X86_64 = 62
MACHINES = {
    3: "i386",
    8: "mips",
    20: "ppc",
    21: "ppc64",
    22: "s390x",
    40: "arm",
    62: "x86-64",
    183: "aarch64",
    243: "riscv",
    258: "loongarch",
}
MAX_PHNUM = 256
MAX_DYNAMIC = 1 << 20

# The agent's own `--version` format string contains this piece (kata-containers
# src/agent/src/main.rs, since 2020): how an executable is told apart from another init.
AGENT_SIGNATURE = b"(api version: "
UPX_MAGIC = b"UPX!"


class ElfError(ValueError):
    """The file is not a well-formed ELF file (the message says what is wrong)."""


@dataclass(frozen=True)
class ElfInfo:
    bits: int
    little_endian: bool
    machine: int
    elf_type: int
    interpreter: str | None
    needed: tuple[str, ...]
    pie: bool

    @property
    def machine_name(self) -> str:
        return MACHINES.get(self.machine, f"machine {self.machine}")

    @property
    def is_x86_64(self) -> bool:
        return self.bits == 64 and self.little_endian and self.machine == EM_X86_64

    @property
    def is_executable(self) -> bool:
        """ET_EXEC, or ET_DYN that is a PIE (with an interpreter or the DF_1_PIE flag)."""
        return self.elf_type == ET_EXEC or (
            self.elf_type == ET_DYN and (self.interpreter is not None or self.pie)
        )

    @property
    def linking(self) -> str:
        return "dynamic" if self.interpreter is not None or self.needed else "static"


def is_elf(head: bytes) -> bool:
    return head[:4] == b"\x7fELF"


def _unpack(fmt: str, data: bytes | mmap.mmap, offset: int) -> tuple[int, ...]:
    if offset < 0 or offset + struct.calcsize(fmt) > len(data):
        raise ElfError("truncated: a header points past the end of the file")
    return struct.unpack_from(fmt, data, offset)


def _string(data: bytes | mmap.mmap, offset: int) -> str:
    if offset < 0 or offset >= len(data):
        raise ElfError("truncated: a string points past the end of the file")
    end = data.find(b"\0", offset, offset + 4096)
    if end < 0:
        raise ElfError("a string in the dynamic section is not terminated")
    return bytes(data[offset:end]).decode("utf-8", "replace")


def parse(data: bytes | mmap.mmap) -> ElfInfo:
    if len(data) < 16 or not is_elf(bytes(data[:4])):
        raise ElfError("not an ELF file")
    bits = {1: 32, 2: 64}.get(data[4])
    order = {1: "<", 2: ">"}.get(data[5])
    if bits is None or order is None:
        raise ElfError("unknown ELF class or byte order")
    if bits == 64:
        e_type, e_machine = _unpack(order + "HH", data, 16)
        (e_phoff,) = _unpack(order + "Q", data, 0x20)
        e_phentsize, e_phnum = _unpack(order + "HH", data, 0x36)
        ph_fmt, dyn_fmt = order + "IIQQQQ", order + "qQ"
    else:
        e_type, e_machine = _unpack(order + "HH", data, 16)
        (e_phoff,) = _unpack(order + "I", data, 0x1C)
        e_phentsize, e_phnum = _unpack(order + "HH", data, 0x2A)
        ph_fmt, dyn_fmt = order + "IIIIII", order + "iI"
    if e_phnum > MAX_PHNUM:
        raise ElfError(f"{e_phnum} program headers (corrupt header)")
    loads: list[tuple[int, int, int]] = []
    dynamic: tuple[int, int] | None = None
    interpreter: str | None = None
    for i in range(e_phnum):
        off = e_phoff + i * e_phentsize
        if bits == 64:
            p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz = _unpack(ph_fmt, data, off)
        else:
            p_type, p_offset, p_vaddr, _paddr, p_filesz, _memsz = _unpack(ph_fmt, data, off)
        if p_type == PT_LOAD:
            loads.append((p_vaddr, p_offset, p_filesz))
        elif p_type == PT_DYNAMIC:
            dynamic = (p_offset, min(p_filesz, MAX_DYNAMIC))
        elif p_type == PT_INTERP:
            interpreter = _string(data, p_offset)
    needed_offsets: list[int] = []
    strtab: int | None = None
    flags_1 = 0
    if dynamic is not None:
        start, size = dynamic
        step = struct.calcsize(dyn_fmt)
        for pos in range(start, start + size - step + 1, step):
            tag, value = _unpack(dyn_fmt, data, pos)
            if tag == DT_NULL:
                break
            if tag == DT_NEEDED:
                needed_offsets.append(value)
            elif tag == DT_STRTAB:
                strtab = _file_offset(loads, value)
            elif tag == DT_FLAGS_1:
                flags_1 = value
    if needed_offsets and strtab is None:
        raise ElfError("DT_NEEDED entries without a string table")
    needed = tuple(_string(data, (strtab or 0) + n) for n in needed_offsets)
    return ElfInfo(bits, order == "<", e_machine, e_type, interpreter, needed, bool(flags_1 & DF_1_PIE))


def _file_offset(loads: list[tuple[int, int, int]], vaddr: int) -> int:
    for start, offset, size in loads:
        if start <= vaddr < start + size:
            return vaddr - start + offset
    return vaddr


def read(path: Path) -> ElfInfo:
    """Parse ``path`` (OSError when it cannot be read, ElfError when it is not a sound ELF file)."""
    with open(path, "rb") as handle:
        size = handle.seek(0, 2)
        if size < 16:
            raise ElfError("not an ELF file")
        with mmap.mmap(handle.fileno(), 0, prot=mmap.PROT_READ) as data:
            return parse(data)


def contains(path: Path, needle: bytes, limit: int | None = None) -> bool:
    """Whether the file's bytes (its first ``limit`` bytes when given) contain ``needle``."""
    with open(path, "rb") as handle:
        if handle.seek(0, 2) == 0:
            return False
        with mmap.mmap(handle.fileno(), 0, prot=mmap.PROT_READ) as data:
            return data.find(needle, 0, limit if limit is not None else len(data)) >= 0
