"""The seed mutations every fuzz target's unit test runs (without atheris): the same few
hundred inputs a short fuzzing pass would start from, deterministic per seed."""

from __future__ import annotations

import random

PREFIXES = 128  # every prefix of a seed up to this length, then a few longer ones


def mutations(seed: bytes, count: int = 60) -> list[bytes]:
    """Truncations (every prefix of a short seed; the half and all but the last byte of a long
    one), the seed extended and repeated, and ``count`` copies with 1-8 random edits each (a
    byte changed, inserted or deleted)."""
    rng = random.Random(len(seed) * 31 + 7)
    out = [seed[:n] for n in range(min(len(seed), PREFIXES))]
    out += [seed[: len(seed) // 2], seed[:-1], seed + b"\xff" * 64]
    if len(seed) <= 4096:
        out.append(seed * 40)
    for _ in range(count):
        data = bytearray(seed or b"\x00")
        for _ in range(rng.randint(1, 8)):
            choice = rng.randrange(3)
            if choice == 0:
                data[rng.randrange(len(data))] = rng.randrange(256)
            elif choice == 1:
                data.insert(rng.randrange(len(data) + 1), rng.randrange(256))
            elif len(data) > 1:
                del data[rng.randrange(len(data))]
        out.append(bytes(data))
    return out
