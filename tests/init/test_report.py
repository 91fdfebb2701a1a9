from __future__ import annotations

import json
import os
import socket
from pathlib import Path

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
