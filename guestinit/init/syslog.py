"""syslog for the guest: a /dev/log datagram socket, and the ring file log readiness reads.

Every message (from syslog(3) callers through /dev/log, and every line a service writes to its
stdout/stderr) goes to /dev/kmsg with its priority and program name, and into the Ring: a
bounded file, /run/syslog.log as NVRC names it (when it outgrows its bound the older half is
dropped, atomically), with the same lines kept in memory, numbered, so a log readiness probe
sees each new line as it arrives instead of re-reading the file on a timer.
"""

from __future__ import annotations

import os
import struct

from guestinit.init.clock import boottime
from guestinit.init.cmodules import socket
from guestinit.init.kmsg import Log
from guestinit.init.loop import Loop
from guestinit.init.root import Root

RING_PATH = "/run/syslog.log"
SOCKET_PATH = "/dev/log"
MAX_DATAGRAM = 16 * 1024
_UCRED = struct.Struct("iII")
# re is imported on the first message, not at boot; collections' package is never imported
# (deque comes from its C module). mypy reads the TYPE_CHECKING branch as usual.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import re
    from collections import deque
    from collections.abc import Callable

    Subscriber = Callable[["Line"], None]
    Owner = Callable[[int, str], str | None]
else:
    from _collections import deque

_PATTERNS: tuple[re.Pattern[str], re.Pattern[str]] | None = None


def _patterns() -> tuple[re.Pattern[str], re.Pattern[str]]:
    """(RFC 3164 timestamp, TAG[PID]:), compiled on first use."""
    global _PATTERNS
    if _PATTERNS is None:
        import re

        _PATTERNS = (
            re.compile(r"[A-Z][a-z]{2} [ 0-9][0-9] [0-9]{2}:[0-9]{2}:[0-9]{2} "),
            re.compile(r"([^\s\[\]:]{1,48})(?:\[([0-9]{1,10})\])?: ?"),
        )
    return _PATTERNS


class Line:
    __slots__ = ("ident", "pid", "priority", "seq", "service", "text")

    def __init__(self, seq: int, service: str | None, ident: str, pid: int, priority: int, text: str) -> None:
        self.seq = seq
        self.service = service
        self.ident = ident
        self.pid = pid
        self.priority = priority
        self.text = text


class Ring:
    """The bounded log: a file under /run plus the newest lines in memory."""

    def __init__(self, path: str, limit_bytes: int = 1 << 20, memory_lines: int = 4096) -> None:
        self.path = path
        self.limit = max(4096, limit_bytes)
        self.lines: deque[Line] = deque(maxlen=memory_lines)
        self.next_seq = 0
        self.subscribers: list[Subscriber] = []
        self.rotations = 0
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        self.size = os.fstat(self._fd).st_size

    def append(self, ident: str, pid: int, priority: int, text: str, service: str | None = None) -> Line:
        line = Line(self.next_seq, service, ident, pid, priority, text)
        self.next_seq += 1
        self.lines.append(line)
        record = f"{boottime():12.6f} <{priority}> {ident}[{pid}]: {text}\n".encode(errors="replace")
        if self.size + len(record) > self.limit:
            self._rotate()
        try:
            os.write(self._fd, record)
            self.size += len(record)
        except OSError:
            pass  # a full /run must not stop logging to kmsg or the probes
        for subscriber in list(self.subscribers):
            subscriber(line)
        return line

    def since(self, seq: int) -> list[Line]:
        return [line for line in self.lines if line.seq >= seq]

    def _rotate(self) -> None:
        """Keep the newer half of the file: write it to a temporary file, then rename over."""
        keep = self.limit // 2
        try:
            with open(self.path, "rb") as f:
                f.seek(max(0, self.size - keep))
                tail = f.read()
            cut = tail.find(b"\n") + 1 if self.size > keep else 0
            tmp = f"{self.path}.tmp"
            with open(tmp, "wb") as f:
                f.write(tail[cut:])
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, self.path)
        except OSError:
            return
        os.close(self._fd)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        self.size = os.fstat(self._fd).st_size
        self.rotations += 1

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def parse(data: bytes) -> tuple[int, str, int, str]:
    """(priority, program, pid, text) of one syslog datagram: RFC 3164 as glibc's syslog(3)
    sends it, RFC 5424, or bare text. A missing priority is user.notice (13)."""
    text = data.decode("utf-8", errors="replace").rstrip("\n\0")
    priority = 13
    if text.startswith("<"):
        end = text.find(">", 1, 5)
        if end > 1 and text[1:end].isdigit():
            priority = min(int(text[1:end]), 191)
            text = text[end + 1 :]
    if text[:2] == "1 ":  # RFC 5424: VERSION TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD MSG
        parts = text.split(" ", 6)
        if len(parts) == 7:
            app, procid, rest = parts[3], parts[4], parts[6]
            if rest.startswith("- "):
                rest = rest[2:]
            return priority, "" if app == "-" else app, int(procid) if procid.isdigit() else 0, rest
    rfc3164_time, tag_pattern = _patterns()
    match = rfc3164_time.match(text)
    if match:
        text = text[match.end() :]
    tag = tag_pattern.match(text)
    if tag:
        return priority, tag.group(1), int(tag.group(2) or 0), text[tag.end() :]
    return priority, "", 0, text


class Syslog:
    """The /dev/log server on the loop: each datagram to kmsg and the ring."""

    def __init__(self, root: Root, loop: Loop, log: Log, ring: Ring, owner: Owner | None = None) -> None:
        self.root = root
        self.loop = loop
        self.log = log
        self.ring = ring
        self.owner = owner
        self.received = 0
        self.sock: socket.socket | None = None

    def open(self) -> None:
        path = self.root(SOCKET_PATH)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        sock.bind(path)
        os.chmod(path, 0o666)
        sock.setblocking(False)
        self.sock = sock
        self.loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        assert self.sock is not None
        for _ in range(256):  # bounded per wake-up: other fds get their turn
            try:
                data, ancdata, _flags, _addr = self.sock.recvmsg(MAX_DATAGRAM, socket.CMSG_SPACE(_UCRED.size))
            except (BlockingIOError, InterruptedError):
                return
            sender = 0
            for level, kind, payload in ancdata:
                if (level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS) and len(payload) >= 4:
                    sender = _UCRED.unpack_from(payload)[0]
            self.deliver(data, sender)

    def deliver(self, data: bytes, sender_pid: int = 0) -> Line:
        priority, ident, pid, text = parse(data)
        pid = sender_pid or pid
        ident = ident or "syslog"
        service = self.owner(pid, ident) if self.owner is not None else None
        self.received += 1
        self.log.log(priority & 7, text, ident=f"{ident}[{pid}]")
        return self.ring.append(ident, pid, priority, text, service)

    def close(self) -> None:
        if self.sock is not None:
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None
