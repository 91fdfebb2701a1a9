from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from guestinit.notify.address import AddressError, Target, parse_target
from guestinit.notify.message import (
    MAX_LINES,
    MAX_MESSAGE_BYTES,
    SHOWN_CHARS,
    decimal,
    encode,
    encode_console_line,
    exit_status,
    fit,
    parse,
    parse_console_line,
)


def test_encode_is_systemd_format() -> None:
    data = encode({"READY": "1", "STATUS": "all good", "X_GUESTINIT_VERSION": "0.1"})
    assert data == b"READY=1\nSTATUS=all good\nX_GUESTINIT_VERSION=0.1\n"


def test_encode_rejects_bad_keys_and_newlines() -> None:
    with pytest.raises(ValueError, match="invalid notify key"):
        encode({"ready": "1"})
    with pytest.raises(ValueError, match="newline"):
        encode({"STATUS": "a\nb"})


def test_round_trip() -> None:
    fields = {"READY": "1", "STATUS": "x=y; z", "X_A": '{"json": [1, 2]}'}
    assert parse(encode(fields)).fields == fields


def test_parse_drops_bad_lines_and_keeps_good() -> None:
    parsed = parse(b"READY=1\nnoequals\n\xff\xfe=1\nlower=1\nSTATUS=ok\n")
    assert parsed.fields == {"READY": "1", "STATUS": "ok"}
    assert len(parsed.dropped) == 3


def test_parse_refuses_oversized() -> None:
    parsed = parse(b"A=" + b"x" * MAX_MESSAGE_BYTES)
    assert parsed.fields == {}
    assert "exceeds" in parsed.dropped[0]


@given(st.binary(max_size=4096))
def test_parse_never_raises(data: bytes) -> None:
    parsed = parse(data)
    for key, value in parsed.fields.items():
        assert key.isupper() or "_" in key
        assert "\n" not in value


@given(
    st.dictionaries(
        st.from_regex(r"[A-Z][A-Z0-9_]{0,20}", fullmatch=True),
        st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\0")),
        max_size=20,
    )
)
def test_round_trip_property(fields: dict[str, str]) -> None:
    assert parse(encode(fields)).fields == fields


@pytest.mark.parametrize(
    ("text", "target"),
    [
        ("vsock-stream:2:8888", Target("vsock-stream", cid=2, port=8888)),
        ("vsock:2:1", Target("vsock", cid=2, port=1)),
        ("vsock-dgram:1:0x10", Target("vsock-dgram", cid=1, port=16)),
        ("serial:guestinit.notify", Target("serial", path="guestinit.notify")),
        ("console", Target("console")),
        ("/run/notify", Target("unix", path="/run/notify")),
        ("unix:@abstract", Target("unix", path="@abstract")),
    ],
)
def test_parse_target(text: str, target: Target) -> None:
    assert parse_target(text) == target


@pytest.mark.parametrize(
    "text", ["vsock-stream:2", "vsock:x:1", "serial:", "serial:a/b", "tcp:1:2", "nonsense"]
)
def test_parse_target_errors_name_input(text: str) -> None:
    with pytest.raises(AddressError) as info:
        parse_target(text)
    assert repr(text) in str(info.value)


# console transport: one marked line --------------------------------------------------------


def test_console_line_round_trip_survives_kernel_prefix_and_crlf() -> None:
    fields = {"READY": "1", "STATUS": "ünïcode \x1b[31m and \t tabs", "X_GUESTINIT_PHASES": '[{"a":1}]'}
    line = encode_console_line(fields)
    assert line.startswith(b"GUESTINIT-NOTIFY {") and line.endswith(b"}\n") and line.isascii()
    parsed = parse_console_line(b"[    4.5] random: crng init done " + line.replace(b"\n", b"\r\n"))
    assert parsed is not None and parsed.fields == fields and parsed.dropped == []


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"GUESTINIT-NOTIFY [1,2]", "not a JSON object"),
        (b"GUESTINIT-NOTIFY {", "not a JSON object"),
        (b"GUESTINIT-NOTIFY " + b"[" * 60000, "not a JSON object"),  # deep nesting: RecursionError
        (b"GUESTINIT-NOTIFY " + b"[" * 100000, "exceeds 65536"),
        (b'GUESTINIT-NOTIFY {"READY":1}', "value is not a string"),
        (b'GUESTINIT-NOTIFY {"ready":"1"}', "invalid key"),
        (b'GUESTINIT-NOTIFY {"STATUS":"a\\nb"}', "newline or NUL"),
        (b"GUESTINIT-NOTIFY \xff\xfe", "not a JSON object"),
        (b'GUESTINIT-NOTIFY {"STATUS":"\\ud800"}', "not UTF-8 (a lone surrogate)"),  # found by fuzzing
    ],
)
def test_console_line_garbage_is_reported(line: bytes, reason: str) -> None:
    parsed = parse_console_line(line)
    assert parsed is not None and parsed.fields == {}
    assert reason in parsed.dropped[0]


