"""Readiness probes: when a started service counts as ready.

Each probe runs on the loop and ends by calling ``on_done(ok, detail)`` once; the service
bounds it with its ready_timeout and cancels it on timeout or exit. Nothing sleeps: a file is
awaited with inotify (pyinotify, imported only when a file probe has to wait), a log line as
it reaches the ring, a command through the reaper; only connecting to a socket, which has no
event to wait for before the daemon listens, is retried, with a back-off from 10 ms to 250 ms.
"""

from __future__ import annotations

import errno
import os

from guestinit.init.cmodules import socket
from guestinit.init.loop import Loop, Timer
from guestinit.init.root import Root
from guestinit.init.syslog import Line, Ring

TYPE_CHECKING = False  # re is imported only when a log probe exists; mypy reads this as usual
if TYPE_CHECKING:
    import re
    from collections.abc import Callable

    Done = Callable[[bool, str], None]
    # run(argv, on_exit(status)) -> pid: start a probe command as the service's user, reaped centrally
    RunCommand = Callable[[tuple[str, ...], Callable[[int], None]], int]


class Probe:
    kind = "none"

    def __init__(self, loop: Loop, on_done: Done) -> None:
        self.loop = loop
        self._on_done = on_done
        self.finished = False
        self.attempts = 0

    def start(self) -> None:
        self.finish(True, "started")

    def finish(self, ok: bool, detail: str) -> None:
        if self.finished:
            return
        self.finished = True
        self.cleanup()
        self._on_done(ok, detail)

    def cancel(self) -> None:
        if not self.finished:
            self.finished = True
            self.cleanup()

    def cleanup(self) -> None:
        pass


