"""Sending notify messages from the guest to the host over the configured transport.

Sending never holds up boot: one quick attempt inline (a short connect timeout, a non-blocking
write on virtio-serial), and when the listener is not there yet, a background thread retries
with exponential back-off (50 ms doubling to ``max_backoff_s``) for as long as the guest runs.
Messages go out in order; a message half-written to a byte stream is finished, never repeated.
``flush`` (before power-off) retries at once until its deadline.

Transports (guestinit.notify.address): AF_VSOCK stream / seqpacket / datagram, sent as systemd's
sd_notify sends them (a privileged source port; one whole record per seqpacket message, whose
sender waits for the listener to close), AF_UNIX datagram (stream accepted), a virtio-serial
port by name (messages end with an empty line) and the console (one marked JSON line, the last
resort).
"""

from __future__ import annotations

import errno
import os
import select
import time
from _thread import allocate_lock

from guestinit.init.cmodules import socket
from guestinit.notify.address import VSOCK_KINDS, Target
from guestinit.notify.message import CONSOLE_MARK, MAX_MESSAGE_BYTES, encode, encode_console_line, fit

TYPE_CHECKING = False  # threading is imported with the first retry thread; mypy reads this as usual
if TYPE_CHECKING:
    import threading

__all__ = ["CONSOLE_MARK", "SERIAL_PORT_NAME", "SendError", "Sender", "find_virtio_port", "send_message"]

SERIAL_PORT_NAME = "guestinit.notify"
INLINE_TIMEOUT_S = 0.5  # the attempt made on the boot path
RETRY_TIMEOUT_S = 2.0  # attempts made by the background thread and by flush
FIRST_BACKOFF_S = 0.05
MAX_PENDING = 64  # messages waiting for a listener; the oldest unsent one goes first
PRIVILEGED_PORT = 1023  # the first local port an AF_VSOCK sender tries to bind


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


def _vsock_kinds(kind: str) -> tuple[int, ...]:
    """Socket types to try, in order, for a vsock address kind. ``vsock:`` is read as systemd's
    sd_notify reads it (datagram; seqpacket where the kernel has no vsock datagram transport, as
    on virtio-vsock; stream where it has no seqpacket either), and we also move on when a
    connection is refused, so a host listening on stream only (mkosi, systemd-vmspawn) still
    hears it."""
    if kind == "vsock":
        return (socket.SOCK_DGRAM, socket.SOCK_SEQPACKET, socket.SOCK_STREAM)
    if kind == "vsock-seqpacket":
        return (socket.SOCK_SEQPACKET,)
    if kind == "vsock-dgram":
        return (socket.SOCK_DGRAM,)
    return (socket.SOCK_STREAM,)


_last_port = [PRIVILEGED_PORT + 1]  # the port the last connection was bound to
CONNECT_ATTEMPTS = 2  # per socket type, each from the next port, while connect() is reset


