"""The agentsource fuzz targets over their seeds and a few hostile inputs (the runner drives them
longer with atheris or hypothesis)."""

from __future__ import annotations

import struct

import fuzz_agent_cpio
import fuzz_agent_disk
import fuzz_agent_elf
import pytest
from mutate import mutations

from guestinit.host.agentsource import disk, elf
from guestinit.host.agentsource.cpio import CpioTree
from guestinit.host.agentsource.trees import TreeError

SECTOR = 512

TARGETS = [fuzz_agent_elf, fuzz_agent_cpio, fuzz_agent_disk]


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.__name__)
def test_seeds_and_hostile_inputs(target) -> None:  # type: ignore[no-untyped-def]
    for seed in target.SEEDS:
        target.TestOneInput(seed)
        for data in mutations(seed):
            target.TestOneInput(data)


def test_the_seeds_are_what_they_claim() -> None:
    info = elf.parse(fuzz_agent_elf.SEEDS[1])
    assert info.is_x86_64 and info.interpreter == "/lib64/ld-linux-x86-64.so.2"
    assert info.needed == ("libdevmapper.so.1.02.1", "libseccomp.so.2", "libc.so.6")
    with pytest.raises(elf.ElfError):
        elf.parse(fuzz_agent_elf.SEEDS[0][:70])


def test_elf_reader_refuses_hostile_headers() -> None:
    seed = bytearray(fuzz_agent_elf.SEEDS[0])
    struct.pack_into("<H", seed, 0x38, 60000)  # e_phnum
    with pytest.raises(elf.ElfError, match="program headers"):
        elf.parse(bytes(seed))


def test_disk_seeds(tmp_path) -> None:  # type: ignore[no-untyped-def]
    for data, fs in ((fuzz_agent_disk.SEEDS[0], "ext4"), (fuzz_agent_disk.SEEDS[1], "erofs")):
        (tmp_path / "d.img").write_bytes(data)
        assert disk.data_partition(tmp_path / "d.img")[1] == fs


@pytest.mark.parametrize(
    "damage",
    [
        lambda img: img[: SECTOR + 51],  # a GPT header cut short
        lambda img: img[: SECTOR + 72] + struct.pack("<Q", 1 << 62) + img[SECTOR + 80 :],  # entries far away
        lambda img: img[: SECTOR + 80] + struct.pack("<I", 1 << 20) + img[SECTOR + 84 :],  # too many entries
    ],
)
def test_disk_reader_refuses_hostile_gpt(tmp_path, damage) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "d.img").write_bytes(damage(fuzz_agent_disk.SEEDS[1]))
    with pytest.raises(TreeError):
        disk.data_partition(tmp_path / "d.img")


def test_cpio_header_with_a_signed_field_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Found by `make fuzz`: a mode field of "-000A1FF" parsed as a negative mode, and
    stat.S_ISLNK raised OverflowError; every field must be eight hex digits."""
    seed = bytearray(fuzz_agent_cpio.SEEDS[1])
    seed[14:22] = b"-000A1FF"
    (tmp_path / "a.cpio").write_bytes(bytes(seed))
    with pytest.raises(TreeError, match="corrupt cpio header at offset 0"):
        CpioTree(tmp_path / "a.cpio")
    fuzz_agent_cpio.TestOneInput(bytes(seed))
