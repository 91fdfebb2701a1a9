from __future__ import annotations

import errno
import json
import os
import socket
import time
from pathlib import Path

import pytest

from guestinit.init.report import Sender, find_virtio_port
from guestinit.notify.address import Target


def _fake_ports(tmp_path: Path) -> tuple[Path, Path]:
    sys_root = tmp_path / "sys"
    dev_root = tmp_path / "dev"
    for port, name in (("vport1p1", "org.qemu.guest_agent.0"), ("vport2p1", "guestinit.notify")):
        (sys_root / "class/virtio-ports" / port).mkdir(parents=True)
        (sys_root / "class/virtio-ports" / port / "name").write_text(name + "\n")
    dev_root.mkdir()
    return sys_root, dev_root


def test_find_virtio_port_by_name(tmp_path: Path) -> None:
    sys_root, dev_root = _fake_ports(tmp_path)
    assert find_virtio_port(str(sys_root), str(dev_root), "guestinit.notify") == str(dev_root / "vport2p1")
    assert find_virtio_port(str(sys_root), str(dev_root), "absent") is None


def test_serial_send_ends_with_blank_line(tmp_path: Path) -> None:
    sys_root, dev_root = _fake_ports(tmp_path)
    (dev_root / "vport2p1").write_bytes(b"")
    sender = Sender(Target("serial", path="guestinit.notify"), str(sys_root), str(dev_root))
    assert sender.send({"READY": "1", "STATUS": "ok"})
    assert (dev_root / "vport2p1").read_bytes() == b"READY=1\nSTATUS=ok\n\n"


