"""The listener's transports: opening each endpoint's socket, receiving a datagram with what
travels beside it, naming a peer, and following a console log file.

AF_VSOCK endpoints bind ``VMADDR_CID_ANY``, as mkosi and systemd-vmspawn do; the tests run them
only inside a guest (tests/boot/test_notify_guest.py), never on the host's own /dev/vsock.
"""

from __future__ import annotations

import array
import contextlib
import errno
import os
import socket
import stat
import struct

from guestinit.host.errors import UserError
from guestinit.host.listen.endpoint import Endpoint
from guestinit.host.listen.intake import READ_CHUNK, Intake
from guestinit.notify.framing import line_framer

BACKLOG = 128
UNIX_PATH_MAX = 108
CONSOLE_READ_PER_POLL = 256 * 1024


def server(ep: Endpoint, paths: list[str]) -> socket.socket:
    """The bound (and, for connections, listening) non-blocking socket of ``ep``; Unix socket
    paths it creates are appended to ``paths`` (removed on close). UserError when it cannot."""
    try:
        if ep.kind in ("serial", "unix", "hvsock"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(unix_path(ep.path if ep.kind != "hvsock" else f"{ep.path}_{ep.port}", paths))
            sock.listen(BACKLOG)
        elif ep.kind == "unix-dgram":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            sock.bind(unix_path(ep.path, paths))
        else:
            kind = socket.SOCK_SEQPACKET if ep.kind == "vsock-seqpacket" else socket.SOCK_STREAM
            sock = socket.socket(socket.AF_VSOCK, kind)
            sock.bind((socket.VMADDR_CID_ANY, ep.port))
            sock.listen(BACKLOG)
    except OSError as exc:
        raise UserError(f"cannot listen on {ep}: {exc.strerror or exc}", hint="check the address") from None
    sock.setblocking(False)
    return sock


def unix_path(path: str, paths: list[str]) -> str:
    """The address to bind for ``path``: @NAME is abstract; a stale socket (its listener was
    killed) is replaced; anything else already there is refused."""
    if path.startswith("@"):
        return "\0" + path[1:]  # abstract: nothing on disk
    if len(os.fsencode(path)) >= UNIX_PATH_MAX:
        raise UserError(f"socket path {path!r} is too long for AF_UNIX", hint="use a path under 108 bytes")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode) or not stale_socket(path):
            raise UserError(f"socket path {path!r} already exists", hint="remove it or choose another path")
        os.unlink(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    paths.append(path)
    return path


def stale_socket(path: str) -> bool:
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


def peer(ep: Endpoint, address: object) -> str:
    """The source a connection's messages are reported with: the endpoint, and for AF_VSOCK the
    guest's CID and port (systemd's senders bind a port under 1024, which only root may)."""
    if ep.kind in ("vsock", "vsock-seqpacket") and isinstance(address, tuple) and len(address) == 2:
        return f"{ep} cid {address[0]} port {address[1]}"
    return str(ep)


def recv_datagram(sock: socket.socket, ep: Endpoint, limit: int) -> tuple[bytes, str]:
    """One datagram (cut at ``limit`` + 1 bytes when longer: parse() then drops it) and its
    source, with the sender's pid when the kernel passed its credentials. File descriptors
    passed with it are closed: sd_notify passes them with FDSTORE=1 and BARRIER=1, and closing
    them is what completes a barrier."""
    ancillary = socket.CMSG_SPACE(struct.calcsize("3i")) + socket.CMSG_SPACE(16 * 4)
    data, ancdata, _flags, _ = sock.recvmsg(limit + 1, ancillary)
    pid = None
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and len(payload) >= 12:
            pid = struct.unpack("3i", payload[:12])[0]
        elif level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds = array.array("i")
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
    return data, f"{ep}" + (f" pid {pid}" if pid else "")


class ConsoleFile:
    """A console log file followed from its start; read again from the start when it is
    truncated, replaced or removed (QEMU truncates it when it starts again)."""

    __slots__ = ("endpoint", "fd", "framer", "inode", "pos")

    def __init__(self, endpoint: Endpoint, max_bytes: int) -> None:
        self.endpoint = endpoint
        self.fd: int | None = None
        self.inode = 0
        self.pos = 0
        self.framer = line_framer(max_bytes)

    def poll(self, intake: Intake) -> None:
        """Hand what was appended since the last poll (at most CONSOLE_READ_PER_POLL) to ``intake``."""
        path = self.endpoint.path
        if self.fd is not None:
            try:
                st = os.stat(path)
                replaced = st.st_ino != self.inode or st.st_size < self.pos
            except OSError:
                replaced = True
            if replaced:
                self.close()
        if self.fd is None:
            try:
                self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
            except OSError:
                return
            self.inode = os.fstat(self.fd).st_ino
            self.pos = 0
            self.framer = line_framer(self.framer.max_bytes)
        budget = CONSOLE_READ_PER_POLL
        while budget > 0:
            data = os.pread(self.fd, min(READ_CHUNK, budget), self.pos)
            if not data:
                return
            self.pos += len(data)
            budget -= len(data)
            intake.console(self.framer, data, str(self.endpoint))

    def close(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None
