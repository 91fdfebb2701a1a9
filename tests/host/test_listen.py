"""The host listener on every transport that runs on this host (AF_VSOCK runs only inside a
guest: tests/boot/test_notify_boot.py), and its behaviour under bad input."""

from __future__ import annotations

import array
import os
import select
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guestinit.host.errors import UserError
from guestinit.host.listen.endpoint import Endpoint, parse_endpoint
from guestinit.host.listen.limits import Limits
from guestinit.host.listen.listener import Listener
from guestinit.notify.message import encode, encode_console_line


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
    assert first.source == f"serial:{path}" and first.wall > 0


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
    assert msg.source == f"unix-dgram:{path} pid {os.getpid()}"


def test_unix_dgram_abstract_socket() -> None:
    name = f"@guestinit-test-{os.getpid()}"
    with Listener([f"unix-dgram:{name}"]) as listener:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(b"READY=1", "\0" + name[1:])
        msg = listener.get(timeout=2)
    assert msg is not None and msg.fields == {"READY": "1"}


def test_hvsock_guest_connections_arrive_on_uds_path_port(tmp_path: Path) -> None:
    """Firecracker / Cloud Hypervisor: a guest connecting to host port 1234 reaches the host as a
    connection to the Unix socket <uds_path>_1234."""
    uds = tmp_path / "vsock.sock"
    with Listener([f"hvsock:{uds}:1234"]) as listener:
        assert (tmp_path / "vsock.sock_1234").exists()
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(tmp_path / "vsock.sock_1234"))
            s.sendall(encode({"READY": "1", "X_SYSTEMD_UNIT_ACTIVE": "multi-user.target"}))
        msg = listener.get(timeout=2)
    assert msg is not None and msg.fields["X_SYSTEMD_UNIT_ACTIVE"] == "multi-user.target"
    assert not (tmp_path / "vsock.sock_1234").exists()  # removed on close


def test_fd_passing_sender_gets_its_fds_closed(tmp_path: Path) -> None:
    """sd_notify_barrier() sends BARRIER=1 with the write end of a pipe and waits for the
    receiver to close it: the listener closes passed fds and does not report BARRIER."""
    path = tmp_path / "d.sock"
    with Listener([f"unix-dgram:{path}"]) as listener:
        r, w = os.pipe()
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(str(path))
            s.sendmsg([b"BARRIER=1"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [w]))])
            os.close(w)
            ready, _, _ = select.select([r], [], [], 2.0)
            assert ready and os.read(r, 1) == b""  # every write end closed: the barrier completes
            os.close(r)
            s.send(b"READY=1")
        msg = listener.get(timeout=2)
    assert msg is not None and msg.fields == {"READY": "1"}


@pytest.mark.skipif(shutil.which("systemd-notify") is None, reason="systemd-notify not installed")
def test_real_systemd_notify(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    env = {**os.environ, "NOTIFY_SOCKET": str(path)}
    with Listener([f"unix-dgram:{path}"]) as listener:
        done = subprocess.run(
            ["systemd-notify", "--ready", "--status=up and running"], env=env, timeout=10, check=False
        )
        msg = listener.get(timeout=2)
    assert done.returncode == 0
    assert msg is not None and msg.fields["READY"] == "1" and msg.fields["STATUS"] == "up and running"


def test_slow_sender_times_out_without_blocking_others(tmp_path: Path) -> None:
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
        assert any("no complete message within 0.3 s (5 bytes): dropped" in line for line in listener.log)
        assert listener.counts["timed_out"] == 1
        assert listener.get(timeout=0.1) is None  # the half message was never reported
        slow.close()


def test_connection_flood_evicts_oldest_so_a_new_sender_gets_through(tmp_path: Path) -> None:
    path = tmp_path / "u.sock"
    with Listener([f"unix:{path}"], Limits(max_connections=4, read_timeout_s=30)) as listener:
        idle = []
        for _ in range(10):
            s = socket.socket(socket.AF_UNIX)
            s.connect(str(path))
            s.sendall(b"X")
            idle.append(s)
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(path))
            s.sendall(b"READY=1\n")
        msg = listener.get(timeout=2)  # long before the 30 s read timeout
        assert msg is not None and msg.fields == {"READY": "1"}
        assert listener.counts["evicted"] >= 6
        for s in idle:
            s.close()


