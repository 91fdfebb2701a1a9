"""Parsed messages waiting for the reader, and the bounded queue that holds them."""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass, field


@dataclass
class Message:
    fields: dict[str, str]
    received: float  # time.monotonic() when the message was complete
    source: str
    dropped: list[str] = field(default_factory=list)
    wall: float = 0.0  # time.time() at the same moment


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
