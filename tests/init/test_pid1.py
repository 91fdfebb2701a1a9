"""PID 1 duties, run for real against a temporary root: the whole ``pid1.run`` (boot, supervise,
shut down or fail closed) in a child process that reports over a Unix notify socket, signals
sent to it, a power-button event written to a FIFO standing in for /dev/input/eventN, and an
orphan storm re-parented to a subreaper."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import notify_inbox
import pytest

from guestinit.init.loop import Loop, SignalFd
from guestinit.init.power_button import KEY_POWER, has_key
from guestinit.init.reaper import Reaper

REPO = Path(__file__).resolve().parents[2]
PY = "/usr/bin/python3"
DRIVER = """
import sys, time
sys.path.insert(0, sys.argv[2])
from guestinit.init.kmsg import Log
from guestinit.init.pid1 import run
from guestinit.init.root import Root
root = Root(sys.argv[1])
run(root, Log(root("/kmsg")), None, time.clock_gettime(time.CLOCK_BOOTTIME))
print("run returned", flush=True)
"""


class Guest:
    """A temporary guest root and guestinit running on it as a (non-PID-1) process."""

    def __init__(self, tmp_path: Path, cmdline: str = "") -> None:
        self.path = tmp_path / "root"
        for d in ("etc/guestinit/services.d", "dev", "run", "proc/sys/kernel", "sys", "shared"):
            (self.path / d).mkdir(parents=True, exist_ok=True)
        (self.path / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
        (self.path / "etc/group").write_text("root:x:0:\n")
        (self.path / "kmsg").write_text("")
        self.sock_path = tmp_path / "notify.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.sock_path))
        (self.path / "proc/cmdline").write_text(
            f"console=ttyS0 quiet guestinit.notify=unix:{self.sock_path} {cmdline}\n"
        )
        self.proc: subprocess.Popen[str] | None = None
        self.received: list[dict[str, str]] = []

    def service(self, name: str, text: str) -> None:
        (self.path / f"etc/guestinit/services.d/{name}.toml").write_text(textwrap.dedent(text))

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", DRIVER, str(self.path), str(REPO)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def wait_for(self, key: str, timeout: float = 30.0) -> dict[str, str]:
        """The first message (received so far or next) that has ``key``."""
        return notify_inbox.wait_for(self.sock, self.received, key, timeout, lambda: self.kmsg()[-3000:])

    def finish(self, timeout: float = 30.0) -> str:
        assert self.proc is not None
        out, _ = self.proc.communicate(timeout=timeout)
        assert self.proc.returncode == 0, out
        return out

    def kmsg(self) -> str:
        return (self.path / "kmsg").read_text()

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()
        self.sock.close()


@pytest.fixture
def guest(tmp_path: Path) -> Iterator[Guest]:
    g = Guest(tmp_path)
    yield g
    g.close()


def ordered_services(g: Guest) -> None:
    """first <- second <- third (after), each logging its SIGTERM to /shared/events."""
    events = g.path / "shared/events"
    for name, after in (("first", []), ("second", ["first"]), ("third", ["second"])):
        code = textwrap.dedent(f"""
            import signal, sys
            def stop(*_):
                open("{events}", "a").write("stop {name}\\n")
                sys.exit(0)
            signal.signal(signal.SIGTERM, stop)
            print("serving", flush=True)
            while True:
                signal.pause()
        """)
        g.service(
            name,
            f"command = {json.dumps([PY, '-c', code])}\nafter = {json.dumps(after)}\n"
            'ready = { log = "serving" }\n',
        )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGPWR, signal.SIGINT])
def test_shutdown_signals_stop_services_in_reverse_order(guest: Guest, sig: signal.Signals) -> None:
    """SIGTERM (VMM, agent), SIGPWR, SIGINT (what the kernel sends init for Ctrl-Alt-Del once
    CAD is disabled): one clean shutdown."""
    ordered_services(guest)
    guest.start()
    ready = guest.wait_for("READY")
    assert ready["READY"] == "1" and "X_GUESTINIT_DEGRADED" not in ready
    services = {s["name"]: s["state"] for s in json.loads(ready["X_GUESTINIT_SERVICES"])}
    assert services == {"first": "ready", "second": "ready", "third": "ready"}
    assert guest.proc is not None
    os.kill(guest.proc.pid, sig)
    final = guest.wait_for("X_SYSTEMD_SHUTDOWN")
    assert final["X_SYSTEMD_SHUTDOWN"] == "poweroff"
    stopped = json.loads(final["X_GUESTINIT_STOPPED"])
    assert [s["name"] for s in stopped] == ["third", "second", "first"]
    assert all(s["how"] == "SIGTERM" for s in stopped)
    assert f"powering off (signal {sig.name} from pid {os.getpid()})" in final["STATUS"]
    assert (guest.path / "shared/events").read_text() == "stop third\nstop second\nstop first\n"
    assert "run returned" in guest.finish()
    assert any(m.get("STATUS", "").startswith("shutting down") for m in guest.received)


def test_power_button_press_is_the_same_shutdown(guest: Guest) -> None:
    """QEMU's system_powerdown arrives as KEY_POWER on the ACPI button's event device: here
    a FIFO where /dev/input/event3 would be, with the sysfs capability bitmap the kernel shows."""
    caps = guest.path / "sys/class/input/event3/device/capabilities"
    caps.mkdir(parents=True)
    (caps / "key").write_text("10000000000000 0\n")  # the ACPI power button's: KEY_POWER only
    assert has_key("10000000000000 0", KEY_POWER)
    (guest.path / "sys/class/input/event0/device/capabilities").mkdir(parents=True)
    (guest.path / "sys/class/input/event0/device/capabilities/key").write_text("0\n")  # not a button
    (guest.path / "dev/input").mkdir()
    fifo = guest.path / "dev/input/event3"
    os.mkfifo(fifo)
    ordered_services(guest)
    guest.start()
    guest.wait_for("READY")
    assert "power button: /dev/input/event3" in guest.kmsg()
    with open(fifo, "wb") as f:
        event = struct.Struct("@llHHi")
        f.write(event.pack(0, 0, 4, 4, 0x66) + event.pack(0, 0, 1, KEY_POWER, 1) + event.pack(0, 0, 0, 0, 0))
    final = guest.wait_for("X_SYSTEMD_SHUTDOWN")
    assert "powering off (power button (/dev/input/event3))" in final["STATUS"]
    assert [s["name"] for s in json.loads(final["X_GUESTINIT_STOPPED"])] == ["third", "second", "first"]
    guest.finish()


def test_critical_service_failing_fails_closed(guest: Guest) -> None:
    guest.service("helper", 'command = ["/bin/sleep", "60"]\n')
    guest.service(
        "agent", 'command = ["/bin/false"]\nafter = ["*"]\ncritical = true\nready = { file = "/never" }\n'
    )
    guest.start()
    failed = guest.wait_for("EXIT_STATUS")
    assert failed["EXIT_STATUS"] == "2"
    assert failed["STATUS"] == "failed: critical service agent failed: exited with 1 before it was ready"
    assert guest.wait_for("X_SYSTEMD_SHUTDOWN")["X_SYSTEMD_SHUTDOWN"] == "poweroff"
    assert not any("READY" in m for m in guest.received)
    guest.finish()
    assert "helper: stopping" in guest.kmsg()


def test_critical_failure_after_ready_fails_closed(guest: Guest) -> None:
    guest.service(
        "agent",
        f"command = {json.dumps([PY, '-c', 'import time; print(1, flush=True); time.sleep(1); exit(7)'])}\n"
        'critical = true\nready = { log = "1" }\n',
    )
    guest.start()
    guest.wait_for("READY")
    failed = guest.wait_for("EXIT_STATUS")
    assert failed["EXIT_STATUS"] == "2"
    assert failed["STATUS"] == "failed: critical service agent failed: exited with 7"
    guest.finish()


def test_exception_in_init_fails_closed(guest: Guest) -> None:
    """Anything init cannot do ends in EXIT_STATUS=1 with the reason, never a crash: here /run
    is a file, so the syslog ring cannot be created."""
    (guest.path / "run").rmdir()
    (guest.path / "run").write_text("not a directory")
    guest.start()
    failed = guest.wait_for("EXIT_STATUS")
    assert failed["EXIT_STATUS"] == "1"
    assert failed["STATUS"].startswith("failed: NotADirectoryError") or failed["STATUS"].startswith(
        "failed: FileExistsError"
    )
    assert "Traceback" in guest.kmsg()
    guest.finish()


def test_non_critical_failure_still_ready_but_degraded(guest: Guest) -> None:
    guest.service(
        "flaky",
        'command = ["/bin/false"]\nready = { file = "/never" }\nrestart = "on-failure"\nmax_restarts = 1\n',
    )
    guest.service("fine", 'command = ["/bin/sleep", "60"]\n')
    guest.start()
    ready = guest.wait_for("READY")
    assert ready["X_GUESTINIT_DEGRADED"] == "flaky"
    assert "degraded: flaky" in ready["STATUS"]
    states = {s["name"]: (s["state"], s.get("restarts")) for s in json.loads(ready["X_GUESTINIT_SERVICES"])}
    assert states == {"fine": ("ready", None), "flaky": ("failed", 1)}
    phases = [p["name"] for p in json.loads(ready["X_GUESTINIT_PHASES"])]
    assert phases[:2] == ["mounts", "cmdline"] and "services" in phases and "service fine" in phases
    assert guest.proc is not None
    os.kill(guest.proc.pid, signal.SIGTERM)
    guest.wait_for("X_SYSTEMD_SHUTDOWN")
    guest.finish()


def test_lockdown_settings_file_and_problems_reported(tmp_path: Path) -> None:
    guest = Guest(tmp_path, cmdline="guestinit.lockdown guestinit.bogus=1 guestinit.disable=off2")
    try:
        (guest.path / "etc/guestinit/guestinit.toml").write_text('disable = ["off1"]\nstop_timeout = 1\n')
        (guest.path / "proc/sys/kernel/modules_disabled").write_text("0\n")
        guest.service("off1", 'command = ["/bin/sleep", "60"]\n')
        guest.service("off2", 'command = ["/bin/sleep", "60"]\n')
        guest.start()
        ready = guest.wait_for("READY")
        assert (guest.path / "proc/sys/kernel/modules_disabled").read_text() == "1\n"
        assert "unknown key guestinit.bogus: ignored" in ready["STATUS"]
        states = {s["name"]: s["state"] for s in json.loads(ready["X_GUESTINIT_SERVICES"])}
        assert states == {"off1": "ready", "off2": "disabled"}  # the command line's list wins
        assert guest.proc is not None
        os.kill(guest.proc.pid, signal.SIGTERM)
        guest.wait_for("X_SYSTEMD_SHUTDOWN")
        guest.finish()
    finally:
        guest.close()


def test_orphan_storm_every_child_reaped(tmp_path: Path) -> None:
    """1,000 orphans re-parented to us (a subreaper, as init is for everything) and exiting at
    once: the reaper collects every one on SIGCHLD; none is left a zombie."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_child_subreaper = 36
    assert libc.prctl(pr_set_child_subreaper, 1, 0, 0, 0) == 0
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    loop, reaper = Loop(), Reaper()
    signals = SignalFd({signal.SIGCHLD})
    loop.add_reader(signals.fd, lambda: (signals.read(), reaper.reap()))
    storm = textwrap.dedent("""
        import os, sys, time
        release = time.monotonic() + 1.0
        for _ in range(1000):
            if os.fork() == 0:
                time.sleep(max(0.0, release - time.monotonic()))
                os._exit(0)
        os._exit(0)  # the parent leaves at once: its 1,000 children are orphans
    """)
    try:
        parent = subprocess.Popen([PY, "-c", storm])
        parent.wait()  # the storm's parent itself, reaped by Popen before our reaper runs
        me = os.getpid()
        deadline = time.monotonic() + 60
        while reaper.orphans < 1000 and time.monotonic() < deadline:
            loop.run_once(0.5)
            # A thread an earlier test left behind (grpc, a listener) may have SIGCHLD
            # unblocked and take the signal instead of the signalfd: poll as well.
            reaper.reap()
        assert reaper.orphans == 1000
        zombies = []
        for entry in os.listdir("/proc"):
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            if fields[0] == "Z" and int(fields[1]) == me:
                zombies.append(entry)
        assert zombies == []
    finally:
        libc.prctl(pr_set_child_subreaper, 0, 0, 0, 0)
        signals.close()
        loop.close()
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def test_loopback_brought_up(tmp_path: Path) -> None:
    """In a fresh network namespace lo starts down, as in a guest before init: bring it up."""
    code = (
        f"import sys; sys.path.insert(0, {str(REPO)!r})\n"
        "import socket\n"
        "from guestinit.init import net\n"
        "first, second = net.interface_up('lo'), net.interface_up('lo')\n"
        "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n"
        "socket.create_connection(s.getsockname(), timeout=2).close()\n"
        "print(first, second)\n"
    )
    out = subprocess.run(["unshare", "-n", sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "False"]  # brought up once; already up the second time


def test_failure_after_ready_updates_the_host(guest: Guest) -> None:
    """A non-critical service that dies after READY (and may not restart) is reported at once."""
    code = "import time; print('up', flush=True); time.sleep(1); exit(4)"
    guest.service("worker", f'command = {json.dumps([PY, "-c", code])}\nready = {{ log = "up" }}\n')
    guest.start()
    ready = guest.wait_for("READY")
    assert "X_GUESTINIT_DEGRADED" not in ready
    update = guest.wait_for("X_GUESTINIT_DEGRADED")
    assert update["X_GUESTINIT_DEGRADED"] == "worker"
    assert update["STATUS"] == "degraded: worker (worker: exited with 4)"
    assert guest.proc is not None
    os.kill(guest.proc.pid, signal.SIGTERM)
    guest.wait_for("X_SYSTEMD_SHUTDOWN")
    guest.finish()
