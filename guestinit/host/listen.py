"""The host's notify listener: receives systemd-style readiness messages from guests.

Addresses (one syntax with ``guestctl listen``):
  serial:PATH          a Unix stream socket that QEMU's virtio-serial chardev connects to;
                       messages on the byte stream end with an empty line
  unix:PATH            a Unix stream socket; one message per connection (read to EOF)
  unix-dgram:PATH      a Unix datagram socket, as sd_notify(3) and systemd-notify send
  vsock:PORT           AF_VSOCK stream on any CID, one message per connection
  hvsock:UDS_PATH:PORT Firecracker / Cloud Hypervisor hybrid vsock: guest-initiated
                       connections to PORT arrive on the Unix socket UDS_PATH_PORT

The guest may be hostile: every read is bounded (message size, per-connection read timeout,
concurrent connections) and nothing it sends can stop the listener serving other senders.
"""

from __future__ import annotations

import contextlib
import os
import queue
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from guestinit.host.errors import UserError
from guestinit.notify.message import MAX_MESSAGE_BYTES, parse

FORMS = "serial:PATH, unix:PATH, unix-dgram:PATH, vsock:PORT or hvsock:UDS_PATH:PORT"


@dataclass(frozen=True)
class Limits:
    max_message_bytes: int = MAX_MESSAGE_BYTES
    read_timeout_s: float = 5.0
    max_connections: int = 64


@dataclass
class Message:
    fields: dict[str, str]
    received: float  # time.monotonic() when the message was complete
    source: str
    dropped: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Endpoint:
    kind: str  # serial | unix | unix-dgram | vsock | hvsock
    path: str = ""
    port: int = 0

    def __str__(self) -> str:
        if self.kind == "vsock":
            return f"vsock:{self.port}"
        if self.kind == "hvsock":
            return f"hvsock:{self.path}:{self.port}"
        return f"{self.kind}:{self.path}"


def parse_endpoint(text: str) -> Endpoint:
    kind, sep, rest = text.partition(":")
    if not sep or not rest:
        raise UserError(f"listen address {text!r} not understood", hint=f"use {FORMS}")
    if kind in ("serial", "unix", "unix-dgram"):
        return Endpoint(kind, path=rest)
    if kind == "vsock":
        try:
            port = int(rest, 0)
        except ValueError:
            raise UserError(
                f"listen address {text!r}: port {rest!r} is not a number", hint="use vsock:PORT"
            ) from None
        if not 0 < port < 2**32:
            raise UserError(f"listen address {text!r}: port out of range", hint="use 1..4294967295")
        return Endpoint("vsock", port=port)
    if kind == "hvsock":
        path, sep, port_text = rest.rpartition(":")
        if not sep or not path or not port_text.isdigit():
            raise UserError(f"listen address {text!r} not understood", hint="use hvsock:UDS_PATH:PORT")
        return Endpoint("hvsock", path=path, port=int(port_text))
    raise UserError(f"listen address {text!r}: unknown kind {kind!r}", hint=f"use {FORMS}")


class _Conn:
    __slots__ = ("buf", "deadline", "source", "stream_framed")

    def __init__(self, source: str, stream_framed: bool, read_timeout_s: float) -> None:
        self.buf = bytearray()
        self.source = source
        self.stream_framed = stream_framed  # serial: many messages, blank-line separated
        self.deadline = time.monotonic() + read_timeout_s


