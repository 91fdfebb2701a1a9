"""What the listener does with bytes once they have arrived, without any socket: framing per
connection, parsing, the limits, counting and logging what is dropped, and queueing messages.

The sender is a tenant's guest and may be hostile: nothing here raises for any input, every
buffer is bounded by ``Limits.max_message_bytes`` (plus one read), and a sender's bad input
costs only that sender's message or connection.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable

from guestinit.host.listen.endpoint import Endpoint
from guestinit.host.listen.limits import Limits
from guestinit.host.listen.messages import Message, MessageQueue
from guestinit.host.listen.ratelog import RateLimitedLog
from guestinit.notify.framing import Framer, serial_framer
from guestinit.notify.message import PROTOCOL_ONLY_KEYS, Parsed, parse, parse_console_line

# How a connection carries messages.
MESSAGE = "message"  # one message, read to the end of the stream (unix, vsock, hvsock)
FRAMED = "framed"  # many messages, each ending with an empty line (serial)
RECORDS = "records"  # one message per record, like datagrams (vsock-seqpacket)
READ_CHUNK = 64 * 1024  # one read from a byte stream
LOGGED_REASONS = 5  # bad lines logged per message; the rest are counted in one line


def read_size(mode: str, limits: Limits) -> int:
    """How much one read asks for: a record must come whole (a longer one arrives cut at the
    limit + 1 bytes, and parse() drops it); a byte stream is read in chunks."""
    return limits.max_message_bytes + 1 if mode == RECORDS else READ_CHUNK


class Conn:
    """The input of one accepted connection, and when it must be finished."""

    __slots__ = ("buf", "deadline", "endpoint", "framer", "mode", "opened", "source")

    def __init__(self, endpoint: Endpoint, source: str, mode: str, limits: Limits) -> None:
        self.endpoint = endpoint
        self.source = source
        self.mode = mode
        self.buf = bytearray()
        self.framer: Framer | None = serial_framer(limits.max_message_bytes) if mode == FRAMED else None
        self.opened = time.monotonic()
        # A serial stream lives as long as the guest; the others carry one exchange each.
        self.deadline = self.opened + limits.read_timeout_s if mode != FRAMED else float("inf")

    @property
    def buffered(self) -> int:
        """Bytes held for an unfinished message."""
        return self.framer.buffered if self.framer is not None else len(self.buf)


class Intake:
    """Turns received bytes into queued messages, counting and logging what it drops."""

    def __init__(self, limits: Limits, on_log: Callable[[str], None] | None = None) -> None:
        self.limits = limits
        self.messages = MessageQueue(limits.max_queued)
        self.log = RateLimitedLog(limits.log_per_second, on_log)
        self.counts: collections.Counter[str] = collections.Counter()

    def problem(self, counter: str, line: str) -> None:
        """Count one dropped thing under ``counter`` and log why."""
        self.counts[counter] += 1
        self.log(line)

    def connection(self, endpoint: Endpoint, source: str) -> Conn:
        """A new connection accepted on ``endpoint``."""
        if endpoint.kind == "serial":
            mode = FRAMED
        elif endpoint.kind == "vsock-seqpacket":
            mode = RECORDS
        else:
            mode = MESSAGE
        return Conn(endpoint, source, mode, self.limits)

    def feed(self, conn: Conn, data: bytes) -> bool:
        """One read from ``conn`` (b"": the end of it). False when the connection is finished:
        it ended, or its message grew over the limit."""
        if conn.mode == RECORDS:
            if not data:
                return False
            self.datagram(data, conn.source)
            return True
        if conn.framer is not None:
            if not data:
                return False
            frames, notes = conn.framer.feed(data)
            for note in notes:
                self.problem("oversized", f"{conn.source}: {note}")
            for frame in frames:
                self.datagram(frame, conn.source)
            return True
        if not data:
            if conn.buf:
                self.datagram(bytes(conn.buf), conn.source)
                conn.buf.clear()
            return False
        conn.buf += data
        if len(conn.buf) > self.limits.max_message_bytes:
            self.problem(
                "oversized", f"{conn.source}: message over {self.limits.max_message_bytes} bytes: dropped"
            )
            conn.buf.clear()
            return False
        return True

    def expired(self, conn: Conn) -> None:
        """``conn`` passed its deadline: what it holds is dropped (the caller closes it)."""
        within = f"within {self.limits.read_timeout_s:g} s"
        if conn.mode == RECORDS:  # its messages went out record by record
            self.problem("timed_out", f"{conn.source}: connection not closed {within}: closed")
        else:
            self.problem(
                "timed_out", f"{conn.source}: no complete message {within} ({conn.buffered} bytes): dropped"
            )
        conn.buf.clear()

    def datagram(self, data: bytes, source: str) -> None:
        """One whole message: a datagram, a record, a connection's bytes or a serial frame."""
        self.deliver(parse(data, self.limits.max_message_bytes), source)

    def console(self, framer: Framer, data: bytes, source: str) -> None:
        """Bytes of a console log; marked lines are messages, everything else is ignored."""
        lines, notes = framer.feed(data)
        for note in notes:
            self.problem("oversized", f"{source}: console line: {note}")
        for line in lines:
            parsed = parse_console_line(line)
            if parsed is not None:
                self.deliver(parsed, source)

    def deliver(self, parsed: Parsed, source: str) -> None:
        now, wall = time.monotonic(), time.time()
        if parsed.dropped:
            self.counts["dropped_lines"] += len(parsed.dropped)
            for reason in parsed.dropped[:LOGGED_REASONS]:
                self.log(f"{source}: {reason}")
            if len(parsed.dropped) > LOGGED_REASONS:
                self.log(f"{source}: {len(parsed.dropped) - LOGGED_REASONS} more bad lines")
        if not parsed.fields or set(parsed.fields) <= PROTOCOL_ONLY_KEYS:
            return
        self.counts["messages"] += 1
        lost = self.messages.put(Message(parsed.fields, now, source, parsed.dropped, wall))
        if lost is not None:
            self.problem(
                "queue_full", f"{lost.source}: {self.limits.max_queued} messages waiting: dropped one"
            )