class _Retrying(Probe):
    first_delay = 0.01
    max_delay = 0.25

    def __init__(self, loop: Loop, on_done: Done) -> None:
        super().__init__(loop, on_done)
        self._delay = self.first_delay
        self._timer: Timer | None = None

    def retry_later(self, attempt: Callable[[], None]) -> None:
        if self.finished:
            return
        self._timer = self.loop.call_later(self._delay, attempt)
        self._delay = min(self._delay * 2, self.max_delay)

    def cleanup(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class Connect(_Retrying):
    """Ready when a stream connection to a Unix socket path or a TCP address is accepted."""

    def __init__(self, loop: Loop, on_done: Done, kind: str, address: str | tuple[str, int]) -> None:
        super().__init__(loop, on_done)
        self.kind = kind
        self.address = address
        self._sock: socket.socket | None = None

    def start(self) -> None:
        self._attempt()

    def _targets(self) -> list[tuple[int, object]]:
        if isinstance(self.address, str):
            return [(socket.AF_UNIX, self.address)]
        host, port = self.address
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError:
            return []
        return [(info[0], info[4]) for info in infos[:1]]

    def _attempt(self) -> None:
        if self.finished:
            return
        self.attempts += 1
        targets = self._targets()
        if not targets:
            self.retry_later(self._attempt)
            return
        family, address = targets[0]
        sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        err = sock.connect_ex(address)  # type: ignore[arg-type]
        if err == 0:
            sock.close()
            self.finish(True, f"connected to {self._describe()}")
        elif err == errno.EINPROGRESS:
            self._sock = sock
            self.loop.add_writer(sock.fileno(), self._connected)
        else:
            sock.close()
            self.retry_later(self._attempt)

    def _connected(self) -> None:
        sock = self._sock
        assert sock is not None
        self.loop.remove_writer(sock.fileno())
        self._sock = None
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        sock.close()
        if err == 0:
            self.finish(True, f"connected to {self._describe()}")
        else:
            self.retry_later(self._attempt)

    def _describe(self) -> str:
        if isinstance(self.address, str):
            return self.address
        return f"{self.address[0]}:{self.address[1]}"

    def cleanup(self) -> None:
        super().cleanup()
        if self._sock is not None:
            self.loop.remove_writer(self._sock.fileno())
            self._sock.close()
            self._sock = None


class FileAppears(_Retrying):
    """Ready when a path exists. Waits on inotify for the deepest existing ancestor; without
    pyinotify (an image that leaves it out) it re-checks with the back-off instead."""

    kind = "file"

    def __init__(self, loop: Loop, on_done: Done, root: Root, path: str) -> None:
        super().__init__(loop, on_done)
        self.root = root
        self.path = path
        self._wm: object | None = None
        self._notifier: object | None = None
        self._watched: dict[str, int] = {}
        self.used_inotify = False

    def start(self) -> None:
        if self._check():
            return
        try:
            import warnings

            with warnings.catch_warnings():  # pyinotify imports asyncore, deprecated in 3.11
                warnings.simplefilter("ignore", DeprecationWarning)
                import pyinotify
        except ImportError:
            self._poll()
            return
        self.used_inotify = True
        wm = pyinotify.WatchManager()
        self._wm = wm
        self._notifier = pyinotify.Notifier(wm, default_proc_fun=lambda _event: self._changed(), timeout=0)
        self.loop.add_reader(wm.get_fd(), self._readable)
        self._arm()

    def _check(self) -> bool:
        self.attempts += 1
        if self.root.exists(self.path):
            self.finish(True, f"{self.path} exists")
            return True
        return False

    def _poll(self) -> None:
        if not self._check():
            self.retry_later(self._poll)

    def _arm(self) -> None:
        """Watch the deepest existing ancestor, then check again (no event is lost between)."""
        import pyinotify

        mask = pyinotify.IN_CREATE | pyinotify.IN_MOVED_TO | pyinotify.IN_ATTRIB
        directory = os.path.dirname(self.path)
        while directory != "/" and not self.root.exists(directory):
            directory = os.path.dirname(directory)
        if directory not in self._watched:
            assert self._wm is not None
            for old in list(self._watched.values()):
                self._wm.rm_watch(old, quiet=True)  # type: ignore[attr-defined]
            self._watched = {}
            result = self._wm.add_watch(self.root(directory), mask, quiet=True)  # type: ignore[attr-defined]
            wd = result.get(self.root(directory), -1)
            if wd < 0:
                self.retry_later(self._poll)  # cannot watch it: fall back to checking
                return
            self._watched[directory] = wd
        self._check()

    def _readable(self) -> None:
        notifier = self._notifier
        assert notifier is not None
        notifier.read_events()  # type: ignore[attr-defined]
        notifier.process_events()  # type: ignore[attr-defined]

    def _changed(self) -> None:
        if not self.finished:
            self._arm()

    def cleanup(self) -> None:
        super().cleanup()
        if self._wm is not None:
            self.loop.remove_reader(self._wm.get_fd())  # type: ignore[attr-defined]
            self._wm.close()  # type: ignore[attr-defined]
            self._wm = None
            self._notifier = None


class LogMatch(Probe):
    """Ready when a line of the service's own output or syslog (since this start) matches."""

    kind = "log"

    def __init__(self, loop: Loop, on_done: Done, ring: Ring, service: str, pattern: re.Pattern[str]) -> None:
        super().__init__(loop, on_done)
        self.ring = ring
        self.service = service
        self.pattern = pattern
        self.since = ring.next_seq

    def start(self) -> None:
        self.ring.subscribers.append(self._line)
        for line in self.ring.since(self.since):
            self._line(line)
            if self.finished:
                return

    def _line(self, line: Line) -> None:
        if self.finished or line.service != self.service:
            return
        self.attempts += 1
        if self.pattern.search(line.text):
            self.finish(True, f"log matched {self.pattern.pattern!r}: {line.text[:200]}")

    def cleanup(self) -> None:
        if self._line in self.ring.subscribers:
            self.ring.subscribers.remove(self._line)


class CommandExits(_Retrying):
    """Ready when a command exits 0; run again with the back-off while it does not."""

    kind = "command"
    first_delay = 0.05
    max_delay = 1.0

    def __init__(self, loop: Loop, on_done: Done, argv: tuple[str, ...], run: RunCommand) -> None:
        super().__init__(loop, on_done)
        self.argv = argv
        self.run = run
        self.pid = 0
        self.last = ""

    def start(self) -> None:
        self._attempt()

    def _attempt(self) -> None:
        if self.finished:
            return
        self.attempts += 1
        try:
            self.pid = self.run(self.argv, self._exited)
        except OSError as exc:
            self.finish(False, f"probe command {self.argv[0]}: {exc}")

    def _exited(self, status: int) -> None:
        self.pid = 0
        if self.finished:
            return
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
            self.finish(True, f"{self.argv[0]} exited 0")
        else:
            self.last = f"{self.argv[0]} exited with status {os.waitstatus_to_exitcode(status)}"
            self.retry_later(self._attempt)

    def cleanup(self) -> None:
        super().cleanup()
        if self.pid:
            try:
                os.kill(self.pid, 9)
            except OSError:
                pass


def make(
    kind: str,
    arg: object,
    loop: Loop,
    on_done: Done,
    root: Root,
    ring: Ring,
    service: str,
    run: RunCommand,
) -> Probe:
    if kind in ("socket", "tcp"):
        assert isinstance(arg, str | tuple)
        return Connect(loop, on_done, kind, arg)
    if kind == "file":
        assert isinstance(arg, str)
        return FileAppears(loop, on_done, root, arg)
    if kind == "log":
        import re  # already imported: the service file compiled this pattern

        assert isinstance(arg, re.Pattern)
        return LogMatch(loop, on_done, ring, service, arg)
    if kind == "command":
        assert isinstance(arg, tuple)
        return CommandExits(loop, on_done, arg, run)
    return Probe(loop, on_done)