class Listener:
    """Binds the endpoints, serves them on a background thread, queues parsed messages."""

    def __init__(self, addresses: list[str] | list[Endpoint], limits: Limits | None = None) -> None:
        self.endpoints = [a if isinstance(a, Endpoint) else parse_endpoint(a) for a in addresses]
        self.limits = limits or Limits()
        self.messages: queue.Queue[Message] = queue.Queue()
        self.log: list[str] = []
        self._sel = selectors.DefaultSelector()
        self._conns: dict[socket.socket, _Conn] = {}
        self._servers: list[tuple[socket.socket, Endpoint]] = []
        self._paths: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # lifecycle -------------------------------------------------------------------------
    def start(self) -> Listener:
        for ep in self.endpoints:
            self._bind(ep)
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
        for sock, _ in self._servers:
            with contextlib.suppress(OSError):
                sock.close()
        for path in self._paths:
            with contextlib.suppress(OSError):
                os.unlink(path)
        self._sel.close()

    def get(self, timeout: float | None) -> Message | None:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            return None

    # binding ---------------------------------------------------------------------------
    def _unix_path(self, path: str) -> str:
        if len(os.fsencode(path)) >= 108:
            raise UserError(
                f"socket path {path!r} is too long for AF_UNIX", hint="use a path under 108 bytes"
            )
        if os.path.exists(path):
            raise UserError(f"socket path {path!r} already exists", hint="remove it or choose another path")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._paths.append(path)
        return path

    def _bind(self, ep: Endpoint) -> None:
        try:
            if ep.kind in ("serial", "unix"):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.bind(self._unix_path(ep.path))
                sock.listen(16)
            elif ep.kind == "hvsock":
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.bind(self._unix_path(f"{ep.path}_{ep.port}"))
                sock.listen(16)
            elif ep.kind == "unix-dgram":
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                sock.bind(self._unix_path(ep.path))
            else:
                sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
                sock.bind((socket.VMADDR_CID_ANY, ep.port))
                sock.listen(16)
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
            for key, _ in self._sel.select(timeout=0.1):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if isinstance(key.data, Endpoint):
                    self._on_server(sock, key.data)
                else:
                    self._on_readable(sock)
            now = time.monotonic()
            for sock, conn in list(self._conns.items()):
                if not conn.stream_framed and now > conn.deadline:
                    self.log.append(f"{conn.source}: read timeout, dropped {len(conn.buf)} bytes")
                    self._drop(sock)

    def _on_server(self, sock: socket.socket, ep: Endpoint) -> None:
        if ep.kind == "unix-dgram":
            with contextlib.suppress(OSError):
                data = sock.recv(self.limits.max_message_bytes + 1)
                self._emit(bytes(data), str(ep))
            return
        try:
            conn, addr = sock.accept()
        except OSError:
            return
        if len(self._conns) >= self.limits.max_connections:
            self.log.append(f"{ep}: too many connections, refused one")
            conn.close()
            return
        conn.setblocking(False)
        source = f"{ep}" + (f" cid {addr[0]}" if ep.kind == "vsock" else "")
        self._conns[conn] = _Conn(source, ep.kind == "serial", self.limits.read_timeout_s)
        self._sel.register(conn, selectors.EVENT_READ, None)

    def _on_readable(self, sock: socket.socket) -> None:
        conn = self._conns[sock]
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            if not conn.stream_framed and conn.buf:
                self._emit(bytes(conn.buf), conn.source)
            self._drop(sock)
            return
        conn.buf += data
        if conn.stream_framed:
            while True:
                end = conn.buf.find(b"\n\n")
                if end < 0:
                    break
                self._emit(bytes(conn.buf[: end + 1]), conn.source)
                del conn.buf[: end + 2]
        if len(conn.buf) > self.limits.max_message_bytes:
            self.log.append(f"{conn.source}: message over {self.limits.max_message_bytes} bytes, dropped")
            if conn.stream_framed:
                conn.buf.clear()
            else:
                self._drop(sock)

    def _drop(self, sock: socket.socket) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(sock)
        self._conns.pop(sock, None)
        with contextlib.suppress(OSError):
            sock.close()

    def _emit(self, data: bytes, source: str) -> None:
        now = time.monotonic()
        parsed = parse(data)
        for reason in parsed.dropped:
            self.log.append(f"{source}: {reason}")
        if parsed.fields:
            self.messages.put(Message(parsed.fields, now, source, parsed.dropped))
