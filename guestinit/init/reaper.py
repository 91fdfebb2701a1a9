"""The one reaper: every child of PID 1 (services, probes, orphans re-parented to init) is
collected here with waitpid(-1), and the status of a pid someone watches goes to its callback.

Nothing else in init may wait for a child: a second waiter would steal statuses.
"""

from __future__ import annotations

import os

from guestinit.init.cmodules import signal_name

TYPE_CHECKING = False  # collections.abc is not imported on the boot path; mypy reads this as usual
if TYPE_CHECKING:
    from collections.abc import Callable

    ExitCallback = Callable[[int, int], None]


class Reaper:
    """Reaps every child; exit statuses of children someone registered go to their callback."""

    def __init__(self) -> None:
        self.watchers: dict[int, ExitCallback] = {}
        self.reaped = 0
        self.orphans = 0

    def watch(self, pid: int, callback: ExitCallback) -> None:
        self.watchers[pid] = callback

    def forget(self, pid: int) -> None:
        self.watchers.pop(pid, None)

    def reap(self) -> int:
        """Collect every child that has exited; return how many."""
        count = 0
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            if pid == 0:
                break
            count += 1
            callback = self.watchers.pop(pid, None)
            if callback is None:
                self.orphans += 1
            else:
                callback(pid, status)
        self.reaped += count
        return count


def describe(status: int) -> str:
    """A wait status in words: 'exited with 3', 'killed by SIGKILL'."""
    if os.WIFSIGNALED(status):
        return f"killed by {signal_name(os.WTERMSIG(status))}"
    if os.WIFEXITED(status):
        return f"exited with {os.WEXITSTATUS(status)}"
    return f"status {status:#x}"


def succeeded(status: int) -> bool:
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
