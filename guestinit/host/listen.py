"""The host's notify listener: receives systemd-style readiness messages from guests.

Addresses (one syntax with ``guestctl listen``):
  vsock:PORT           AF_VSOCK stream on any CID, one message per connection (read to EOF)
  unix:PATH            a Unix stream socket, one message per connection (read to EOF)
  unix-dgram:PATH      a Unix datagram socket, as sd_notify(3) and systemd-notify send
                       (PATH may be @NAME for an abstract socket)
  hvsock:UDS_PATH:PORT Firecracker / Cloud Hypervisor hybrid vsock: guest-initiated
                       connections to PORT arrive on the Unix socket UDS_PATH_PORT
  serial:PATH          a Unix stream socket that QEMU's virtio-serial chardev connects to;
                       many messages on one stream, each ending with an empty line
  console:PATH         a file the guest's serial console is written to (QEMU -serial file:PATH);
                       lines carrying the GUESTINIT-NOTIFY mark, read from the start

The guest belongs to a tenant and may be hostile. Every read is bounded (``Limits``): message
size, lines per message, a whole-message deadline per connection, connections per endpoint (the
oldest is closed to admit a new one, so a flood cannot lock a sender out), the queue of parsed
messages and the log. One thread serves every endpoint with non-blocking sockets and bounded
work per event; invalid UTF-8, lines without '=', bad keys, oversized and slow-drip input are
dropped and logged (rate-limited), and nothing a sender does reaches other senders.
"""

from __future__ import annotations

import array
import collections
import contextlib
import errno
import os
import selectors
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields

from guestinit.host.errors import UserError
from guestinit.notify.framing import Framer, line_framer, serial_framer
from guestinit.notify.message import (
    MAX_LINES,
    MAX_MESSAGE_BYTES,
    PROTOCOL_ONLY_KEYS,
    Parsed,
    parse,
    parse_console_line,
)

FORMS = "vsock:PORT, unix:PATH, unix-dgram:PATH, hvsock:UDS_PATH:PORT, serial:PATH or console:PATH"
KINDS = ("vsock", "unix", "unix-dgram", "hvsock", "serial", "console")
READ_CHUNK = 64 * 1024
ACCEPTS_PER_EVENT = 32  # at most a quarter of max_connections, so a new connection is read
READS_PER_EVENT = 4  # before enough newer ones arrive to make it the oldest
DATAGRAMS_PER_EVENT = 64
CONSOLE_POLL_S = 0.02
CONSOLE_READ_PER_POLL = 256 * 1024


@dataclass(frozen=True)
class Limits:
    """What one guest may cost the listener. One table: the defaults, the ``guestctl listen``
    options and the reference in docs/notify.md all come from these fields."""

    max_message_bytes: int = field(
        default=MAX_MESSAGE_BYTES,
        metadata={
            "flag": "--max-message-bytes",
            "help": "largest message (datagram, connection, serial message, console line); larger is dropped",
        },
    )
    read_timeout_s: float = field(
        default=5.0,
        metadata={
            "flag": "--read-timeout",
            "help": "seconds a stream connection has to deliver its whole message (slow-drip is dropped)",
        },
    )
    max_connections: int = field(
        default=64,
        metadata={
            "flag": "--max-connections",
            "help": "open connections per endpoint; the oldest is closed to admit a new one",
        },
    )
    max_queued: int = field(
        default=1024,
        metadata={
            "flag": "--max-queued",
            "help": "parsed messages waiting to be reported; beyond it the oldest one without READY "
            "or EXIT_STATUS is dropped and counted",
        },
    )
    log_per_second: int = field(
        default=20,
        metadata={
            "flag": "--log-rate",
            "help": "log lines per second about dropped input; the rest are counted and summarised",
        },
    )

    @staticmethod
    def table() -> list[tuple[str, str, object, str]]:
        """(field, option, default, help) for each limit."""
        return [(f.name, f.metadata["flag"], f.default, f.metadata["help"]) for f in fields(Limits)]


LIMIT_FACTS = (
    f"lines per message: {MAX_LINES}",
    "keys: A-Z, 0-9 and _, starting with a letter, at most 64 bytes",
    "values: UTF-8 without NUL",
)