def test_oversized_stream_and_datagram_dropped_and_logged(tmp_path: Path) -> None:
    stream, dgram = tmp_path / "u.sock", tmp_path / "d.sock"
    with Listener([f"unix:{stream}", f"unix-dgram:{dgram}"], Limits(max_message_bytes=1024)) as listener:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(stream))
            try:
                s.sendall(b"A=" + b"x" * 5000)
            except OSError:
                pass  # the listener may close on us mid-send
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(b"B=" + b"y" * 5000, str(dgram))
            s.sendto(b"READY=1", str(dgram))
        msg = listener.get(timeout=2)
        assert msg is not None and msg.fields == {"READY": "1"}
        time.sleep(0.1)
        assert listener.counts["oversized"] == 1
        assert any("exceeds 1024" in line for line in listener.log)


def test_bad_lines_dropped_and_logged_good_lines_kept(tmp_path: Path) -> None:
    path = tmp_path / "d.sock"
    with Listener([f"unix-dgram:{path}"]) as listener:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(b"\xff\xfe=1\nno equals here\nlower=1\nSTATUS=ok\nX_A=\x00\n", str(path))
            s.sendto(b"\xc3\x28garbage only", str(path))
            s.sendto(b"READY=1", str(path))
        first = listener.get(timeout=2)
        second = listener.get(timeout=2)
    assert first is not None and first.fields == {"STATUS": "ok"}
    assert [d.split(": ", 1)[1] for d in first.dropped] == [
        "invalid UTF-8",
        "no '='",
        "invalid key 'lower'",
        "NUL in value of X_A",
    ]
    assert second is not None and second.fields == {"READY": "1"}  # the garbage-only one is not a message
    assert sum("invalid UTF-8" in line for line in listener.log) == 2


def test_queue_is_bounded(tmp_path: Path) -> None:
    path = tmp_path / "d.sock"
    with Listener([f"unix-dgram:{path}"], Limits(max_queued=5)) as listener:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            for i in range(20):
                s.sendto(f"STATUS={i}".encode(), str(path))
        time.sleep(0.3)
        assert listener.messages.qsize() == 5
        assert listener.counts["queue_full"] == 15


def test_log_is_rate_limited(tmp_path: Path) -> None:
    path = tmp_path / "d.sock"
    seen: list[str] = []
    with Listener([f"unix-dgram:{path}"], Limits(log_per_second=3), on_log=seen.append) as listener:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            for _ in range(50):
                s.sendto(b"garbage", str(path))
            time.sleep(1.1)
            s.sendto(b"garbage", str(path))
        time.sleep(0.2)
    assert len(seen) <= 3 + 1 + 1 + 1  # a second's burst, the summary, the next line
    assert any("more log lines suppressed" in line for line in seen)
    assert listener.counts["dropped_lines"] == 51


def test_console_file_followed_marked_lines_only(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    with Listener([f"console:{log}"]) as listener:
        time.sleep(0.05)  # the file does not exist yet: QEMU creates it when it starts
        with open(log, "wb") as f:
            f.write(b"[    1.0] Linux version 6.12\r\n")
            f.write(b"[    2.0] some noise " + encode_console_line({"STATUS": "half"})[:10])
            f.flush()
            time.sleep(0.1)
            f.write(b"\r\n" + b"GUESTINIT-NOTIFY not json\r\n")
            f.write(
                b"[    3.0] " + encode_console_line({"READY": "1", "STATUS": "a b"}).replace(b"\n", b"\r\n")
            )
        msg = listener.get(timeout=2)
        assert msg is not None and msg.fields == {"READY": "1", "STATUS": "a b"}
        assert msg.source == f"console:{log}"
        assert any("not a JSON object" in line for line in listener.log)
        # QEMU truncates the file when it restarts: the listener starts over
        log.write_bytes(encode_console_line({"STATUS": "again"}))
        again = listener.get(timeout=2)
        assert again is not None and again.fields == {"STATUS": "again"}


def test_stale_socket_replaced_regular_file_refused(tmp_path: Path) -> None:
    stale = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(stale))
    s.close()  # the path stays, nobody listens: what a killed listener leaves behind
    with Listener([f"unix:{stale}"]):
        pass
    regular = tmp_path / "file"
    regular.write_text("precious")
    with pytest.raises(UserError, match="already exists"):
        Listener([f"unix:{regular}"]).start()
    assert regular.read_text() == "precious"
    with Listener([f"unix:{tmp_path / 'live.sock'}"]), pytest.raises(UserError, match="already exists"):
        Listener([f"unix:{tmp_path / 'live.sock'}"]).start()


