"""Sending notify messages from the guest to the host over the configured transport.

Sending never holds up boot: one quick attempt inline, and when the listener is not there
yet, a background thread retries with exponential back-off. Messages are sent in order.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time

from guestinit.notify.address import VSOCK_KINDS, Target
from guestinit.notify.message import encode

CONSOLE_MARK = "GUESTINIT-NOTIFY "
SERIAL_PORT_NAME = "guestinit.notify"
CONNECT_TIMEOUT_S = 2.0


class SendError(OSError):
    pass


def find_virtio_port(sys_root: str, dev_root: str, name: str) -> str | None:
    """/dev/vportNpM of the virtio-serial port whose name is ``name``."""
    base = os.path.join(sys_root, "class/virtio-ports")
    try:
        entries = sorted(os.listdir(base))
    except OSError:
        return None
    for entry in entries:
        try:
            with open(os.path.join(base, entry, "name")) as f:
                if f.read().strip() == name:
                    return os.path.join(dev_root, entry)
        except OSError:
            continue
    return None


def _send_vsock(target: Target, data: bytes) -> None:
    kinds: tuple[int, ...]
    if target.kind == "vsock":
        kinds = (socket.SOCK_STREAM, socket.SOCK_SEQPACKET)
    elif target.kind == "vsock-seqpacket":
        kinds = (socket.SOCK_SEQPACKET,)
    elif target.kind == "vsock-dgram":
        kinds = (socket.SOCK_DGRAM,)
    else:
        kinds = (socket.SOCK_STREAM,)
    last: OSError | None = None
    for kind in kinds:
        try:
            with socket.socket(socket.AF_VSOCK, kind) as s:
                s.settimeout(CONNECT_TIMEOUT_S)
                if kind == socket.SOCK_DGRAM:
                    s.sendto(data, (target.cid, target.port))
                    return
                s.connect((target.cid, target.port))
                s.sendall(data)
                s.shutdown(socket.SHUT_WR)
                return
        except OSError as exc:
            last = exc
    raise SendError(f"{target}: {last}")


def _send_unix(target: Target, data: bytes) -> None:
    path = target.path
    address = "\0" + path[1:] if path.startswith("@") else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(data, address)
            return
    except OSError as exc:
        if exc.errno not in (91, 111):  # EPROTOTYPE, ECONNREFUSED: maybe a stream socket
            raise SendError(f"{target}: {exc}") from None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(CONNECT_TIMEOUT_S)
        s.connect(address)
        s.sendall(data)


def _send_serial(target: Target, data: bytes, sys_root: str, dev_root: str) -> None:
    device = find_virtio_port(sys_root, dev_root, target.path)
    if device is None:
        raise SendError(f"{target}: no virtio-serial port named {target.path!r}")
    fd = os.open(device, os.O_WRONLY | os.O_CLOEXEC)
    try:
        # A message on a byte stream ends with an empty line.
        payload = data + b"\n"
        while payload:
            written = os.write(fd, payload)
            payload = payload[written:]
    finally:
        os.close(fd)


def _send_console(data: bytes, console: str) -> None:
    fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
    line = CONSOLE_MARK + json.dumps(fields, separators=(",", ":")) + "\n"
    with open(console, "w") as f:
        f.write(line)


class Sender:
    """Sends messages to one target, in order; failed sends retry in the background."""

    def __init__(
        self,
        target: Target,
        sys_root: str = "/sys",
        dev_root: str = "/dev",
        console: str = "/dev/console",
        max_backoff_s: float = 5.0,
        give_up_s: float = 600.0,
    ) -> None:
        self.target = target
        self.sys_root = sys_root
        self.dev_root = dev_root
        self.console = console
        self.max_backoff_s = max_backoff_s
        self.give_up_s = give_up_s
        self._pending: list[bytes] = []
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self.sent = 0
        self.last_error = ""

    def send_now(self, data: bytes) -> None:
        kind = self.target.kind
        if kind == "off":
            return
        if kind in VSOCK_KINDS:
            _send_vsock(self.target, data)
        elif kind in ("unix", "unix-dgram"):
            _send_unix(self.target, data)
        elif kind == "serial":
            _send_serial(self.target, data, self.sys_root, self.dev_root)
        elif kind == "console":
            _send_console(data, self.console)
        else:
            raise SendError(f"cannot send to {self.target}")
        self.sent += 1

    def send(self, fields: dict[str, str]) -> bool:
        """Send (or queue) one message. True when it went out at once."""
        data = encode(fields)
        with self._lock:
            if not self._pending:
                try:
                    self.send_now(data)
                    return True
                except OSError as exc:
                    self.last_error = str(exc)
            self._pending.append(data)
            if self._thread is None:
                self._thread = threading.Thread(target=self._retry, name="notify-retry", daemon=True)
                self._thread.start()
            self._wake.notify()
        return False

    def _retry(self) -> None:
        delay = 0.05
        deadline = time.monotonic() + self.give_up_s
        while time.monotonic() < deadline:
            with self._lock:
                if not self._pending:
                    self._wake.wait(timeout=1.0)
                    continue
                data = self._pending[0]
                try:
                    self.send_now(data)
                    self._pending.pop(0)
                    delay = 0.05
                    continue
                except OSError as exc:
                    self.last_error = str(exc)
                self._wake.wait(timeout=delay)
            delay = min(delay * 2, self.max_backoff_s)

    def flush(self, timeout_s: float) -> bool:
        """Wait until everything queued went out (used before power-off). True when empty."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if not self._pending:
                    return True
                data = self._pending[0]
                try:
                    self.send_now(data)
                    self._pending.pop(0)
                    continue
                except OSError as exc:
                    self.last_error = str(exc)
            time.sleep(0.05)
        with self._lock:
            return not self._pending
