"""``guestctl listen``: the real command in a subprocess, fed by real senders."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from guestinit.host.listen.cli import printable, verdict
from guestinit.init.report import Sender
from guestinit.notify.address import Target

GUESTCTL = [sys.executable, "-c", "import sys; from guestinit.host.cli import main; sys.exit(main())"]


def start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*GUESTCTL, "listen", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_for(path: Path, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 10
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


def dgram(path: Path, data: bytes) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(data, str(path))


def test_ready_exits_0_and_prints_each_message_with_receive_time(tmp_path: Path) -> None:
    path = tmp_path / "n.sock"
    proc = start(f"unix-dgram:{path}", "--timeout", "20")
    wait_for(path, proc)
    dgram(path, b"STATUS=booting")
    dgram(path, b"X_SYSTEMD_SHUTDOWN=reboot\nEXIT_STATUS=0")  # neither ends the wait
    dgram(path, b"READY=1\nSTATUS=up\nX_GUESTINIT_VERSION=0.1")
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    blocks: list[list[str]] = []
    for line in out.splitlines():
        if line.startswith("    "):
            blocks[-1].append(line)
        else:
            blocks.append([line])
    assert len(blocks) == 3
    seconds, stamp, source = blocks[2][0].split("  ")  # "+0.123456 s  2026-...+00:00  unix-dgram:..."
    assert seconds.startswith("+") and float(seconds.removesuffix(" s")) >= 0
    assert stamp.endswith("+00:00") and source.startswith(f"unix-dgram:{path} pid ")
    assert blocks[2][1:] == ["    READY=1", "    STATUS=up", "    X_GUESTINIT_VERSION=0.1"]
    assert "    X_SYSTEMD_SHUTDOWN=reboot" in blocks[1]


def test_nonzero_exit_status_first_is_the_exit_code(tmp_path: Path) -> None:
    path = tmp_path / "n.sock"
    proc = start(f"unix:{path}", "--json")
    wait_for(path, proc)
    assert Sender(Target("unix", path=str(path))).send({"EXIT_STATUS": "3", "STATUS": "failed: no GPU"})
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 3
    records = [json.loads(line) for line in out.splitlines()]
    assert records[0]["event"] == "message" and records[0]["fields"]["EXIT_STATUS"] == "3"
    assert records[0]["received"].endswith("+00:00") and records[0]["received_s"] >= 0
    assert records[-1] == {"event": "exit", "outcome": "exit_status", "exit_status": 3}
    assert "EXIT_STATUS=3 failed: no GPU" in err


@pytest.mark.parametrize(
    ("value", "shown"), [("1_0", "'1_0'"), ("-1", "'-1'"), ("\u0663", "'\\u0663'"), (" 7 ", "' 7 '")]
)
def test_rejected_exit_status_is_reported_as_received(tmp_path: Path, value: str, shown: str) -> None:
    path = tmp_path / "n.sock"
    proc = start(f"unix-dgram:{path}", "--json")
    wait_for(path, proc)
    dgram(path, f"EXIT_STATUS={value}\nSTATUS=broken".encode())
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 1
    reason = f"EXIT_STATUS={shown} is not a decimal number 0..255: exiting 1"
    assert err.strip().splitlines()[-1] == f"guestctl listen: {reason} broken"
    records = [json.loads(line) for line in out.splitlines()]
    assert records[0]["fields"]["EXIT_STATUS"] == value  # the message itself as received
    assert records[-1] == {"event": "exit", "outcome": "bad_exit_status", "exit_status": 1, "reason": reason}


def test_timeout_exits_2(tmp_path: Path) -> None:
    proc = start(f"unix:{tmp_path / 'n.sock'}", "--timeout", "0.3", "--json")
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 2
    assert json.loads(out.splitlines()[-1]) == {"event": "exit", "outcome": "timeout", "exit_status": 2}
    assert "no READY within 0.3 s" in err


@pytest.mark.parametrize(
    "args",
    [["tcp:1"], ["unix:/x", "--timeout", "-1"], ["unix:/x", "--max-connections", "many"], []],
)
def test_usage_errors_are_one_line_exit_64(args: list[str]) -> None:
    proc = start(*args)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 64
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("guestctl listen")


def test_help_documents_limits_and_exit_codes() -> None:
    proc = start("--help")
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0
    for text in ("--max-message-bytes N", "(default 65536)", "--read-timeout S", "lines per message: 256"):
        assert text in out
    assert "  2   --timeout passed" in out and "hvsock:UDS_PATH:PORT" in out


def test_hostile_text_cannot_drive_the_terminal(tmp_path: Path) -> None:
    path = tmp_path / "n.sock"
    proc = start(f"unix-dgram:{path}")
    wait_for(path, proc)
    dgram(path, "READY=1\nSTATUS=\x1b[2J\x1b]0;pwned\x07 \u202eevil".encode())
    out, _ = proc.communicate(timeout=10)
    assert "\x1b" not in out and "\u202e" not in out
    assert "STATUS=\\x1b[2J\\x1b]0;pwned\\x07 \\u202eevil" in out


@pytest.mark.skipif(shutil.which("systemd-notify") is None, reason="systemd-notify not installed")
def test_systemd_notify_and_guest_senders_on_several_addresses(tmp_path: Path) -> None:
    """A host-side sd_notify client (the real systemd-notify) and a guest on a serial stream,
    one listener."""
    dg, serial = tmp_path / "notify.sock", tmp_path / "serial.sock"
    proc = start(f"unix-dgram:{dg}", f"serial:{serial}", "--json", "--timeout", "20")
    wait_for(serial, proc)
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(serial))
        s.sendall(b"STATUS=guest booting\n\n")
        time.sleep(0.2)
        env = {**os.environ, "NOTIFY_SOCKET": str(dg)}
        # --no-block: without it systemd-notify follows READY with a barrier (BARRIER=1), and this
        # listener exits on READY, so the barrier raced its exit (ENOENT once in CI). Barriers
        # are tested on a listener that stays up (test_listen.py).
        done = subprocess.run(
            ["systemd-notify", "--ready", "--no-block", "--status=host service up"], env=env, timeout=10
        )
        assert done.returncode == 0
        out, _ = proc.communicate(timeout=10)
    records = [json.loads(line) for line in out.splitlines()]
    assert records[0]["source"] == f"serial:{serial}" and records[0]["fields"] == {"STATUS": "guest booting"}
    assert records[1]["fields"] == {"READY": "1", "STATUS": "host service up"}
    assert records[1]["source"].startswith(f"unix-dgram:{dg} pid ")
    assert proc.returncode == 0


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"READY": "1"}, 0),
        ({"READY": "1", "EXIT_STATUS": "4"}, 4),
        ({"EXIT_STATUS": "0"}, None),
        ({"EXIT_STATUS": "300"}, 1),
        ({"EXIT_STATUS": "-2"}, 1),
        ({"EXIT_STATUS": "nope"}, 1),
        ({"EXIT_STATUS": "1_0"}, 1),  # not 10
        ({"EXIT_STATUS": "\u0663"}, 1),  # not 3
        ({"EXIT_STATUS": " 7 "}, 1),  # not 7
        ({"EXIT_STATUS": " 0", "READY": "1"}, 1),  # not a success either
        ({"EXIT_STATUS": "0", "READY": "1"}, 0),
        ({"READY": "0"}, None),
        ({"X_SYSTEMD_SHUTDOWN": "poweroff"}, None),
    ],
)
def test_verdict(fields: dict[str, str], code: int | None) -> None:
    assert verdict(fields) == code


def test_printable() -> None:
    assert printable("plain text é") == "plain text é"
    assert printable("a\tb\x00\u200b") == "a\\tb\\x00\\u200b"


def test_systemd_guest_over_hybrid_vsock(tmp_path: Path) -> None:
    """What a systemd guest sends to vmm.notify_socket (one stream connection per message, the
    keys of references §3), arriving the Firecracker way; a failing one exits with its status."""
    uds = tmp_path / "v.sock"
    proc = start(f"hvsock:{uds}:8888", "--json", "--timeout", "20")
    wait_for(tmp_path / "v.sock_8888", proc)
    for message in (
        b"X_SYSTEMD_HOSTNAME=guest\nX_SYSTEMD_MACHINE_ID=0123456789abcdef0123456789abcdef\n",
        b"READY=1\nSTATUS=Startup finished\nX_SYSTEMD_UNIT_ACTIVE=multi-user.target\n",
    ):
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(tmp_path / "v.sock_8888"))
            s.sendall(message)
    out, _ = proc.communicate(timeout=10)
    records = [json.loads(line) for line in out.splitlines()]
    assert records[0]["fields"]["X_SYSTEMD_HOSTNAME"] == "guest"
    assert records[1]["fields"]["X_SYSTEMD_UNIT_ACTIVE"] == "multi-user.target"
    assert proc.returncode == 0

    proc = start(f"hvsock:{uds}:8889", "--timeout", "20")
    wait_for(tmp_path / "v.sock_8889", proc)
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(tmp_path / "v.sock_8889"))
        s.sendall(b"X_SYSTEMD_SHUTDOWN=poweroff\nEXIT_STATUS=5\n")
    proc.communicate(timeout=10)
    assert proc.returncode == 5
