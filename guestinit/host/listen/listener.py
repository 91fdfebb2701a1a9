"""The host's notify listener: receives systemd-style readiness messages from guests.

The guest belongs to a tenant and may be hostile. Every read is bounded (``Limits``): message
size, lines per message, a whole-message deadline per connection, connections per endpoint (the
oldest is closed to admit a new one, so a flood cannot lock a sender out), the queue of parsed
messages and the log. One thread serves every endpoint with non-blocking sockets and bounded
work per event; invalid UTF-8, lines without '=', bad keys, oversized and slow-drip input are
dropped and logged (rate-limited), and nothing a sender does reaches other senders.

Addresses: guestinit.host.listen.endpoint; what happens to received bytes:
guestinit.host.listen.intake; sockets and the console file: guestinit.host.listen.transports.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable

from guestinit.host.listen.endpoint import Endpoint, parse_endpoint
from guestinit.host.listen.intake import Conn, Intake, read_size
from guestinit.host.listen.limits import Limits
from guestinit.host.listen.messages import Message
from guestinit.host.listen.transports import ConsoleFile, peer, recv_datagram, server

ACCEPTS_PER_EVENT = 32  # at most a quarter of max_connections, so a new connection is read
READS_PER_EVENT = 4  # before enough newer ones arrive to make it the oldest
DATAGRAMS_PER_EVENT = 64
CONSOLE_POLL_S = 0.02
IDLE_POLL_S = 0.1  # how often the loop looks at deadlines and the stop flag


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
        self.intake = Intake(self.limits, on_log)
        self.messages = self.intake.messages
        self.counts = self.intake.counts
        self._sel = selectors.DefaultSelector()
        self._conns: dict[socket.socket, Conn] = {}
        self._per_endpoint: collections.Counter[Endpoint] = collections.Counter()
        self._servers: list[tuple[socket.socket, Endpoint]] = []
        self._consoles: list[ConsoleFile] = []
        self._paths: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def log(self) -> collections.deque[str]:
        """The most recent log lines (what was dropped, from where, and why)."""
        return self.intake.log.lines

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
            console.close()
        for path in self._paths:
            with contextlib.suppress(OSError):
                os.unlink(path)
        self._paths.clear()
        with contextlib.suppress(Exception):
            self._sel.close()

    def get(self, timeout: float | None) -> Message | None:
        """The next message, or None after ``timeout`` seconds."""
        return self.messages.get(timeout)

    def _bind(self, ep: Endpoint) -> None:
        if ep.kind == "console":
            self._consoles.append(ConsoleFile(ep, self.limits.max_message_bytes))
            return
        sock = server(ep, self._paths)
        self._servers.append((sock, ep))
        self._sel.register(sock, selectors.EVENT_READ, ep)

    # serving ---------------------------------------------------------------------------
    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                self._serve_once()
            except Exception as exc:  # the listener must outlive anything a sender does
                self.intake.problem(
                    "internal_errors", f"listener: internal error {type(exc).__name__}: {exc}"
                )

    def _serve_once(self) -> None:
        timeout = CONSOLE_POLL_S if self._consoles else IDLE_POLL_S
        for key, _ in self._sel.select(timeout=timeout):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                if isinstance(key.data, Endpoint):
                    self._on_server(sock, key.data)
                else:
                    self._on_readable(sock)
            except Exception as exc:
                self.intake.problem(
                    "internal_errors", f"listener: error on {key.data}: {type(exc).__name__}: {exc}"
                )
                if sock in self._conns:
                    self._drop(sock)
        for console in self._consoles:
            console.poll(self.intake)
        now = time.monotonic()
        for sock, conn in list(self._conns.items()):
            if now > conn.deadline:
                self.intake.expired(conn)
                self._drop(sock)

    def _on_server(self, sock: socket.socket, ep: Endpoint) -> None:
        if ep.kind == "unix-dgram":
            for _ in range(DATAGRAMS_PER_EVENT):
                try:
                    data, source = recv_datagram(sock, ep, self.limits.max_message_bytes)
                except OSError:  # nothing more to read (EAGAIN) or a datagram that vanished
                    return
                self.intake.datagram(data, source)
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
            source = peer(ep, addr)
            self._conns[conn] = self.intake.connection(ep, source)
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
        self.intake.problem(
            "evicted",
            f"{ep}: {self.limits.max_connections} connections open; closed the oldest "
            f"({oldest[1].buffered} bytes unfinished)",
        )
        self._drop(oldest[0])

    def _on_readable(self, sock: socket.socket) -> None:
        """Read what is there (a bounded number of reads), so a sender whose message and
        end-of-stream have both arrived is finished in one event, before any eviction."""
        conn = self._conns.get(sock)
        if conn is None:
            return
        size = read_size(conn.mode, self.limits)
        for _ in range(READS_PER_EVENT):
            try:
                data = sock.recv(size)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""  # reset by the peer: what it sent is all there will be
            if not self.intake.feed(conn, data):
                self._drop(sock)
                return

    def _drop(self, sock: socket.socket) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(sock)
        conn = self._conns.pop(sock, None)
        if conn is not None:
            self._per_endpoint[conn.endpoint] -= 1
        with contextlib.suppress(OSError):
            sock.close()
