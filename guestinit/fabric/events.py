"""Changes of the controller's state, fanned out to every Watch stream: an event per activation,
deactivation, activated set sent, fabricmanager connected, lost or restored, and change made
around the controller. A subscriber that falls too far behind is dropped (told with ``None``).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

# Event kinds (the proto's Event.Kind names).
SNAPSHOT = "SNAPSHOT"
ACTIVATED = "ACTIVATED"
DEACTIVATED = "DEACTIVATED"
SET_ACTIVATED = "SET_ACTIVATED"
FM_CONNECTED = "FM_CONNECTED"
FM_LOST = "FM_LOST"
RESTORED = "RESTORED"
CHANGED_OUTSIDE = "CHANGED_OUTSIDE"


@dataclass(frozen=True)
class Event:
    kind: str
    seq: int
    time: float
    active_ids: tuple[int, ...]
    serving: bool
    partition_id: int = 0
    message: str = ""


class Events:
    """Fan-out of events to Watch streams; a subscriber that falls too far behind is dropped."""

    def __init__(self, depth: int = 1024) -> None:
        self._lock = threading.Lock()
        self._subscribers: list[queue.Queue[Event | None]] = []
        self._seq = 0
        self.depth = depth

    def publish(
        self, kind: str, active_ids: Iterable[int], serving: bool, partition_id: int = 0, message: str = ""
    ) -> Event:
        with self._lock:
            self._seq += 1
            event = Event(kind, self._seq, time.time(), tuple(active_ids), serving, partition_id, message)
            for q in list(self._subscribers):
                try:
                    q.put_nowait(event)
                except queue.Full:
                    self._subscribers.remove(q)
                    q.queue.clear()
                    q.put_nowait(None)  # tells the stream it was dropped
            return event

    def subscribe(self) -> queue.Queue[Event | None]:
        q: queue.Queue[Event | None] = queue.Queue(maxsize=self.depth)
        with self._lock:
            self._subscribers.append(q)
        return q

    def unsubscribe(self, q: queue.Queue[Event | None]) -> None:
        with self._lock:
            if q in self._subscribers:
                self._subscribers.remove(q)

    @property
    def subscribers(self) -> int:
        with self._lock:
            return len(self._subscribers)
