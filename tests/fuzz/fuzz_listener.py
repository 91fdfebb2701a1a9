"""Fuzz target: the host listener's handling of received bytes (guestinit/host/listen/intake.py),
driven without sockets exactly as the event loop drives it: reads of one connection of each
kind (a message read to its end, a serial stream, seqpacket records), datagrams, console log
chunks and read deadlines. Intake is documented never to raise; the limits must hold whatever
arrives: buffers within the message limit, the queue within its bound, only valid fields
queued, and a message read to its end or a serial stream gives the same messages however the
bytes were cut into reads.

The first three bytes choose the limits; the rest is what the guest sent."""

from __future__ import annotations

import re

from guestinit.host.listen.endpoint import Endpoint
from guestinit.host.listen.intake import FRAMED, MESSAGE, RECORDS, Intake, read_size
from guestinit.host.listen.limits import Limits
from guestinit.notify.framing import line_framer
from guestinit.notify.message import MAX_LINES, encode, encode_console_line

KEY = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
ENDPOINTS = {
    MESSAGE: Endpoint("unix", path="/run/fuzz/u.sock"),
    FRAMED: Endpoint("serial", path="/run/fuzz/s.sock"),
    RECORDS: Endpoint("vsock-seqpacket", port=7778),
}
CONSOLE = Endpoint("console", path="/run/fuzz/console.log")
LOG_KEEP = 1000  # RateLimitedLog's default

SEEDS: list[bytes] = [
    b"\x10\x04\x05" + encode({"READY": "1", "STATUS": "up", "X_GUESTINIT_VERSION": "0.1"}),
    b"\x02\x01\x01STATUS=a\n\nREADY=1\nSTATUS=b\n\nEXIT_STATUS=3\n\n",
    b"\x00\x00\x00" + b"A=" + b"x" * 300 + b"\n\nREADY=1\n\n",
    b"\x20\x07\x02[  1.0] boot\r\n" + encode_console_line({"READY": "1", "STATUS": "a b"}),
    b"\x05\x03\x00\xff\xfe=1\nlower=1\nno equals\nX_A=\x00\nBARRIER=1\n\nREADY=1\n",
]


def limits_for(data: bytes) -> Limits:
    head = data[:3].ljust(3, b"\0")
    return Limits(
        max_message_bytes=16 + head[0] * 8,
        read_timeout_s=5.0,
        max_connections=4,
        max_queued=1 + head[1] % 16,
        log_per_second=1 + head[2] % 8,
    )


def reads(body: bytes) -> list[bytes]:
    """``body`` as a sequence of reads whose sizes its own bytes decide."""
    pieces: list[bytes] = []
    at = step = 0
    while at < len(body):
        size = 1 + body[step % len(body)] % 61
        pieces.append(body[at : at + size])
        at += size
        step += 1
    return pieces


def check_queue(intake: Intake) -> None:
    queued = list(intake.messages._items)
    assert len(queued) <= intake.limits.max_queued
    for msg in queued:
        assert msg.fields and len(msg.fields) <= MAX_LINES
        for key, value in msg.fields.items():
            assert KEY.fullmatch(key) and "\n" not in value and "\0" not in value
            value.encode()  # UTF-8, as documented: no lone surrogates
        if not msg.source.startswith("console:"):  # JSON escapes: the console line is longer
            assert len(encode(msg.fields)) <= intake.limits.max_message_bytes + 1
    assert len(intake.log.lines) <= LOG_KEEP
    assert all(count >= 0 for count in intake.counts.values())


def connection(intake: Intake, mode: str, pieces: list[bytes]) -> None:
    """One connection of ``mode`` receiving ``pieces`` then its end, as the event loop feeds it."""
    conn = intake.connection(ENDPOINTS[mode], f"{ENDPOINTS[mode]} fuzz")
    assert conn.mode == mode
    limit = intake.limits.max_message_bytes
    for piece in [*pieces, b""]:
        if mode == RECORDS:
            piece = piece[: read_size(mode, intake.limits)]  # the kernel cuts a longer record
        if not intake.feed(conn, piece):
            break
        assert conn.buffered <= limit, (mode, conn.buffered, limit)
    else:
        raise AssertionError("a connection's end must finish it")
    assert conn.buffered <= limit


def delivered(data: bytes, mode: str, pieces: list[bytes]) -> list[dict[str, str]]:
    """What one connection of ``mode`` queues from ``pieces``, with room for all of it."""
    roomy = Limits(max_message_bytes=limits_for(data).max_message_bytes, max_queued=1 << 20)
    intake = Intake(roomy)
    connection(intake, mode, pieces)
    return [msg.fields for msg in intake.messages._items]


def TestOneInput(data: bytes) -> None:
    limits = limits_for(data)
    body = data[3:]
    pieces = reads(body)
    seen: list[str] = []
    intake = Intake(limits, on_log=seen.append)
    for mode in (MESSAGE, FRAMED, RECORDS):
        connection(intake, mode, pieces)
        check_queue(intake)
    intake.datagram(body[: limits.max_message_bytes + 1], "unix-dgram:/run/fuzz/d.sock pid 1")
    framer = line_framer(limits.max_message_bytes)
    for piece in pieces:
        intake.console(framer, piece, str(CONSOLE))
        assert framer.buffered <= limits.max_message_bytes
    late = intake.connection(ENDPOINTS[MESSAGE], "late")
    intake.feed(late, body[: limits.max_message_bytes])
    intake.expired(late)
    assert late.buffered == 0
    check_queue(intake)
    # A message read to its end and a serial stream do not depend on how reads cut them.
    for mode in (MESSAGE, FRAMED):
        assert delivered(data, mode, [body]) == delivered(data, mode, pieces), mode
