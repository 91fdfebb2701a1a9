from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from guestinit.host.errors import UserError
from guestinit.host.listen import Listener, parse_endpoint


def test_serial_stream_carries_several_messages(tmp_path: Path) -> None:
    path = tmp_path / "n.sock"
    with Listener([f"serial:{path}"]) as listener:
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(path))
        s.sendall(b"READY=1\nSTATUS=a\n\nSTATUS=b\n")
        s.sendall(b"\n")
        first = listener.get(timeout=2)
        second = listener.get(timeout=2)
        s.close()
    assert first is not None and first.fields == {"READY": "1", "STATUS": "a"}
    assert second is not None and second.fields == {"STATUS": "b"}


def test_unix_stream_message_per_connection(tmp_path: Path) -> None:
    path = tmp_path / "u.sock"
    with Listener([f"unix:{path}"]) as listener:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(path))
            s.sendall(b"READY=1\n")
        msg = listener.get(timeout=2)
    assert msg is not None and msg.fields == {"READY": "1"}


def test_unix_dgram_like_sd_notify(tmp_path: Path) -> None:
    path = tmp_path / "d.sock"
    with Listener([f"unix-dgram:{path}"]) as listener:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(b"READY=1\nSTATUS=up", str(path))
        msg = listener.get(timeout=2)
    assert msg is not None and msg.fields == {"READY": "1", "STATUS": "up"}


def test_slow_sender_times_out_without_blocking_others(tmp_path: Path) -> None:
    from guestinit.host.listen import Limits

    path = tmp_path / "u.sock"
    with Listener([f"unix:{path}"], Limits(read_timeout_s=0.3)) as listener:
        slow = socket.socket(socket.AF_UNIX)
        slow.connect(str(path))
        slow.sendall(b"READY")
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(path))
            s.sendall(b"READY=1\n")
        msg = listener.get(timeout=2)
        assert msg is not None and msg.fields == {"READY": "1"}
        time.sleep(0.6)
        assert any("read timeout" in line for line in listener.log)
        slow.close()


@pytest.mark.parametrize("text", ["nope", "vsock:x", "hvsock:/x", "tcp:1:2", "vsock:0"])
def test_bad_endpoint(text: str) -> None:
    with pytest.raises(UserError) as info:
        parse_endpoint(text)
    assert repr(text) in str(info.value)
