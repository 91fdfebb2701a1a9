"""QEMU: the accelerator probe, the argument list for a direct kernel boot, and a QMP client.

Argument construction is a pure function of ``QemuConfig`` so it is unit-tested without
running QEMU; ``probe_kvm`` really boots the kernel for a moment, because on nested PVM hosts
/dev/kvm exists and still cannot run ordinary guests.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from guestinit.host.errors import UserError

QEMU = "qemu-system-x86_64"
NOTIFY_PORT_NAME = "guestinit.notify"
DEFAULT_VSOCK_PORT = 8888


@dataclass(frozen=True)
class QemuConfig:
    kernel: Path
    initrd: Path | None  # the initrd form; None for the rootfs-image form
    append: str
    disk: Path | None = (
        None  # the rootfs-image form: a raw disk on virtio-blk, read-only, as Kata attaches it
    )
    accel: str = "tcg"  # kvm | tcg
    tcg_threads: str = "multi"  # multi | single: a host thread per vCPU, or one for all ("" under KVM)
    memory_mb: int = 2048
    cpus: int = 2
    machine: str = "q35"
    transport: str = "serial"  # serial | vsock
    notify_socket: Path | None = None  # serial: host-side Unix socket QEMU connects to
    vsock_cid: int = 3
    qmp_socket: Path | None = None
    console_log: Path | None = None
    rng: bool = True
    extra: tuple[str, ...] = field(default_factory=tuple)
    binary: str = QEMU


def qemu_argv(cfg: QemuConfig) -> list[str]:
    """The full QEMU command line for a direct kernel boot of ``cfg`` (an initrd, or a root
    disk the kernel mounts itself)."""
    cpu = "host" if cfg.accel == "kvm" else "max"
    argv = [
        cfg.binary,
        "-nodefaults",
        "-no-user-config",
        "-accel",
        "tcg,thread=single" if cfg.accel == "tcg" and cfg.tcg_threads == "single" else cfg.accel,
        "-machine",
        cfg.machine,
        "-cpu",
        cpu,
        "-smp",
        str(cfg.cpus),
        "-m",
        str(cfg.memory_mb),
        "-display",
        "none",
        "-no-reboot",
        "-kernel",
        os.fspath(cfg.kernel),
        *(["-initrd", os.fspath(cfg.initrd)] if cfg.initrd is not None else []),
        "-append",
        cfg.append,
    ]
    if cfg.disk is not None:
        argv += [
            "-drive",
            f"id=rootfs,file={os.fspath(cfg.disk)},if=none,format=raw,readonly=on",
            "-device",
            "virtio-blk-pci,drive=rootfs",
        ]
    if cfg.console_log is not None:
        argv += ["-serial", f"file:{os.fspath(cfg.console_log)}"]
    else:
        argv += ["-serial", "null"]
    if cfg.rng:
        argv += ["-object", "rng-random,id=rng0,filename=/dev/urandom", "-device", "virtio-rng-pci,rng=rng0"]
    if cfg.qmp_socket is not None:
        argv += ["-qmp", f"unix:{os.fspath(cfg.qmp_socket)},server=on,wait=off"]
    if cfg.transport == "vsock":
        argv += ["-device", f"vhost-vsock-pci,id=vsock0,guest-cid={cfg.vsock_cid}"]
    elif cfg.transport == "serial":
        if cfg.notify_socket is None:
            raise ValueError("serial transport needs notify_socket")
        argv += [
            "-device",
            "virtio-serial-pci,id=vser0",
            "-chardev",
            f"socket,id=notify0,path={os.fspath(cfg.notify_socket)},reconnect=1",
            "-device",
            f"virtserialport,bus=vser0.0,chardev=notify0,name={NOTIFY_PORT_NAME}",
        ]
    else:
        raise ValueError(f"unknown transport {cfg.transport!r}")
    argv += list(cfg.extra)
    return argv


def notify_append(transport: str, vsock_port: int = DEFAULT_VSOCK_PORT) -> str:
    """The guestinit.notify= value matching a transport."""
    if transport == "vsock":
        return f"guestinit.notify=vsock-stream:2:{vsock_port}"
    return f"guestinit.notify=serial:{NOTIFY_PORT_NAME}"


def find_qemu(binary: str = QEMU) -> str:
    path = shutil.which(binary)
    if path is None:
        raise UserError(
            f"{binary} not found", hint="install it: apt-get install qemu-system-x86 (or run make setup)"
        )
    return path


def qemu_version(binary: str = QEMU) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False).stdout
    first = out.splitlines()[0] if out else ""
    return first.split("version")[-1].split()[0] if "version" in first else "unknown"


def tcg_threads(requested: str, cpus: int) -> tuple[str, str]:
    """multi or single TCG threads for ``requested`` (auto | multi | single), and why.

    auto is single for more than one vCPU. QEMU's multi-threaded TCG can keep executing code the
    guest kernel has just rewritten: the kernel flips a static key by putting an int3 over each
    site, then the new bytes, then synchronising every CPU, and a vCPU still runs the int3
    afterwards ("Oops: int3", the guest dead). Measured with a guest flipping a static key while
    its other vCPU runs the patched sites: QEMU 7.2.22 died within 200 flips in 7 boots of 7,
    10.0.2 once in 8,000 flips, and single-threaded 7.2.22 never in 13,000; the boot tests had
    seen it about once in 150 boots. One host thread for every vCPU cannot race with itself.
    """
    if requested in ("multi", "single"):
        return requested, f"--tcg-threads {requested}"
    if cpus > 1:
        return "single", "multi-threaded TCG can run kernel code the kernel has just patched"
    return "multi", "one vCPU"


def accel_threads(accel: str, requested: str, cpus: int) -> tuple[str, str]:
    """The TCG thread mode for a boot under ``accel`` ("" under KVM) and what its accel_why
    gains: "; single-threaded (why)"."""
    if accel != "tcg":
        return "", ""
    threads, why = tcg_threads(requested, cpus)
    return threads, f"; {threads}-threaded ({why})"


def _probe_cache_path() -> Path:
    cache = Path(os.environ.get("GUESTINIT_CACHE", Path.home() / ".cache" / "guestinit"))
    return cache / "kvm-probe.json"


def probe_kvm(
    kernel: Path, binary: str = QEMU, timeout_s: float = 4.0, use_cache: bool = True
) -> tuple[bool, str]:
    """Does KVM really boot a guest here? Boots ``kernel`` with no initrd and looks for the
    kernel's banner on the serial port within ``timeout_s``. Returns (usable, why)."""
    if not os.path.exists("/dev/kvm"):
        return False, "/dev/kvm does not exist"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm is not accessible"
    key = f"{os.uname().release} {qemu_version(binary)} {os.stat('/dev/kvm').st_rdev}"
    cache = _probe_cache_path()
    if use_cache:
        with contextlib.suppress(OSError, ValueError, KeyError):
            data = json.loads(cache.read_text())
            if data["key"] == key:
                return bool(data["usable"]), str(data["why"]) + " (cached)"
    argv = [
        binary, "-nodefaults", "-no-user-config", "-accel", "kvm", "-machine", "q35", "-cpu", "host",
        "-m", "256", "-display", "none", "-no-reboot", "-serial", "stdio",
        "-kernel", os.fspath(kernel), "-append", "console=ttyS0 panic=-1 earlyprintk=ttyS0",
    ]  # fmt: skip
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    elapsed = time.monotonic() - start
    text = out.decode(errors="replace")
    if "Linux version" in text:
        usable, why = True, f"kernel banner after {elapsed:.1f} s"
    elif proc.returncode not in (None, 0, -9) and err:
        usable, why = False, "QEMU failed: " + err.decode(errors="replace").strip().splitlines()[-1][:200]
    else:
        usable, why = False, f"no kernel output within {timeout_s:.0f} s"
    with contextlib.suppress(OSError):
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"key": key, "usable": usable, "why": why}))
    return usable, why


