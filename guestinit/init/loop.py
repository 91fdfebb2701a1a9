"""PID 1's one event loop: file descriptors (epoll), timers, and signals through a signalfd.

Everything after the early mounts runs on this loop in one thread: signals (blocked, read from
a signalfd), service output pipes, the /dev/log socket, the power button, readiness probes and
restart timers. One thread means fork() for a service is safe and nothing races the reaper.
Waits are events or deadlines, never fixed sleeps.
"""

from __future__ import annotations

import os
import select
import struct
import time
from _heapq import heappop, heappush  # heapq.py adds only what the loop does not use

from guestinit.init import syscalls

TYPE_CHECKING = False  # collections.abc is not imported on the boot path; mypy reads this as usual
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    Callback = Callable[[], None]


SFD_NONBLOCK = 0o4000
SFD_CLOEXEC = 0o2000000
SIGINFO_SIZE = 128  # struct signalfd_siginfo
# signo errno code pid uid fd tid band overrun trapno status int
_SIGINFO_HEAD = struct.Struct("<IiiIIiIIIIii")


class Timer:
    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callback) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def __lt__(self, other: Timer) -> bool:
        return self.when < other.when


class Loop:
    """A tiny reactor: readers/writers on fds, timers on time.monotonic()."""

    def __init__(self) -> None:
        self._epoll = select.epoll()  # not selectors: that module imports collections and math
        self._callbacks: dict[int, list[Callback | None]] = {}  # fd -> [reader, writer]
        self._registered: set[int] = set()
        self._timers: list[Timer] = []

    def _update(self, fd: int) -> None:
        reader, writer = self._callbacks.get(fd, [None, None])
        events = (select.EPOLLIN if reader else 0) | (select.EPOLLOUT if writer else 0)
        registered = fd in self._registered
        if not events:
            self._callbacks.pop(fd, None)
            if registered:
                self._registered.discard(fd)
                try:
                    self._epoll.unregister(fd)
                except OSError:  # closed before it was removed: epoll dropped it already
                    pass
        elif registered:
            self._epoll.modify(fd, events)
        else:
            self._epoll.register(fd, events)
            self._registered.add(fd)

    def add_reader(self, fd: int, callback: Callback) -> None:
        self._callbacks.setdefault(fd, [None, None])[0] = callback
        self._update(fd)

    def remove_reader(self, fd: int) -> None:
        if fd in self._callbacks:
            self._callbacks[fd][0] = None
            self._update(fd)

    def add_writer(self, fd: int, callback: Callback) -> None:
        self._callbacks.setdefault(fd, [None, None])[1] = callback
        self._update(fd)

    def remove_writer(self, fd: int) -> None:
        if fd in self._callbacks:
            self._callbacks[fd][1] = None
            self._update(fd)

    def call_at(self, when: float, callback: Callback) -> Timer:
        timer = Timer(when, callback)
        heappush(self._timers, timer)
        return timer

    def call_later(self, delay: float, callback: Callback) -> Timer:
        return self.call_at(time.monotonic() + max(0.0, delay), callback)

    def run_once(self, max_wait: float) -> None:
        """Wait at most max_wait seconds for one round of events, then run due timers."""
        while self._timers and self._timers[0].cancelled:
            heappop(self._timers)
        timeout = max_wait
        if self._timers:
            timeout = min(timeout, max(0.0, self._timers[0].when - time.monotonic()))
        for fd, mask in self._epoll.poll(timeout):
            callbacks = self._callbacks.get(fd)
            if callbacks is None:
                continue
            # Errors and hang-ups wake both sides, as selectors does: the callback's read or
            # write then sees what happened.
            reader = callbacks[0]
            if mask & ~select.EPOLLOUT and reader is not None:
                reader()
            callbacks = self._callbacks.get(fd)
            if mask & ~select.EPOLLIN and callbacks is not None and callbacks[1] is not None:
                callbacks[1]()
        now = time.monotonic()
        while self._timers and (self._timers[0].cancelled or self._timers[0].when <= now):
            timer = heappop(self._timers)
            if not timer.cancelled:
                timer.cancelled = True
                timer.callback()

    def run_until(self, done: Callable[[], bool], deadline: float | None = None) -> bool:
        """Run until done() (True) or the monotonic deadline passes (False)."""
        while not done():
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return False
            self.run_once(1.0 if deadline is None else min(1.0, deadline - now))
        return True

    def close(self) -> None:
        self._epoll.close()


class SignalInfo:
    __slots__ = ("pid", "signo", "status")

    def __init__(self, signo: int, pid: int, status: int) -> None:
        self.signo = signo
        self.pid = pid
        self.status = status


class SignalFd:
    """signalfd(2) for signals the caller has blocked (pthread_sigmask) in every thread."""

    def __init__(self, signals: Iterable[int]) -> None:
        self.fd: int = syscalls.signalfd(signals, SFD_NONBLOCK | SFD_CLOEXEC)

    def read(self) -> list[SignalInfo]:
        out: list[SignalInfo] = []
        while True:
            try:
                data = os.read(self.fd, SIGINFO_SIZE * 16)
            except BlockingIOError:
                return out
            if not data:
                return out
            for offset in range(0, len(data) - SIGINFO_SIZE + 1, SIGINFO_SIZE):
                fields = _SIGINFO_HEAD.unpack_from(data, offset)
                out.append(SignalInfo(fields[0], fields[3], fields[10]))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
