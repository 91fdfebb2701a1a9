from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from guestinit.notify.address import AddressError, Target, parse_target
from guestinit.notify.message import MAX_MESSAGE_BYTES, encode, parse


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