@dataclass
class Message:
    fields: dict[str, str]
    received: float  # time.monotonic() when the message was complete
    source: str
    dropped: list[str] = field(default_factory=list)
    wall: float = 0.0  # time.time() at the same moment


@dataclass(frozen=True)
class Endpoint:
    kind: str  # one of KINDS
    path: str = ""
    port: int = 0

    def __str__(self) -> str:
        if self.kind == "vsock":
            return f"vsock:{self.port}"
        if self.kind == "hvsock":
            return f"hvsock:{self.path}:{self.port}"
        return f"{self.kind}:{self.path}"


def _port(text: str, address: str, form: str) -> int:
    try:
        port = int(text, 0)
    except ValueError:
        raise UserError(
            f"listen address {address!r}: port {text!r} is not a number", hint=f"use {form}"
        ) from None
    if not 0 < port < 2**32 - 1:
        raise UserError(f"listen address {address!r}: port {port} out of range", hint="use 1..4294967294")
    return port


def parse_endpoint(text: str) -> Endpoint:
    kind, sep, rest = text.partition(":")
    if not sep or not rest:
        raise UserError(f"listen address {text!r} not understood", hint=f"use {FORMS}")
    if kind in ("serial", "unix", "unix-dgram", "console"):
        if "\0" in rest or (rest.startswith("@") and kind != "unix-dgram"):
            raise UserError(f"listen address {text!r}: bad path", hint="use a file system path")
        return Endpoint(kind, path=rest)
    if kind == "vsock":
        return Endpoint("vsock", port=_port(rest, text, "vsock:PORT"))
    if kind == "hvsock":
        path, sep, port_text = rest.rpartition(":")
        if not sep or not path:
            raise UserError(f"listen address {text!r} not understood", hint="use hvsock:UDS_PATH:PORT")
        return Endpoint("hvsock", path=path, port=_port(port_text, text, "hvsock:UDS_PATH:PORT"))
    raise UserError(f"listen address {text!r}: unknown kind {kind!r}", hint=f"use {FORMS}")


class _Conn:
    """One accepted stream connection."""

    __slots__ = ("buf", "deadline", "endpoint", "framer", "opened", "source")

    def __init__(self, endpoint: Endpoint, source: str, framer: Framer | None, timeout_s: float) -> None:
        self.endpoint = endpoint
        self.source = source
        self.framer = framer  # serial: many messages per stream; else one message, read to EOF
        self.buf = bytearray()
        self.opened = time.monotonic()
        self.deadline = self.opened + timeout_s if framer is None else float("inf")


class _Console:
    """A console log file being followed."""

    __slots__ = ("endpoint", "fd", "framer", "inode", "pos")

    def __init__(self, endpoint: Endpoint, max_bytes: int) -> None:
        self.endpoint = endpoint
        self.fd: int | None = None
        self.inode = 0
        self.pos = 0
        self.framer = line_framer(max_bytes)


class MessageQueue:
    """Parsed messages waiting for the reader, bounded. When full, the oldest message that
    decides nothing (no READY, no EXIT_STATUS) makes room, so a flood of chatter from one
    sender cannot push another sender's READY out."""

    DECISIVE = ("READY", "EXIT_STATUS")

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._items: collections.deque[Message] = collections.deque()
        self._cond = threading.Condition()

    def qsize(self) -> int:
        with self._cond:
            return len(self._items)

    def put(self, msg: Message) -> Message | None:
        """Queue ``msg``; returns the message dropped to make room, if any."""
        with self._cond:
            dropped = None
            if len(self._items) >= self.maxsize:
                victim = next((m for m in self._items if not self._decisive(m)), None)
                if victim is None and not self._decisive(msg):
                    return msg
                victim = victim if victim is not None else self._items[0]
                self._items.remove(victim)
                dropped = victim
            self._items.append(msg)
            self._cond.notify()
            return dropped

    def get(self, timeout: float | None) -> Message | None:
        with self._cond:
            if not self._items:
                self._cond.wait(timeout)
            return self._items.popleft() if self._items else None

    def _decisive(self, msg: Message) -> bool:
        return any(key in msg.fields for key in self.DECISIVE)