@pytest.mark.parametrize(
    "text",
    [
        "nope",
        "vsock:x",
        "hvsock:/x",
        "hvsock:/x:y",
        "tcp:1:2",
        "vsock:0",
        "vsock:4294967295",
        "unix:@x",
        "vsock:1_0",
        "vsock: 7",
        "vsock:\u0663",
        "vsock:0x10",
        "vsock-seqpacket:",
        "vsock-seqpacket:-1",
        "vsock-stream:7",
    ],
)
def test_bad_endpoint(text: str) -> None:
    with pytest.raises(UserError) as info:
        parse_endpoint(text)
    assert repr(text) in str(info.value)


def test_endpoint_forms() -> None:
    # Parsing only: tests never bind AF_VSOCK on this host (its /dev/vsock is not ours).
    assert parse_endpoint("vsock:8888") == Endpoint("vsock", port=8888)
    assert parse_endpoint("vsock-seqpacket:8888") == Endpoint("vsock-seqpacket", port=8888)
    assert str(parse_endpoint("vsock-seqpacket:4294967294")) == "vsock-seqpacket:4294967294"
    assert parse_endpoint("hvsock:/run/fc/v.sock:1024") == Endpoint(
        "hvsock", path="/run/fc/v.sock", port=1024
    )
    assert str(parse_endpoint("unix-dgram:@sd")) == "unix-dgram:@sd"
    assert parse_endpoint("console:/tmp/c.log") == Endpoint("console", path="/tmp/c.log")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunks=st.lists(st.binary(min_size=1, max_size=3000), max_size=12))
def test_listener_survives_any_serial_stream(tmp_path: Path, chunks: list[bytes]) -> None:
    """Whatever bytes arrive on the serial stream, in whatever pieces, the listener keeps going:
    after a blank line resynchronises the stream, the next message is reported intact."""
    path = tmp_path / f"s{time.monotonic_ns()}.sock"
    with Listener([f"serial:{path}"], Limits(max_message_bytes=4096)) as listener:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(path))
            for chunk in chunks:
                s.sendall(chunk)
            s.sendall(b"\n\nREADY=1\nX_PROBE=end\n\n")
            deadline = time.monotonic() + 5
            found = None
            while found is None and time.monotonic() < deadline:
                msg = listener.get(timeout=0.5)
                if msg is not None and msg.fields.get("X_PROBE") == "end":
                    found = msg
        assert found is not None and found.fields == {"READY": "1", "X_PROBE": "end"}
        assert listener.counts["internal_errors"] == 0


def test_guestctl_boot_vsock_addresses_agree() -> None:
    """guestctl boot's vhost-vsock path: the guest is told vsock-stream:2:PORT (the host's CID)
    and the host listens on vsock:PORT; argument construction itself is in test_qemu.py."""
    from guestinit.host import qemu
    from guestinit.notify.address import Target, parse_target

    append = qemu.notify_append("vsock", 9123)
    key, _, value = append.partition("=")
    assert key == "guestinit.notify"
    assert parse_target(value) == Target("vsock-stream", cid=2, port=9123)
    assert parse_endpoint("vsock:9123") == Endpoint("vsock", port=9123)


# vsock-seqpacket: systemd's seqpacket notify clients --------------------------------------


@pytest.fixture
def seqpacket_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """AF_VSOCK is never opened on this host: the vsock-seqpacket endpoint is opened as an AF_UNIX
    SOCK_SEQPACKET socket instead, which keeps record boundaries, cuts a record longer than the
    read and ends with a zero-length read the same way. Everything past opening the socket
    (accepting, reading records, deadlines, closing) is the real listener's. The real AF_VSOCK
    endpoint runs inside a guest: tests/boot/test_notify_guest.py."""
    from guestinit.host.listen import listener as listener_module
    from guestinit.host.listen import transports

    path = tmp_path / "seq.sock"

    def server(ep: Endpoint, paths: list[str]) -> socket.socket:
        if ep.kind != "vsock-seqpacket":
            return transports.server(ep, paths)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.bind(str(path))
        sock.listen(16)
        sock.setblocking(False)
        return sock

    monkeypatch.setattr(listener_module, "server", server)
    return path


