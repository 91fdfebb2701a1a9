"""The head start (headstart.py): PID 1 mounts and starts the command-line-independent driver
loads before importing the rest of its boot path; boot.py takes both over. Run on a fixture tree
whose /sys says which devices there are and which modules are in (so nothing is loaded into the
host's kernel), directly and as the whole ``pid1.run``."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import notify_inbox

from guestinit.init import headstart
from guestinit.init.root import Root

REPO = Path(__file__).resolve().parents[2]
KVER = os.uname().release  # ModuleTree reads the running kernel's folder of the tree
VSOCK_CHAIN = ["vsock", "vmw_vsock_virtio_transport_common", "vmw_vsock_virtio_transport"]
DRIVER = """
import json, sys, time
sys.path.insert(0, sys.argv[2])
start = time.clock_gettime(time.CLOCK_BOOTTIME)
from guestinit.init import headstart
from guestinit.init.kmsg import Log
from guestinit.init.root import Root
root = Root(sys.argv[1])
head = headstart.begin(root)
if sys.argv[3] == "fail":
    head.error = OSError(19, "mount /proc: No such device")
from guestinit.init.pid1 import run
run(root, Log(root("/kmsg")), None, start, head)
print("run returned", flush=True)
"""


def guest_tree(root: Path, notify: str = "", cmdline: str = "") -> Path:
    """A VM with a vsock device, a power button and fw_cfg; every module already in."""
    base = root / "usr/lib/modules" / KVER
    base.mkdir(parents=True)
    (base / "modules.dep").write_text(
        "kernel/net/vmw_vsock/vsock.ko:\n"
        "kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko: kernel/net/vmw_vsock/vsock.ko\n"
        "kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko: "
        "kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko kernel/net/vmw_vsock/vsock.ko\n"
        "kernel/drivers/acpi/button.ko:\n"
        "kernel/drivers/input/evdev.ko:\n"
        "kernel/drivers/firmware/qemu_fw_cfg.ko:\n"
    )
    (root / "sys/bus/virtio/devices/virtio0").mkdir(parents=True)
    (root / "sys/bus/virtio/devices/virtio0/device").write_text("0x0013\n")
    for hid in ("LNXPWRBN:00", "QEMU0002:00"):
        (root / "sys/bus/acpi/devices" / hid).mkdir(parents=True)
    for name in (*VSOCK_CHAIN, "button", "evdev", "qemu_fw_cfg"):
        (root / "sys/module" / name).mkdir(parents=True)
    for d in ("etc/guestinit/services.d", "dev", "run", "proc/sys/kernel", "shared"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\n")
    (root / "kmsg").write_text("")
    (root / "proc/cmdline").write_text(f"console=ttyS0 {notify} {cmdline}\n")
    return root


def test_begin_starts_the_drivers_that_do_not_depend_on_the_command_line(tmp_path: Path) -> None:
    root = Root(guest_tree(tmp_path / "root"))
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    head = headstart.begin(root)
    assert head.error is None and head.loading is not None
    assert [p.name for p in head.phases] == ["early mounts"] and head.module_phase is not None
    # qemu_fw_cfg waits for the command line: it is wanted only without guestinit.notify=
    assert head.started == (*VSOCK_CHAIN, "button", "evdev")
    assert {r.how for r in head.loading.wait()} == {"loaded"}
    assert head.loading.finished_s is not None and head.phases[0].start_s <= head.loading.finished_s
    assert head.end_s >= head.module_phase.start_s
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == mask  # the caller's mask as it was


def test_begin_never_raises(tmp_path: Path) -> None:
    class Broken(Root):
        def __call__(self, path: str) -> str:
            raise OSError(5, "Input/output error")

    head = headstart.begin(Broken(str(tmp_path)))
    assert isinstance(head.error, OSError) and head.loading is None


class Run:
    """pid1.run with a head start, as a (non-PID-1) process reporting over a Unix socket."""

    def __init__(self, tmp_path: Path, cmdline: str, how: str = "ok") -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(tmp_path / "notify.sock"))
        notify = f"guestinit.notify=unix:{tmp_path / 'notify.sock'}"
        self.root = guest_tree(tmp_path / "root", notify, cmdline)
        (self.root / "proc/sys/kernel/modules_disabled").write_text("0\n")
        self.received: list[dict[str, str]] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-c", DRIVER, str(self.root), str(REPO), how],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def wait_for(self, key: str) -> dict[str, str]:
        return notify_inbox.wait_for(
            self.sock, self.received, key, 30.0, lambda: (self.root / "kmsg").read_text()[-3000:]
        )

    def close(self, stop: bool = True) -> str:
        if stop and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=30)
        self.sock.close()
        return out


def test_the_boot_takes_over_the_head_start_and_adds_what_the_command_line_asks(tmp_path: Path) -> None:
    run = Run(tmp_path, "guestinit.lockdown guestinit.modules=qemu_fw_cfg")
    try:
        ready = run.wait_for("READY")
    finally:
        out = run.close()
    assert "run returned" in out, out
    loaded = [m["name"] for m in json.loads(ready["X_GUESTINIT_MODULES"])]
    assert loaded == [*VSOCK_CHAIN, "button", "evdev", "qemu_fw_cfg"]  # each once, head's first
    phases = json.loads(ready["X_GUESTINIT_PHASES"])
    names = [p["name"] for p in phases]
    assert names[:3] == ["early mounts", "imports (rest)", "kmsg, lo"]
    assert names.count("modules") == 1 and names.index("modules") < names.index("services")
    by_name = {p["name"]: p for p in phases}
    assert by_name["modules"]["start_s"] < by_name["imports (rest)"]["end_s"]  # under way meanwhile
    # every load was in before the lockdown
    assert ready["X_GUESTINIT_LOCKDOWN"] == "1"
    assert (run.root / "proc/sys/kernel/modules_disabled").read_text() == "1\n"


def test_a_head_start_that_failed_fails_the_boot_closed(tmp_path: Path) -> None:
    """Its error is raised inside the boot, so PID 1 takes its failure path (before the notify
    channel is up, as a failed mount always was: the console says why, then the power-off)."""
    run = Run(tmp_path, "", how="fail")
    out = run.close(stop=False)
    assert "run returned" in out, out  # the power-off step, reached on a test tree
    kmsg = (run.root / "kmsg").read_text()
    assert "failing: OSError: [Errno 19] mount /proc: No such device" in kmsg
    assert "READY" not in str(run.received)
