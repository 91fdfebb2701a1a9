"""Framing of notify messages on byte streams that carry many of them, with bounded buffers.

* virtio-serial: each message ends with an empty line (``KEY=VALUE\\n...\\n\\n``), so the stream
  splits at ``\\n\\n``; a message is the bytes before that separator plus one ``\\n``.
* console: one message per line (``GUESTINIT-NOTIFY {json}``); lines split at ``\\n``.

Both framers hold at most ``max_bytes`` (+ one read) in memory: a message or line that grows past
the limit is discarded up to its end, and the stream resynchronises on the next separator.
The result never depends on how the stream was cut into reads.
"""

from __future__ import annotations


class Framer:
    """Splits a stream at ``separator``; yields each complete frame (plus ``tail``)."""

    __slots__ = ("_buf", "_discarding", "max_bytes", "separator", "tail")

    def __init__(self, separator: bytes, max_bytes: int, tail: bytes = b"") -> None:
        self.separator = separator
        self.max_bytes = max_bytes
        self.tail = tail
        self._buf = bytearray()
        self._discarding = False  # inside an oversized frame, looking for its end

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> tuple[list[bytes], list[str]]:
        """Frames completed by ``data`` and one note per oversized frame dropped."""
        frames: list[bytes] = []
        notes: list[str] = []
        self._buf += data
        keep = len(self.separator) - 1  # a separator may straddle two reads
        while True:
            end = self._buf.find(self.separator)
            if end < 0:
                break
            if self._discarding:
                self._discarding = False
            elif end + len(self.tail) > self.max_bytes:
                notes.append(f"message over {self.max_bytes} bytes dropped")
            else:
                frames.append(bytes(self._buf[:end]) + self.tail)
            del self._buf[: end + len(self.separator)]
        if self._discarding:
            del self._buf[: max(0, len(self._buf) - keep)]
        elif len(self._buf) > self.max_bytes:
            notes.append(f"message over {self.max_bytes} bytes dropped")
            self._discarding = True
            del self._buf[: max(0, len(self._buf) - keep)]
        return frames, notes

    def pending(self) -> bytes:
        """What is buffered of an unfinished frame (empty while discarding)."""
        return b"" if self._discarding else bytes(self._buf)


def serial_framer(max_bytes: int) -> Framer:
    """Messages on a virtio-serial stream, ending with an empty line."""
    return Framer(b"\n\n", max_bytes, tail=b"\n")


def line_framer(max_bytes: int) -> Framer:
    """Lines of a console stream."""
    return Framer(b"\n", max_bytes)