def test_unmarked_console_line_is_not_a_message() -> None:
    assert parse_console_line(b"[    1.0] Linux version 6.12") is None


@given(st.binary(max_size=2048))
def test_console_parser_never_raises(data: bytes) -> None:
    parse_console_line(b"GUESTINIT-NOTIFY " + data)


# fit: reporting never fails on what a message says ----------------------------------------


def test_fit_cleans_line_breaks_and_cuts_the_longest_value() -> None:
    fields = {
        "STATUS": "failed:\nTraceback\r\n  line\0",
        "X_BIG": "x" * (2 * MAX_MESSAGE_BYTES),
        "READY": "1",
    }
    fitted = fit(fields)
    assert fitted["STATUS"] == "failed: Traceback   line"
    assert fitted["X_BIG"].endswith("...") and fitted["READY"] == "1"
    assert len(encode(fitted)) <= MAX_MESSAGE_BYTES


@given(
    st.dictionaries(
        st.from_regex(r"[A-Z][A-Z0-9_]{0,20}", fullmatch=True),
        st.text(st.characters(blacklist_categories=("Cs",)), max_size=3000),
        max_size=30,
    ),
    st.integers(min_value=600, max_value=4096),
)
def test_fit_always_encodes_within_limit(fields: dict[str, str], limit: int) -> None:
    fitted = fit(fields, limit)
    assert list(fitted) == list(fields)
    data = encode(fitted)
    assert len(data) <= limit + 1  # encode adds the final newline
    assert parse(data).fields == fitted


def test_parse_limit_is_a_parameter() -> None:
    assert parse(b"A=" + b"x" * 100, max_bytes=50).dropped == ["message of 102 bytes exceeds 50"]


def test_parse_refuses_too_many_lines() -> None:
    parsed = parse(b"A=1\n" * (MAX_LINES + 5))
    assert parsed.fields == {} and "lines" in parsed.dropped[0]


# numbers in values: one strict parser ------------------------------------------------------


@pytest.mark.parametrize(("text", "value"), [("0", 0), ("7", 7), ("10", 10), ("255", 255)])
def test_exit_status_plain_decimal(text: str, value: int) -> None:
    assert exit_status(text) == value


@pytest.mark.parametrize(
    ("text", "shown_as"),
    [
        ("1_0", "'1_0'"),  # int() reads 10
        ("\u0663", "'\\u0663'"),  # ARABIC-INDIC DIGIT THREE: int() reads 3
        (" 7 ", "' 7 '"),  # int() strips spaces
        ("-1", "'-1'"),
        ("+1", "'+1'"),
        ("010", "'010'"),  # systemd's safe_atou reads 8
        ("256", "'256'"),
        ("", "''"),
        ("0x1", "'0x1'"),
        ("\xb2", "'\\xb2'"),  # SUPERSCRIPT TWO: str.isdigit() says True
        ("1\x1b[2J", "'1\\x1b[2J'"),
        ("9" * 5000, "'" + "9" * SHOWN_CHARS + "'... (5000 characters)"),
    ],
)
def test_exit_status_rejects_and_shows_what_was_received(text: str, shown_as: str) -> None:
    with pytest.raises(ValueError) as info:
        exit_status(text)
    assert str(info.value) == f"EXIT_STATUS={shown_as} is not a decimal number 0..255"
    assert str(info.value).isascii() and len(str(info.value)) < 120


@given(st.text(max_size=12))
def test_decimal_accepts_exactly_the_canonical_form(text: str) -> None:
    value = decimal(text, 4294967294)
    if value is None:
        assert not (text.isascii() and text.isdigit()) or str(int(text)) != text or int(text) > 4294967294
    else:
        assert str(value) == text and 0 <= value <= 4294967294
