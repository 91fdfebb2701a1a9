"""Stream framing (virtio-serial messages, console lines), fuzzed against a reference model:
whatever the bytes and however they are cut into reads, the framer finds what splitting the
whole stream would find, and never holds more than the limit plus one read."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from guestinit.notify.framing import Framer, line_framer, serial_framer
from guestinit.notify.message import encode


def reference(stream: bytes, separator: bytes, tail: bytes, limit: int) -> tuple[list[bytes], int]:
    """Frames and number of oversized drops of a whole stream (the last piece is unfinished)."""
    *complete, last = stream.split(separator)
    frames = [piece + tail for piece in complete if len(piece) + len(tail) <= limit]
    drops = sum(len(piece) + len(tail) > limit for piece in complete) + (len(last) > limit)
    return frames, drops


def feed_in_pieces(framer: Framer, stream: bytes, cuts: list[int]) -> tuple[list[bytes], int, int]:
    frames: list[bytes] = []
    drops = 0
    most = 0
    start = 0
    for cut in [*sorted(set(cuts)), len(stream)]:
        got, notes = framer.feed(stream[start:cut])
        frames += got
        drops += len(notes)
        most = max(most, framer.buffered)
        start = cut
    return frames, drops, most


# Streams rich in separators: small alphabets make "\n\n" and long runs likely.
streams = st.lists(
    st.sampled_from([b"\n", b"\n\n", b"A=1", b"x", b"\xff", b"READY=1\n", b"y" * 40]), max_size=60
).map(b"".join)


@settings(max_examples=400)
@given(streams, st.lists(st.integers(min_value=0, max_value=2500)), st.integers(min_value=1, max_value=64))
def test_serial_framing_matches_reference_for_any_cuts(stream: bytes, cuts: list[int], limit: int) -> None:
    cuts = [c for c in cuts if c <= len(stream)]
    frames, drops, most = feed_in_pieces(serial_framer(limit), stream, cuts)
    assert (frames, drops) == reference(stream, b"\n\n", b"\n", limit)
    bounds = [0, *sorted(set(cuts)), len(stream)]
    longest_read = max(b - a for a, b in itertools.pairwise(bounds))
    assert most <= limit + longest_read


@settings(max_examples=300)
@given(streams, st.lists(st.integers(min_value=0, max_value=2500)), st.integers(min_value=1, max_value=64))
def test_line_framing_matches_reference_for_any_cuts(stream: bytes, cuts: list[int], limit: int) -> None:
    cuts = [c for c in cuts if c <= len(stream)]
    frames, drops, _ = feed_in_pieces(line_framer(limit), stream, cuts)
    assert (frames, drops) == reference(stream, b"\n", b"", limit)


@given(st.binary(max_size=5000), st.lists(st.integers(min_value=0, max_value=5000)))
def test_framer_never_raises_on_arbitrary_bytes(stream: bytes, cuts: list[int]) -> None:
    cuts = [c for c in cuts if c <= len(stream)]
    frames, _, most = feed_in_pieces(serial_framer(256), stream, cuts)
    assert all(len(f) <= 256 for f in frames)
    assert most <= 256 + len(stream)


def test_valid_messages_survive_one_byte_reads() -> None:
    messages = [encode({"READY": "1", "STATUS": "a"}), encode({"X_SYSTEMD_SHUTDOWN": "poweroff"})]
    stream = b"".join(m + b"\n" for m in messages)
    framer = serial_framer(1024)
    got: list[bytes] = []
    for i in range(len(stream)):
        got += framer.feed(stream[i : i + 1])[0]
    assert got == messages


def test_separator_split_between_reads_while_discarding() -> None:
    framer = serial_framer(4)
    assert framer.feed(b"A=xxxxxx\n") == ([], ["message over 4 bytes dropped"])
    assert framer.feed(b"\nB=1\n\n") == ([b"B=1\n"], [])


@settings(max_examples=200)
@given(streams, st.integers(min_value=1, max_value=16))
def test_serial_framing_one_byte_reads(stream: bytes, limit: int) -> None:
    frames, drops, _ = feed_in_pieces(serial_framer(limit), stream, list(range(len(stream))))
    assert (frames, drops) == reference(stream, b"\n\n", b"\n", limit)


def test_oversized_message_resynchronises_on_next_blank_line() -> None:
    framer = serial_framer(16)
    frames, notes = framer.feed(b"A=" + b"x" * 100)
    assert frames == [] and len(notes) == 1 and framer.buffered <= 1
    frames, notes = framer.feed(b"yyy\n\nREADY=1\n\n")
    assert frames == [b"READY=1\n"] and notes == []