def _bind_privileged_port(s: socket.socket) -> None:
    """Bind a free port under 1024, as systemd's senders do: only root in the guest may, so the
    host can tell a message from PID 1 from one of an unprivileged process. Best effort: without
    it the kernel picks a port at connect().

    Each connection takes the next port down (from 1023, round again below 1): the listener's
    end of the last connection can outlive ours for a moment, and a new connection from the same
    port is then reset at connect() (seen on vsock loopback, one message in ten)."""
    for step in range(1, PRIVILEGED_PORT + 1):
        port = (_last_port[0] - step - 1) % PRIVILEGED_PORT + 1
        try:
            s.bind((socket.VMADDR_CID_ANY, port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                return
            continue
        _last_port[0] = port
        return


def send_message(s: socket.socket, data: bytes, records: bool) -> None:
    """Send one message on the connected ``s`` and end it, as sd_notify does on AF_VSOCK. On a
    seqpacket socket (``records``) the message is one record, sent whole or not at all; after
    SHUT_WR the sender waits (up to the socket's timeout) for the listener to close, which it
    does once it has read the record. A listener that does not close costs that wait, never a
    second copy."""
    if records:
        sent = s.send(data)
        if sent != len(data):
            raise SendError(f"record cut at {sent} of {len(data)} bytes")
    else:
        s.sendall(data)
    s.shutdown(socket.SHUT_WR)
    if records:
        try:
            s.recv(1)
        except OSError:
            pass


def _send_vsock(target: Target, data: bytes, timeout_s: float) -> None:
    last: OSError | None = None
    for kind in _vsock_kinds(target.kind):
        for _attempt in range(1 if kind == socket.SOCK_DGRAM else CONNECT_ATTEMPTS):
            try:
                s = socket.socket(socket.AF_VSOCK, kind)
            except OSError as exc:  # ENODEV: no transport for this type (virtio-vsock: datagrams)
                last = exc
                break
            try:
                s.settimeout(timeout_s)
                if kind == socket.SOCK_DGRAM:
                    s.sendto(data, (target.cid, target.port))
                    return
                _bind_privileged_port(s)
                try:
                    s.connect((target.cid, target.port))
                except ConnectionResetError as exc:
                    # Nothing was sent. Either the listener still holds a connection from this
                    # port (its end of an earlier one, another process's maybe: each process
                    # counts its own ports down from 1023), and the next port goes through; or
                    # it listens with another socket type, and the next type is tried after.
                    last = exc
                    continue
                send_message(s, data, kind == socket.SOCK_SEQPACKET)
                return
            except OSError as exc:
                last = exc
                break
            finally:
                s.close()
    raise SendError(f"{target}: {last}")


def _send_unix(target: Target, data: bytes, timeout_s: float) -> None:
    path = target.path
    address = "\0" + path[1:] if path.startswith("@") else path
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        s.settimeout(timeout_s)
        s.sendto(data, address)
        return
    except OSError as exc:
        if exc.errno not in (errno.EPROTOTYPE, errno.ECONNREFUSED):  # maybe a stream socket
            raise SendError(f"{target}: {exc}") from None
    finally:
        s.close()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(timeout_s)
        s.connect(address)
        s.sendall(data)
    except OSError as exc:
        raise SendError(f"{target}: {exc}") from None
    finally:
        s.close()


class _Item:
    """One message as the transport carries it, and how much of it a byte stream has taken."""

    __slots__ = ("data", "written")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.written = 0


class Sender:
    """Sends messages to one target, in order; failed sends retry in the background."""

    def __init__(
        self,
        target: Target,
        sys_root: str = "/sys",
        dev_root: str = "/dev",
        console: str = "/dev/console",
        max_backoff_s: float = 5.0,
    ) -> None:
        self.target = target
        self.sys_root = sys_root
        self.dev_root = dev_root
        self.console = console
        self.max_backoff_s = max_backoff_s
        self._pending: list[_Item] = []
        self._busy = False  # someone is using the transport (inline send, retry thread, flush)
        self._lock = allocate_lock()
        # The retry thread and the condition it waits on exist once a send has failed (a
        # boot whose first send goes out never imports threading).
        self._wake: threading.Condition | None = None
        self._thread: threading.Thread | None = None
        self.sent = 0
        self.dropped = 0
        self.attempts = 0
        self.last_error = ""

    # encoding ------------------------------------------------------------------------------
    def payload(self, fields: dict[str, str]) -> bytes:
        """What goes on the wire for ``fields`` on this sender's transport. Values are cleaned
        and cut to the size limit, so reporting never fails on what a message says."""
        if self.target.kind == "console":
            limit = MAX_MESSAGE_BYTES
            while True:  # JSON escaping may grow a message: shrink until the line fits
                try:
                    return encode_console_line(fit(fields, limit))
                except ValueError:
                    if limit < 1024:
                        raise
                    limit //= 2
        data = encode(fit(fields))
        # On a byte stream a message ends with an empty line.
        return data + b"\n" if self.target.kind == "serial" else data

    # transports ----------------------------------------------------------------------------
    def _write_serial(self, item: _Item, timeout_s: float) -> None:
        device = find_virtio_port(self.sys_root, self.dev_root, self.target.path)
        if device is None:
            raise SendError(f"{self.target}: no virtio-serial port named {self.target.path!r}")
        # Non-blocking: a port whose host side is not connected would block a write forever.
        fd = os.open(device, os.O_WRONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
        try:
            deadline = time.monotonic() + timeout_s
            while item.written < len(item.data):
                try:
                    item.written += os.write(fd, item.data[item.written :])
                    continue
                except BlockingIOError:
                    pass
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SendError(f"{self.target}: port not writable (host side not connected?)")
                select.select([], [fd], [], min(left, 0.5))
        finally:
            os.close(fd)

    def _write_console(self, item: _Item) -> None:
        fd = os.open(self.console, os.O_WRONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_APPEND)
        try:
            while item.written < len(item.data):
                item.written += os.write(fd, item.data[item.written :])
        finally:
            os.close(fd)

    def _attempt(self, item: _Item, timeout_s: float) -> None:
        kind = self.target.kind
        self.attempts += 1
        if kind in VSOCK_KINDS:
            _send_vsock(self.target, item.data, timeout_s)
        elif kind in ("unix", "unix-dgram"):
            _send_unix(self.target, item.data, timeout_s)
        elif kind == "serial":
            self._write_serial(item, timeout_s)
        elif kind == "console":
            self._write_console(item)
        else:
            raise SendError(f"cannot send to {self.target}")
        self.sent += 1

    # queueing ------------------------------------------------------------------------------
    def send(self, fields: dict[str, str]) -> bool:
        """Send (or queue) one message. True when it went out at once."""
        if self.target.kind == "off":
            return True
        item = _Item(self.payload(fields))
        with self._lock:
            if self._pending or self._busy:
                self._enqueue(item)
                return False
            self._busy = True
        ok = self._try(item, INLINE_TIMEOUT_S if self.target.kind != "serial" else 0.0)
        with self._lock:
            self._busy = False
            if not ok:
                self._pending.insert(0, item)
                self._ensure_thread()
            self._notify()
        return ok

    def _try(self, item: _Item, timeout_s: float) -> bool:
        try:
            self._attempt(item, timeout_s)
            return True
        except OSError as exc:
            self.last_error = str(exc)
            return False

    def _enqueue(self, item: _Item) -> None:
        if len(self._pending) >= MAX_PENDING:
            # Drop the oldest message nothing of which is on the wire yet.
            for index, old in enumerate(self._pending):
                if old.written == 0:
                    del self._pending[index]
                    self.dropped += 1
                    break
        self._pending.append(item)
        self._ensure_thread()
        self._notify()

    def _condition(self) -> threading.Condition:
        """The condition on ``_lock`` that waiters sleep on; the caller holds the lock."""
        if self._wake is None:
            import threading

            self._wake = threading.Condition(self._lock)
        return self._wake

    def _notify(self) -> None:
        """Wake every waiter; the caller holds the lock. No condition yet: nobody waits."""
        if self._wake is not None:
            self._wake.notify_all()

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            import threading

            self._condition()
            self._thread = threading.Thread(target=self._retry, name="notify-retry", daemon=True)
            self._thread.start()

    def _retry(self) -> None:
        delay = FIRST_BACKOFF_S
        while True:
            with self._lock:
                while not self._pending or self._busy:
                    self._condition().wait()
                item = self._pending[0]
                self._busy = True
            ok = self._try(item, RETRY_TIMEOUT_S)
            with self._lock:
                self._busy = False
                if ok:
                    self._pending.remove(item)
                    delay = FIRST_BACKOFF_S
                self._notify()
                if not ok:
                    self._condition().wait(timeout=delay)  # a new send or a flush wakes us early
                    delay = min(delay * 2, self.max_backoff_s)

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def flush(self, timeout_s: float) -> bool:
        """Wait until everything queued went out (used before power-off), retrying at once.
        True when nothing is left."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                while self._busy and self._pending:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self._condition().wait(timeout=min(left, 0.05))
                if not self._pending:
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                item = self._pending[0]
                self._busy = True
            ok = self._try(item, min(left, RETRY_TIMEOUT_S))
            with self._lock:
                self._busy = False
                if ok:
                    self._pending.remove(item)
                self._notify()
            if not ok:
                time.sleep(min(0.02, max(0.0, deadline - time.monotonic())))