def test_unix_dgram_send(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        sender = Sender(Target("unix", path=str(path)))
        assert sender.send({"READY": "1"})
        assert server.recv(1024) == b"READY=1\n"


def test_absent_listener_retried_in_background(tmp_path: Path) -> None:
    path = tmp_path / "late.sock"
    sender = Sender(Target("unix", path=str(path)), max_backoff_s=0.05)
    assert sender.send({"READY": "1"}) is False  # nobody listens yet: queued, boot goes on
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        server.settimeout(5)
        assert server.recv(1024) == b"READY=1\n"
    assert sender.flush(2.0)


def test_console_line_is_marked_json(tmp_path: Path) -> None:
    console = tmp_path / "console"
    console.write_text("")
    sender = Sender(Target("console"), console=str(console))
    sender.send({"READY": "1", "STATUS": "a b"})
    line = console.read_text()
    assert line.startswith("GUESTINIT-NOTIFY ")
    assert json.loads(line.split(" ", 1)[1]) == {"READY": "1", "STATUS": "a b"}
    assert os.path.getsize(console) == len(line)


def test_order_kept_across_background_retries(tmp_path: Path) -> None:
    path = tmp_path / "late.sock"
    sender = Sender(Target("unix", path=str(path)), max_backoff_s=0.05)
    assert sender.send({"STATUS": "1"}) is False
    assert sender.send({"READY": "1"}) is False  # queued behind the first, not tried out of order
    assert sender.send({"X_SYSTEMD_SHUTDOWN": "poweroff"}) is False
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        server.settimeout(5)
        got = [server.recv(1024) for _ in range(3)]
    assert got == [b"STATUS=1\n", b"READY=1\n", b"X_SYSTEMD_SHUTDOWN=poweroff\n"]
    assert sender.flush(2.0) and sender.pending == 0


def test_flush_gives_up_at_its_deadline(tmp_path: Path) -> None:
    sender = Sender(Target("unix", path=str(tmp_path / "nobody")), max_backoff_s=10)
    sender.send({"READY": "1"})
    assert sender.flush(0.3) is False
    assert sender.pending == 1 and "No such file" in sender.last_error


def test_pending_is_bounded(tmp_path: Path) -> None:
    from guestinit.init.report import MAX_PENDING

    sender = Sender(Target("unix", path=str(tmp_path / "nobody")), max_backoff_s=10)
    for i in range(MAX_PENDING + 10):
        sender.send({"STATUS": str(i)})
    assert sender.pending == MAX_PENDING and sender.dropped == 10


def _fifo_port(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A virtio port whose device is a FIFO: like a port whose host side is not connected,
    writing to it would block (here: ENXIO without a reader, EAGAIN when the pipe is full)."""
    sys_root = tmp_path / "sys"
    dev_root = tmp_path / "dev"
    (sys_root / "class/virtio-ports/vport1p1").mkdir(parents=True)
    (sys_root / "class/virtio-ports/vport1p1/name").write_text("guestinit.notify\n")
    dev_root.mkdir()
    os.mkfifo(dev_root / "vport1p1")
    return sys_root, dev_root, dev_root / "vport1p1"


def test_serial_port_not_connected_does_not_block_boot(tmp_path: Path) -> None:
    sys_root, dev_root, fifo = _fifo_port(tmp_path)
    sender = Sender(
        Target("serial", path="guestinit.notify"), str(sys_root), str(dev_root), max_backoff_s=0.05
    )
    assert sender.send({"READY": "1"}) is False  # no reader: queued, send() returned
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        assert sender.flush(3.0)
        assert os.read(reader, 1024) == b"READY=1\n\n"
    finally:
        os.close(reader)


def test_serial_half_written_message_is_finished_not_repeated(tmp_path: Path) -> None:
    sys_root, dev_root, fifo = _fifo_port(tmp_path)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        sender = Sender(
            Target("serial", path="guestinit.notify"), str(sys_root), str(dev_root), max_backoff_s=0.05
        )
        big = {"X_A": "a" * 40000}
        assert sender.send(big) is True  # fits in the 64 KiB pipe
        assert sender.send({"X_B": "b" * 40000}) is False  # only partly written: the rest waits
        received = b""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(received) < 80008:
            try:
                received += os.read(reader, 65536)
            except BlockingIOError:
                time.sleep(0.01)
        assert received == b"X_A=" + b"a" * 40000 + b"\n\n" + b"X_B=" + b"b" * 40000 + b"\n\n"
        assert sender.flush(1.0)
    finally:
        os.close(reader)


def test_shutdown_and_failure_reports_reach_the_host_listener(tmp_path: Path) -> None:
    """What PID 1 sends on power-off and on failure, through the real listener."""
    from guestinit.host.listen.listener import Listener

    path = tmp_path / "n.sock"
    with Listener([f"unix-dgram:{path}"]) as listener:
        sender = Sender(Target("unix", path=str(path)))
        assert sender.send({"READY": "1"})
        assert sender.send({"EXIT_STATUS": "3", "STATUS": "failed: ValueError: bad\nsecond line"})
        assert sender.send({"STATUS": "shutting down", "X_SYSTEMD_SHUTDOWN": "poweroff"})
        got = [listener.get(timeout=2) for _ in range(3)]
    assert [m.fields if m else None for m in got] == [
        {"READY": "1"},
        {"EXIT_STATUS": "3", "STATUS": "failed: ValueError: bad second line"},
        {"STATUS": "shutting down", "X_SYSTEMD_SHUTDOWN": "poweroff"},
    ]


def test_unix_stream_target_and_abstract_address(tmp_path: Path) -> None:
    from guestinit.host.listen.listener import Listener

    with Listener([f"unix:{tmp_path / 's.sock'}", f"unix-dgram:@gi-report-{os.getpid()}"]) as listener:
        assert Sender(Target("unix", path=str(tmp_path / "s.sock"))).send({"READY": "1"})
        assert Sender(Target("unix", path=f"@gi-report-{os.getpid()}")).send({"STATUS": "abstract"})
        got = sorted(str(m.fields if m else None) for m in (listener.get(2), listener.get(2)))
    assert got == ["{'READY': '1'}", "{'STATUS': 'abstract'}"]


def test_console_payload_is_cut_to_fit_one_line(tmp_path: Path) -> None:
    from guestinit.notify.message import MAX_CONSOLE_LINE_BYTES, parse_console_line

    console = tmp_path / "console"
    console.write_text("")
    sender = Sender(Target("console"), console=str(console))
    assert sender.send({"READY": "1", "X_BIG": "\u00e9" * 60000})  # 6 bytes each once escaped
    line = console.read_bytes()
    assert len(line) <= MAX_CONSOLE_LINE_BYTES
    parsed = parse_console_line(line)
    assert parsed is not None and parsed.fields["READY"] == "1" and parsed.fields["X_BIG"].endswith("...")


def test_off_sends_nothing() -> None:
    sender = Sender(Target("off"))
    assert sender.send({"READY": "1"}) and sender.sent == 0


class _FakeVsock:
    """A stand-in for the ``_socket`` module on a guest with virtio-vsock (AF_VSOCK is never
    opened on this host, so the tests call ``_send_vsock`` itself: a Sender's retry thread
    could outlive the stand-in): no datagram transport (socket() fails with ENODEV, as the kernel does
    without one), and a host that listens with the socket type ``listening`` only (a connection
    of another type is reset, as virtio-vsock does). Records every call."""

    def __init__(
        self, listening: int, busy_ports: int = 0, bind_errno: int = 0, lingering: tuple[int, ...] = ()
    ) -> None:
        self.listening = listening
        self.busy_ports = busy_ports  # the first N privileged ports are taken
        self.bind_errno = bind_errno
        self.lingering = lingering  # the listener still holds a connection from these ports
        self.calls: list[tuple[object, ...]] = []
        for name in ("AF_VSOCK", "SOCK_STREAM", "SOCK_SEQPACKET", "SOCK_DGRAM", "SHUT_WR", "VMADDR_CID_ANY"):
            setattr(self, name, getattr(socket, name))

    def socket(self, family: int, kind: int) -> _FakeVsockSocket:
        if kind == socket.SOCK_DGRAM:
            self.calls.append(("socket", kind, "ENODEV"))
            raise OSError(errno.ENODEV, "No such device")
        self.calls.append(("socket", kind))
        return _FakeVsockSocket(self, kind)


class _FakeVsockSocket:
    def __init__(self, module: _FakeVsock, kind: int) -> None:
        self.module = module
        self.kind = kind
        self.port = 0

    def settimeout(self, timeout: float) -> None:
        pass

    def bind(self, address: tuple[int, int]) -> None:
        if self.module.bind_errno:
            raise OSError(self.module.bind_errno, "bind")
        if address[1] > 1023 - self.module.busy_ports:
            raise OSError(errno.EADDRINUSE, "in use")
        self.module.calls.append(("bind", address[1]))
        self.port = address[1]

    def connect(self, address: tuple[int, int]) -> None:
        if self.kind != self.module.listening or self.port in self.module.lingering:
            self.module.calls.append(("connect", self.kind, "ECONNRESET"))
            raise ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
        self.module.calls.append(("connect", self.kind))

    def send(self, data: bytes) -> int:
        self.module.calls.append(("send", data))
        return len(data)

    def sendall(self, data: bytes) -> None:
        self.module.calls.append(("sendall", data))

    def shutdown(self, how: int) -> None:
        self.module.calls.append(("shutdown", how))

    def recv(self, size: int) -> bytes:
        self.module.calls.append(("recv", size))
        return b""

    def close(self) -> None:
        pass


def test_vsock_address_read_as_systemd_reads_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """``vsock:``: datagram first (none on virtio-vsock), then seqpacket, sent as sd_notify sends
    it: a privileged source port, one record, SHUT_WR, then a wait for the listener to close."""
    from guestinit.init import report

    fake = _FakeVsock(listening=socket.SOCK_SEQPACKET, busy_ports=2)
    monkeypatch.setattr(report, "socket", fake)
    monkeypatch.setattr(report, "_last_port", [report.PRIVILEGED_PORT + 1])  # a first message
    report._send_vsock(Target("vsock", cid=2, port=8888), b"READY=1\n", 0.5)
    assert fake.calls == [
        ("socket", socket.SOCK_DGRAM, "ENODEV"),
        ("socket", socket.SOCK_SEQPACKET),
        ("bind", 1021),  # 1023 and 1022 were taken
        ("connect", socket.SOCK_SEQPACKET),
        ("send", b"READY=1\n"),
        ("shutdown", socket.SHUT_WR),
        ("recv", 1),
    ]


def test_each_vsock_connection_comes_from_the_next_privileged_port(monkeypatch: pytest.MonkeyPatch) -> None:
    """The listener's end of the last connection can outlive the sender's for a moment; a new
    connection from the same port is then reset at connect(), so consecutive messages take
    consecutive ports downwards, round again below 1."""
    from guestinit.init import report

    fake = _FakeVsock(listening=socket.SOCK_STREAM)
    monkeypatch.setattr(report, "socket", fake)
    monkeypatch.setattr(report, "_last_port", [report.PRIVILEGED_PORT + 1])
    for _ in range(3):
        report._send_vsock(Target("vsock-stream", cid=2, port=8888), b"READY=1\n", 0.5)
    assert [c[1] for c in fake.calls if c[0] == "bind"] == [1023, 1022, 1021]
    monkeypatch.setattr(report, "_last_port", [1])
    report._send_vsock(Target("vsock-stream", cid=2, port=8888), b"READY=1\n", 0.5)
    assert [c[1] for c in fake.calls if c[0] == "bind"][-1] == 1023


def test_vsock_address_falls_back_to_a_stream_listener(monkeypatch: pytest.MonkeyPatch) -> None:
    from guestinit.init import report

    fake = _FakeVsock(listening=socket.SOCK_STREAM, bind_errno=errno.EACCES)  # not root: no bind
    monkeypatch.setattr(report, "socket", fake)
    report._send_vsock(Target("vsock", cid=2, port=8888), b"READY=1\n", 0.5)
    assert fake.calls[-5:] == [
        ("connect", socket.SOCK_SEQPACKET, "ECONNRESET"),
        ("socket", socket.SOCK_STREAM),
        ("connect", socket.SOCK_STREAM),
        ("sendall", b"READY=1\n"),
        ("shutdown", socket.SHUT_WR),
    ]


def test_vsock_seqpacket_address_uses_seqpacket_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from guestinit.init import report

    fake = _FakeVsock(listening=socket.SOCK_STREAM)
    monkeypatch.setattr(report, "socket", fake)
    with pytest.raises(report.SendError, match="reset"):
        report._send_vsock(Target("vsock-seqpacket", cid=2, port=8888), b"READY=1\n", 0.5)
    sockets = [c[:2] for c in fake.calls if c[0] == "socket"]
    assert sockets == [("socket", socket.SOCK_SEQPACKET)] * report.CONNECT_ATTEMPTS


def test_a_connection_reset_at_connect_goes_again_from_the_next_port(monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process's sender (each counts down from 1023) used this port a moment ago and the
    listener still holds its end: connect() is reset and nothing was sent, so the message goes
    again from the next port, once."""
    from guestinit.init import report

    fake = _FakeVsock(listening=socket.SOCK_STREAM, lingering=(1023,))
    monkeypatch.setattr(report, "socket", fake)
    monkeypatch.setattr(report, "_last_port", [report.PRIVILEGED_PORT + 1])
    report._send_vsock(Target("vsock-stream", cid=2, port=8888), b"READY=1\n", 0.5)
    assert fake.calls == [
        ("socket", socket.SOCK_STREAM),
        ("bind", 1023),
        ("connect", socket.SOCK_STREAM, "ECONNRESET"),
        ("socket", socket.SOCK_STREAM),
        ("bind", 1022),
        ("connect", socket.SOCK_STREAM),
        ("sendall", b"READY=1\n"),
        ("shutdown", socket.SHUT_WR),
    ]
    fake = _FakeVsock(listening=socket.SOCK_STREAM, lingering=(1021, 1020))  # twice: given up
    monkeypatch.setattr(report, "socket", fake)
    with pytest.raises(report.SendError, match="reset"):
        report._send_vsock(Target("vsock-stream", cid=2, port=8888), b"READY=1\n", 0.5)
    assert not any(c[0] == "sendall" for c in fake.calls)
