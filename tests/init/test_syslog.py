"""/dev/log and the ring: parsing, priorities and program names to kmsg, the bound on the
ring file, and a daemon's syslog line making it ready (log readiness reads the ring)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from guestinit.init.kmsg import Log
from guestinit.init.loop import Loop
from guestinit.init.root import Root
from guestinit.init.syslog import Ring, Syslog, parse


@pytest.mark.parametrize(
    ("datagram", "expected"),
    [
        (
            b"<30>Nov 26 16:15:36 nv-fabricmanager[812]: FM starting NvLink Inband",
            (30, "nv-fabricmanager", 812, "FM starting NvLink Inband"),
        ),
        (b"<11>Nov  6 01:02:03 persistenced: failed to open", (11, "persistenced", 0, "failed to open")),
        (b"<165>1 2026-11-26T16:15:36.000Z vm dcgm 77 ID47 - hello 5424", (165, "dcgm", 77, "hello 5424")),
        (b"<14>plain text without a tag", (14, "", 0, "plain text without a tag")),
        (b"no priority: at all\n", (13, "", 0, "no priority: at all")),
        (b"<999>too big", (191, "", 0, "too big")),
    ],
)
def test_parse(datagram: bytes, expected: tuple[int, str, int, str]) -> None:
    assert parse(datagram) == expected


def test_dev_log_to_kmsg_and_ring(tmp_path: Path) -> None:
    (tmp_path / "dev").mkdir()
    (tmp_path / "kmsg").write_text("")
    loop = Loop()
    ring = Ring(str(tmp_path / "run/syslog.log"))
    server = Syslog(
        Root(tmp_path),
        loop,
        Log(str(tmp_path / "kmsg")),
        ring,
        lambda pid, ident: "fm" if ident == "nv-fm" else None,
    )
    server.open()
    path = str(tmp_path / "dev/log")
    assert os.stat(path).st_mode & 0o777 == 0o666  # services running as other users can log
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
        client.sendto(b"<27>Nov 26 16:15:36 nv-fm[1]: GPU 0 lost", path)
    # from another process: the kernel-checked sender pid wins over the one the message claims
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import os, socket; s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); "
            f"s.sendto(b'<14>tool[4242]: from child', {path!r}); print(os.getpid())",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    child_pid = int(child.stdout)
    deadline = time.monotonic() + 5
    while server.received < 2 and time.monotonic() < deadline:
        loop.run_once(0.1)
    kmsg = (tmp_path / "kmsg").read_text()
    assert f"<3>nv-fm[{os.getpid()}]: GPU 0 lost\n" in kmsg  # priority 27 = daemon.err -> level 3
    assert f"<6>tool[{child_pid}]: from child\n" in kmsg
    lines = ring.since(0)
    assert [(line.service, line.ident, line.text) for line in lines] == [
        ("fm", "nv-fm", "GPU 0 lost"),
        (None, "tool", "from child"),
    ]
    text = (tmp_path / "run/syslog.log").read_text()
    assert f"<27> nv-fm[{os.getpid()}]: GPU 0 lost\n" in text
    server.close()
    ring.close()


def test_ring_file_stays_bounded_and_keeps_the_newest(tmp_path: Path) -> None:
    ring = Ring(str(tmp_path / "syslog.log"), limit_bytes=8192, memory_lines=100)
    for i in range(2000):
        ring.append("spam", 1, 6, f"line {i:05d} " + "x" * 40)
    data = (tmp_path / "syslog.log").read_bytes()
    assert len(data) <= 8192
    assert ring.rotations > 10
    assert data.endswith(b"line 01999 " + b"x" * 40 + b"\n")
    assert b"line 00000" not in data
    assert data.split(b"\n")[0].split()[2] == b"spam[1]:"  # the file starts on a whole line
    assert len(ring.lines) == 100 and ring.lines[-1].seq == 1999
    assert not (tmp_path / "syslog.log.tmp").exists()
    ring.close()