def _seqpacket(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.settimeout(5)
    s.connect(str(path))
    return s


def test_seqpacket_client_as_systemd_sends(seqpacket_path: Path) -> None:
    """sd_notify on AF_VSOCK seqpacket: one record, SHUT_WR, then it waits for the listener to
    close (a byte instead of EOF would be a protocol error to it)."""
    with Listener(["vsock-seqpacket:7777"]) as listener:
        with _seqpacket(seqpacket_path) as s:
            s.send(b"READY=1\nSTATUS=Startup finished\nX_SYSTEMD_UNIT_ACTIVE=multi-user.target\n")
            s.shutdown(socket.SHUT_WR)
            assert s.recv(1) == b""  # the listener closed after the end of the connection
        msg = listener.get(timeout=2)
    assert msg is not None and msg.source == "vsock-seqpacket:7777"
    assert msg.fields == {
        "READY": "1",
        "STATUS": "Startup finished",
        "X_SYSTEMD_UNIT_ACTIVE": "multi-user.target",
    }


def test_seqpacket_each_record_is_one_message(seqpacket_path: Path) -> None:
    with Listener(["vsock-seqpacket:7777"]) as listener:
        with _seqpacket(seqpacket_path) as s:
            s.send(b"STATUS=one")  # no final newline: records are not joined
            s.send(b"READY=1")
            s.shutdown(socket.SHUT_WR)
            assert s.recv(1) == b""
        got = [listener.get(timeout=2), listener.get(timeout=2)]
    assert [m.fields if m else None for m in got] == [{"STATUS": "one"}, {"READY": "1"}]


def test_seqpacket_oversized_record_dropped_next_one_kept(seqpacket_path: Path) -> None:
    with Listener(["vsock-seqpacket:7777"], Limits(max_message_bytes=1024)) as listener:
        with _seqpacket(seqpacket_path) as s:
            s.send(b"STATUS=" + b"x" * 5000)
            s.send(b"READY=1")
            s.shutdown(socket.SHUT_WR)
            assert s.recv(1) == b""
        msg = listener.get(timeout=2)
        assert msg is not None and msg.fields == {"READY": "1"}
        assert listener.get(timeout=0.1) is None
        assert any("message of 1025 bytes exceeds 1024" in line for line in listener.log)


def test_seqpacket_connection_left_open_is_closed_at_the_deadline(seqpacket_path: Path) -> None:
    with Listener(["vsock-seqpacket:7777"], Limits(read_timeout_s=0.3)) as listener:
        with _seqpacket(seqpacket_path) as s:
            s.send(b"READY=1")
            msg = listener.get(timeout=2)  # delivered at once, not at the end of the connection
            assert msg is not None and msg.fields == {"READY": "1"}
            assert s.recv(1) == b""  # closed by the listener once its read timeout passed
        assert listener.counts["timed_out"] == 1
        assert any("connection not closed within 0.3 s: closed" in line for line in listener.log)


@pytest.mark.parametrize("records", [True, False])
def test_guest_sender_ends_its_connection_as_systemd_does(seqpacket_path: Path, records: bool) -> None:
    """guestinit's connection send (what it does on AF_VSOCK after connecting) against the
    listener: a seqpacket message is one record and the sender returns once the listener has
    closed; a stream message is read to its end."""
    from guestinit.init.report import send_message

    kind = socket.SOCK_SEQPACKET if records else socket.SOCK_STREAM
    stream_path = seqpacket_path.with_name("stream.sock")
    with Listener(["vsock-seqpacket:7777", f"unix:{stream_path}"]) as listener:
        with socket.socket(socket.AF_UNIX, kind) as s:
            s.settimeout(5)
            s.connect(str(seqpacket_path if records else stream_path))
            send_message(s, encode({"READY": "1"}), records)
            if records:  # it returned after the listener closed, which it does after queueing
                assert listener.messages.qsize() == 1
        msg = listener.get(timeout=2)
    assert msg is not None and msg.fields == {"READY": "1"}
    assert msg.source == ("vsock-seqpacket:7777" if records else f"unix:{stream_path}")
