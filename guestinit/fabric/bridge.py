"""Byte bridge between a listening socket and an upstream connection, one pair per client.

fm-controller serves gRPC on a unix socket and bridges AF_VSOCK to it: this works with any grpcio
(Debian's 1.51 in the service VM included) and lets the controller check the peer's CID on
accept, before a byte reaches gRPC. fmctl uses the same bridge the other way round (a private
unix socket for its gRPC channel, bridged to the service VM's vsock port).
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from collections.abc import Callable, Collection
from typing import Any

Allow = Callable[[Any], bool]


def cid_allowed(allowed: Collection[int]) -> Allow:
    """An accept filter for AF_VSOCK peers ``(cid, port)``; an empty allow-list admits every CID."""
    wanted = frozenset(allowed)

    def allow(peer: Any) -> bool:
        if not wanted:
            return True
        return isinstance(peer, tuple) and len(peer) >= 1 and peer[0] in wanted

    return allow


def vsock_listener(port: int, cid: int = 0xFFFFFFFF, backlog: int = 64) -> socket.socket:
    s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    try:
        s.bind((cid, port))
        s.listen(backlog)
    except OSError:
        s.close()
        raise
    return s


def vsock_connector(cid: int, port: int, timeout_s: float = 5.0) -> Callable[[], socket.socket]:
    def connect() -> socket.socket:
        s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        s.settimeout(timeout_s)
        try:
            s.connect((cid, port))
        except OSError:
            s.close()
            raise
        s.settimeout(None)
        return s

    return connect


def unix_connector(path: str) -> Callable[[], socket.socket]:
    def connect() -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
        except OSError:
            s.close()
            raise
        return s

    return connect


def pump(a: socket.socket, b: socket.socket, chunk: int = 65536) -> None:
    """Copy bytes both ways until both directions reached EOF (half-closes are passed on)."""
    peer = {a: b, b: a}
    sel = selectors.DefaultSelector()
    for s in (a, b):
        sel.register(s, selectors.EVENT_READ)
    open_ends = 2
    try:
        while open_ends:
            for key, _ in sel.select():
                src: socket.socket = key.fileobj  # type: ignore[assignment]
                try:
                    data = src.recv(chunk)
                except OSError:
                    data = b""
                if data:
                    try:
                        peer[src].sendall(data)
                        continue
                    except OSError:
                        return
                sel.unregister(src)
                open_ends -= 1
                with contextlib.suppress(OSError):
                    peer[src].shutdown(socket.SHUT_WR)
    finally:
        sel.close()
        a.close()
        b.close()


class Bridge:
    def __init__(
        self,
        listener: socket.socket,
        upstream: Callable[[], socket.socket],
        allow: Allow = lambda peer: True,
        log: Callable[[str], None] = lambda text: None,
    ) -> None:
        self.listener = listener
        self.upstream = upstream
        self.allow = allow
        self.log = log
        self.refused = 0
        self.accepted = 0
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, name="bridge", daemon=True)

    def start(self) -> Bridge:
        self._thread.start()
        return self

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self._thread.join(timeout=2)

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                conn, peer = self.listener.accept()
            except OSError:
                if self._closed.is_set():
                    return
                continue
            if not self.allow(peer):
                self.refused += 1
                self.log(f"refused a connection from {peer!r}: not in the allow-list")
                conn.close()
                continue
            try:
                up = self.upstream()
            except OSError as exc:
                self.log(f"upstream unreachable for {peer!r}: {exc}")
                conn.close()
                continue
            self.accepted += 1
            threading.Thread(target=pump, args=(conn, up), name="bridge-pump", daemon=True).start()
