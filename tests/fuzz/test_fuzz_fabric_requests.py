"""The fabric request fuzz target over its seeds and a few hostile inputs (the runner drives it
longer with atheris or hypothesis)."""

from __future__ import annotations

import fuzz_fabric_requests as target
import pytest
from mutate import mutations

from guestinit.fabric.validate import InvalidRequest, validate


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def packed(ids: list[int]) -> bytes:
    body = b"".join(varint(i) for i in ids)
    return b"\x0a" + varint(len(body)) + body


HOSTILE = [
    packed([1] * 1000),  # the reported case: 1,000 repeats of one id
    packed(list(range(1000))),  # too many, all different
    packed([2**32 - 1]),  # the largest uint32
    b"\x08" + varint(2**32 - 1),
    b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # a varint past 64 bits' worth of uint32
    b"\x08",  # a tag and nothing after it
    b"\x0a\x05\x01",  # a packed field cut short
    b"\x0a\xff\xff\xff\xff\x0f",  # a length far past the end
    b"\x08\x00" * 500,  # id 0 sent 500 times (the last one wins)
    b"\x12\x03abc\x08\x02",  # an unknown field, then an id
    b"\xf8\xff\xff\xff\x0f\x01",  # the largest field number
    b"\x0b\x0c",  # a group start and end (deprecated wire types)
    b"\x0f",  # wire type 7 does not exist
]


def test_seeds_are_valid_requests() -> None:
    assert validate(target._pb.PartitionRequest.FromString(target.SEEDS[0])) == (3,)
    assert validate(target._pb.PartitionRequest.FromString(target.SEEDS[1])) == (0,)
    assert validate(target._pb.SetActivatedRequest.FromString(target.SEEDS[2])) == (7, 8, 14)
    assert validate(target._pb.SetActivatedRequest.FromString(target.SEEDS[3])) == (1, 5)


@pytest.mark.parametrize("data", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_inputs(data: bytes) -> None:
    target.TestOneInput(data)


def test_mutated_seeds() -> None:
    for seed in target.SEEDS:
        target.TestOneInput(seed)
        for data in mutations(seed):
            target.TestOneInput(data)


def test_the_reported_case_is_refused_as_a_repeat() -> None:
    with pytest.raises(InvalidRequest, match="partition ids repeat: 1; name each partition once"):
        validate(target._pb.SetActivatedRequest.FromString(HOSTILE[0]))
