"""The whole init (``pid1.run`` on a temporary root, as in test_pid1) given hostile configuration:
a bad service file, a FIFO, a cycle or a broken guestinit.toml costs the services concerned
(DEGRADED, with the reason in STATUS=), never the guest: READY still comes."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_pid1 import Guest


@pytest.fixture
def guest(tmp_path: Path) -> Iterator[Guest]:
    g = Guest(tmp_path, cmdline="guestinit.hugepages=3K:4")
    yield g
    g.close()


def test_bad_service_files_degrade_the_boot_and_ready_still_comes(guest: Guest) -> None:
    guest.service("fine", 'command = ["/bin/sleep", "60"]\n')
    guest.service("deep", "command = " + "[" * 5000 + "]" * 5000 + "\n")
    guest.service("nul", 'command = ["/bin/sleep\\u0000", "60"]\n')
    guest.service("a", 'command = ["/bin/sleep", "60"]\nafter = ["b"]\n')
    guest.service("b", 'command = ["/bin/sleep", "60"]\nafter = ["a"]\n')
    os.mkfifo(guest.path / "etc/guestinit/services.d/fifo.toml")
    (guest.path / "etc/guestinit/guestinit.toml").write_bytes(b'log = "debug"\nmode = "\xff"\n')
    guest.start()
    ready = guest.wait_for("READY")
    assert ready["READY"] == "1"
    assert ready["X_GUESTINIT_DEGRADED"].split(",") == ["a", "b", "deep", "fifo", "nul"]
    states = {s["name"]: s["state"] for s in json.loads(ready["X_GUESTINIT_SERVICES"])}
    assert states == {
        "a": "failed",
        "b": "failed",
        "deep": "failed",
        "fifo": "failed",
        "nul": "failed",
        "fine": "ready",
    }
    status = ready["STATUS"]
    assert "degraded: a, b, deep, fifo, nul" in status
    d = "/etc/guestinit/services.d"
    for reason in (
        "/etc/guestinit/guestinit.toml: not UTF-8 (line 2, byte 22): save it as UTF-8",
        "guestinit.hugepages=3K:4: '3K' is not a hugepage size of x86-64",
        f"{d}/deep.toml: command: arrays and tables nested more than 32 deep",
        f"{d}/fifo.toml: a FIFO, not a regular file: refused",
        f"{d}/a.toml: after: a cycle of 2 service(s) (a, b) can never start",
    ):
        assert reason in status, status
    assert guest.proc is not None
    os.kill(guest.proc.pid, signal.SIGTERM)
    guest.wait_for("X_SYSTEMD_SHUTDOWN")
    assert "Traceback" not in guest.finish()