class QMP:
    """A minimal QMP client over a Unix socket (capabilities negotiation, commands, events)."""

    def __init__(self, path: Path, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        last: OSError | None = None
        while time.monotonic() < deadline:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.settimeout(timeout_s)
                self.sock.connect(os.fspath(path))
                break
            except OSError as exc:
                last = exc
                self.sock.close()
                time.sleep(0.05)
        else:
            raise OSError(f"cannot connect to QMP at {path}: {last}")
        self.file = self.sock.makefile("rwb")
        self.events: list[dict[str, object]] = []
        self._read()  # greeting
        self.command("qmp_capabilities")

    def _read(self) -> dict[str, object]:
        line = self.file.readline()
        if not line:
            raise OSError("QMP connection closed")
        msg: dict[str, object] = json.loads(line)
        return msg

    def command(self, name: str, **arguments: object) -> object:
        request: dict[str, object] = {"execute": name}
        if arguments:
            request["arguments"] = arguments
        self.file.write(json.dumps(request).encode() + b"\n")
        self.file.flush()
        while True:
            msg = self._read()
            if "event" in msg:
                self.events.append(msg)
                continue
            if "error" in msg:
                raise OSError(f"QMP {name}: {msg['error']}")
            return msg.get("return")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.file.close()
            self.sock.close()


def add_accel_options(p: argparse.ArgumentParser, tcg_threads_default: str = "auto", why: str = "") -> None:
    """--accel, --transport and --tcg-threads, as every command that boots an image takes them
    (``tcg_threads_default`` with ``why`` where a command defaults to another TCG mode)."""
    p.add_argument(
        "--accel",
        choices=("auto", "kvm", "tcg"),
        default="auto",
        help="accelerator: kvm when it really boots a guest here (probed), else tcg (default auto)",
    )
    p.add_argument(
        "--transport",
        choices=("auto", "vsock", "serial"),
        default="auto",
        help="readiness channel: vsock when /dev/vhost-vsock exists, else virtio-serial (default auto)",
    )
    p.add_argument(
        "--tcg-threads",
        choices=("auto", "multi", "single"),
        default=tcg_threads_default,
        help="under TCG, a host thread per vCPU (multi) or one for all (single); auto is single for "
        "2 or more vCPUs: multi-threaded TCG can crash a guest kernel that patches its code "
        f"(default {tcg_threads_default}{': ' + why if why else ''})",
    )