class _RateLimitedLog:
    """The listener's log: the last lines in memory, at most ``per_second`` to the callback."""

    def __init__(self, per_second: int, sink: Callable[[str], None] | None, keep: int = 1000) -> None:
        self.lines: collections.deque[str] = collections.deque(maxlen=keep)
        self.per_second = per_second
        self.sink = sink
        self._window = 0.0
        self._used = 0
        self.suppressed = 0

    def __call__(self, line: str) -> None:
        now = time.monotonic()
        if now - self._window >= 1.0:
            if self.suppressed:
                self._out(f"{self.suppressed} more log lines suppressed in the last second")
                self.suppressed = 0
            self._window, self._used = now, 0
        if self._used >= self.per_second:
            self.suppressed += 1
            return
        self._used += 1
        self._out(line)

    def _out(self, line: str) -> None:
        self.lines.append(line)
        if self.sink is not None:
            with contextlib.suppress(Exception):
                self.sink(line)


class Listener:
    """Binds the endpoints, serves them on a background thread, queues parsed messages."""

    def __init__(
        self,
        addresses: list[str] | list[Endpoint],
        limits: Limits | None = None,
        on_log: Callable[[str], None] | None = None,
    ) -> None:
        self.endpoints = [a if isinstance(a, Endpoint) else parse_endpoint(a) for a in addresses]
        self.limits = limits or Limits()
        self.messages = MessageQueue(self.limits.max_queued)
        self._log = _RateLimitedLog(self.limits.log_per_second, on_log)
        self.counts: collections.Counter[str] = collections.Counter()
        self._sel = selectors.DefaultSelector()
        self._conns: dict[socket.socket, _Conn] = {}
        self._per_endpoint: collections.Counter[Endpoint] = collections.Counter()
        self._servers: list[tuple[socket.socket, Endpoint]] = []
        self._consoles: list[_Console] = []
        self._paths: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def log(self) -> collections.deque[str]:
        """The most recent log lines (what was dropped, from where, and why)."""
        return self._log.lines

    # lifecycle -------------------------------------------------------------------------
    def start(self) -> Listener:
        try:
            for ep in self.endpoints:
                self._bind(ep)
        except BaseException:
            self.close()
            raise
        self._thread = threading.Thread(target=self._serve, name="notify-listener", daemon=True)
        self._thread.start()
        return self

    def __enter__(self) -> Listener:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        for sock in list(self._conns):
            with contextlib.suppress(OSError):
                sock.close()
        self._conns.clear()
        for sock, _ in self._servers:
            with contextlib.suppress(OSError):
                sock.close()
        self._servers.clear()
        for console in self._consoles:
            if console.fd is not None:
                with contextlib.suppress(OSError):
                    os.close(console.fd)
                console.fd = None
        for path in self._paths:
            with contextlib.suppress(OSError):
                os.unlink(path)
        self._paths.clear()
        with contextlib.suppress(Exception):
            self._sel.close()

    def get(self, timeout: float | None) -> Message | None:
        """The next message, or None after ``timeout`` seconds."""
        return self.messages.get(timeout)

    # binding ---------------------------------------------------------------------------
    def _unix_path(self, path: str) -> str:
        if path.startswith("@"):
            return "\0" + path[1:]  # abstract: nothing on disk
        if len(os.fsencode(path)) >= 108:
            raise UserError(
                f"socket path {path!r} is too long for AF_UNIX", hint="use a path under 108 bytes"
            )
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISSOCK(st.st_mode) or not _stale_socket(path):
                raise UserError(
                    f"socket path {path!r} already exists", hint="remove it or choose another path"
                )
            os.unlink(path)  # a socket nobody listens on any more (a listener that was killed)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self._paths.append(path)
        return path

    def _bind(self, ep: Endpoint) -> None:
        if ep.kind == "console":
            self._consoles.append(_Console(ep, self.limits.max_message_bytes))
            return
        try:
            if ep.kind in ("serial", "unix", "hvsock"):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.bind(self._unix_path(ep.path if ep.kind != "hvsock" else f"{ep.path}_{ep.port}"))
                sock.listen(128)
            elif ep.kind == "unix-dgram":
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
                sock.bind(self._unix_path(ep.path))
            else:
                sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
                sock.bind((socket.VMADDR_CID_ANY, ep.port))
                sock.listen(128)
        except OSError as exc:
            raise UserError(
                f"cannot listen on {ep}: {exc.strerror or exc}", hint="check the address"
            ) from None
        sock.setblocking(False)
        self._servers.append((sock, ep))
        self._sel.register(sock, selectors.EVENT_READ, ep)

    # serving ---------------------------------------------------------------------------
    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                self._serve_once()
            except Exception as exc:  # the listener must outlive anything a sender does
                self.counts["internal_errors"] += 1
                self._log(f"listener: internal error {type(exc).__name__}: {exc}")

    def _serve_once(self) -> None:
        timeout = CONSOLE_POLL_S if self._consoles else 0.1
        for key, _ in self._sel.select(timeout=timeout):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                if isinstance(key.data, Endpoint):
                    self._on_server(sock, key.data)
                else:
                    self._on_readable(sock)
            except Exception as exc:
                self.counts["internal_errors"] += 1
                self._log(f"listener: error on {key.data}: {type(exc).__name__}: {exc}")
                if sock in self._conns:
                    self._drop(sock)
        for console in self._consoles:
            self._poll_console(console)
        now = time.monotonic()
        for sock, conn in list(self._conns.items()):
            if now > conn.deadline:
                self.counts["timed_out"] += 1
                self._log(
                    f"{conn.source}: no complete message within {self.limits.read_timeout_s:g} s "
                    f"({len(conn.buf)} bytes): dropped"
                )
                self._drop(sock)

    def _on_server(self, sock: socket.socket, ep: Endpoint) -> None:
        if ep.kind == "unix-dgram":
            for _ in range(DATAGRAMS_PER_EVENT):
                try:
                    data, source = self._recv_datagram(sock, ep)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:
                    return
                self._emit(data, source)
            return
        for _ in range(max(1, min(ACCEPTS_PER_EVENT, self.limits.max_connections // 4))):
            try:
                conn, addr = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE):
                    self._evict_oldest(ep)  # out of file descriptors: make room, retry next round
                return
            self.counts["accepted"] += 1
            if self._per_endpoint[ep] >= self.limits.max_connections:
                self._evict_oldest(ep)
            conn.setblocking(False)
            source = f"{ep}" + (f" cid {addr[0]}" if ep.kind == "vsock" else "")
            framer = serial_framer(self.limits.max_message_bytes) if ep.kind == "serial" else None
            self._conns[conn] = _Conn(ep, source, framer, self.limits.read_timeout_s)
            self._per_endpoint[ep] += 1
            self._sel.register(conn, selectors.EVENT_READ, source)

    def _evict_oldest(self, ep: Endpoint) -> None:
        oldest = min(
            (item for item in self._conns.items() if item[1].endpoint == ep),
            key=lambda item: item[1].opened,
            default=None,
        )
        if oldest is None:
            return
        self.counts["evicted"] += 1
        self._log(
            f"{ep}: {self.limits.max_connections} connections open; closed the oldest "
            f"({len(oldest[1].buf)} bytes unfinished)"
        )
        self._drop(oldest[0])

    def _recv_datagram(self, sock: socket.socket, ep: Endpoint) -> tuple[bytes, str]:
        limit = self.limits.max_message_bytes
        ancillary = socket.CMSG_SPACE(struct.calcsize("3i")) + socket.CMSG_SPACE(16 * 4)
        data, ancdata, _flags, _ = sock.recvmsg(limit + 1, ancillary)
        pid = None
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and len(payload) >= 12:
                pid = struct.unpack("3i", payload[:12])[0]
            elif level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                # sd_notify may pass file descriptors (FDSTORE=1, BARRIER=1): close them, which
                # is also what completes a barrier.
                fds = array.array("i")
                fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
                for fd in fds:
                    with contextlib.suppress(OSError):
                        os.close(fd)
        # A datagram over the limit arrives cut at limit + 1 bytes (MSG_TRUNC): parse() drops it.
        return data, f"{ep}" + (f" pid {pid}" if pid else "")

    def _on_readable(self, sock: socket.socket) -> None:
        """Read what is there (a bounded number of chunks), so a sender whose message and
        end-of-stream have both arrived is finished in one event, before any eviction."""
        conn = self._conns.get(sock)
        if conn is None:
            return
        for _ in range(READS_PER_EVENT):
            try:
                data = sock.recv(READ_CHUNK)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not self._on_data(sock, conn, data):
                return

    def _on_data(self, sock: socket.socket, conn: _Conn, data: bytes) -> bool:
        """Handle one read; False when the connection is finished (closed or dropped)."""
        if conn.framer is not None:
            if not data:
                self._drop(sock)
                return False
            frames, notes = conn.framer.feed(data)
            for note in notes:
                self.counts["oversized"] += 1
                self._log(f"{conn.source}: {note}")
            for frame in frames:
                self._emit(frame, conn.source)
            return True
        if not data:
            if conn.buf:
                self._emit(bytes(conn.buf), conn.source)
            self._drop(sock)
            return False
        conn.buf += data
        if len(conn.buf) > self.limits.max_message_bytes:
            self.counts["oversized"] += 1
            self._log(f"{conn.source}: message over {self.limits.max_message_bytes} bytes: dropped")
            self._drop(sock)
            return False
        return True

    def _drop(self, sock: socket.socket) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(sock)
        conn = self._conns.pop(sock, None)
        if conn is not None:
            self._per_endpoint[conn.endpoint] -= 1
        with contextlib.suppress(OSError):
            sock.close()

    def _poll_console(self, console: _Console) -> None:
        path = console.endpoint.path
        if console.fd is not None:
            try:
                st = os.stat(path)
                replaced = st.st_ino != console.inode or st.st_size < console.pos
            except OSError:
                replaced = True
            if replaced:  # rotated, truncated or removed: start over
                os.close(console.fd)
                console.fd = None
        if console.fd is None:
            try:
                console.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
            except OSError:
                return
            console.inode = os.fstat(console.fd).st_ino
            console.pos = 0
            console.framer = line_framer(self.limits.max_message_bytes)
        budget = CONSOLE_READ_PER_POLL
        while budget > 0:
            data = os.pread(console.fd, min(READ_CHUNK, budget), console.pos)
            if not data:
                return
            console.pos += len(data)
            budget -= len(data)
            lines, notes = console.framer.feed(data)
            for note in notes:
                self.counts["oversized"] += 1
                self._log(f"{console.endpoint}: console line: {note}")
            for line in lines:
                parsed = parse_console_line(line)
                if parsed is not None:
                    self._deliver(parsed, str(console.endpoint))

    def _emit(self, data: bytes, source: str) -> None:
        self._deliver(parse(data, self.limits.max_message_bytes), source)

    def _deliver(self, parsed: Parsed, source: str) -> None:
        now, wall = time.monotonic(), time.time()
        if parsed.dropped:
            self.counts["dropped_lines"] += len(parsed.dropped)
            for reason in parsed.dropped[:5]:
                self._log(f"{source}: {reason}")
            if len(parsed.dropped) > 5:
                self._log(f"{source}: {len(parsed.dropped) - 5} more bad lines")
        if not parsed.fields or set(parsed.fields) <= PROTOCOL_ONLY_KEYS:
            return
        self.counts["messages"] += 1
        lost = self.messages.put(Message(parsed.fields, now, source, parsed.dropped, wall))
        if lost is not None:
            self.counts["queue_full"] += 1
            self._log(f"{lost.source}: {self.limits.max_queued} messages waiting: dropped one")


def _stale_socket(path: str) -> bool:
    """True when ``path`` is a Unix socket nobody accepts on (connection refused)."""
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_UNIX, kind) as probe:
            try:
                probe.connect(path)
                return False
            except OSError as exc:
                if exc.errno == errno.EPROTOTYPE:
                    continue
                return exc.errno == errno.ECONNREFUSED
    return False
