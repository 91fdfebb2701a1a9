"""Fuzz target: the notify message format on arbitrary bytes. The KEY=VALUE parser and the
console line parser (guestinit/notify/message.py) never raise, keep only valid fields within
the limits and round-trip what they keep; the stream framers (guestinit/notify/framing.py)
stay within their bound and give the same frames however the stream is cut; numbers in values
(EXIT_STATUS) are plain decimal or rejected with a short ASCII report."""

from __future__ import annotations

import re

from guestinit.notify.framing import Framer, line_framer, serial_framer
from guestinit.notify.message import (
    CONSOLE_MARK,
    MAX_CONSOLE_LINE_BYTES,
    MAX_LINES,
    MAX_MESSAGE_BYTES,
    Parsed,
    decimal,
    encode,
    encode_console_line,
    exit_status,
    parse,
    parse_console_line,
)

KEY = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
MAX_REASON_CHARS = 1024  # a dropped-line reason quotes at most a cut key

SEEDS: list[bytes] = [
    b"READY=1\nSTATUS=up and running\nX_GUESTINIT_VERSION=0.1\n",
    b"STATUS=a\n\nREADY=1\nSTATUS=b\n\n",
    b"EXIT_STATUS=3\nSTATUS=failed: no GPU\nX_SYSTEMD_SHUTDOWN=poweroff\n",
    b'[    3.0] noise GUESTINIT-NOTIFY {"READY":"1","STATUS":"a b"}\r\n',
    b"EXIT_STATUS=1_0\nlower=1\n\xff\xfe=1\nX_A=\x00\nno equals\n",
]


def cuts(data: bytes) -> list[bytes]:
    """``data`` in pieces whose sizes its own bytes decide (so the fuzzer controls the cuts)."""
    pieces: list[bytes] = []
    at = 0
    step = 0
    while at < len(data):
        size = 1 + data[step % len(data)] % 23
        pieces.append(data[at : at + size])
        at += size
        step += 1
    return pieces


def check_parsed(parsed: Parsed) -> None:
    assert len(parsed.fields) <= MAX_LINES
    for key, value in parsed.fields.items():
        assert KEY.fullmatch(key), key
        assert "\n" not in value and "\0" not in value
        value.encode()  # UTF-8, as documented: no lone surrogates
    for reason in parsed.dropped:
        assert isinstance(reason, str) and len(reason) <= MAX_REASON_CHARS


def check_message(data: bytes) -> None:
    parsed = parse(data)
    check_parsed(parsed)
    if len(data) > MAX_MESSAGE_BYTES:
        assert not parsed.fields
    if parsed.fields and len(data) < MAX_MESSAGE_BYTES:
        assert parse(encode(parsed.fields)).fields == parsed.fields
    small = 1 + len(data) // 2
    if len(data) > small:
        assert not parse(data, max_bytes=small).fields


def check_console(data: bytes) -> None:
    parsed = parse_console_line(data)
    if CONSOLE_MARK.encode() not in data:
        assert parsed is None
        return
    assert parsed is not None
    check_parsed(parsed)
    if parsed.fields and len(data) < MAX_CONSOLE_LINE_BYTES // 8:  # JSON escapes grow at most 6x
        again = parse_console_line(encode_console_line(parsed.fields))
        assert again is not None and again.fields == parsed.fields


def frames(framer: Framer, pieces: list[bytes]) -> tuple[list[bytes], int]:
    out: list[bytes] = []
    notes = 0
    for piece in pieces:
        got, dropped = framer.feed(piece)
        out += got
        notes += len(dropped)
        assert framer.buffered <= framer.max_bytes
    return out, notes


def check_framing(data: bytes) -> None:
    max_bytes = 8 + (data[0] if data else 0)
    for make in (serial_framer, line_framer):
        whole = frames(make(max_bytes), [data])
        cut = frames(make(max_bytes), cuts(data))
        assert whole == cut, (make.__name__, whole, cut)
        separator = make(max_bytes).separator
        for frame in whole[0]:
            assert len(frame) <= max_bytes and separator not in frame


def check_numbers(data: bytes) -> None:
    text = data[:12].decode("utf-8", "replace")
    try:
        status = exit_status(text)
    except ValueError as exc:
        report = str(exc)
        assert report.isascii() and len(report) < 160 and "\n" not in report
        assert decimal(text, 255) is None
        return
    assert 0 <= status <= 255 and str(status) == text


def TestOneInput(data: bytes) -> None:
    check_message(data)
    check_console(data)
    check_framing(data)
    check_numbers(data)
