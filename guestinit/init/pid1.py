"""PID 1 duties: signals, reaping every child, clean power-off, and failing closed.

PID 1 never returns: if it did the kernel would panic. Any error ends in a report to the
host (EXIT_STATUS= non-zero, STATUS= the reason) and a power-off.
"""

from __future__ import annotations

import os
import signal
import time
import traceback
from collections.abc import Callable

from guestinit.init import mounts, syscalls
from guestinit.init.boot import BootState, boot
from guestinit.init.kmsg import Log
from guestinit.init.root import Root

# Signals PID 1 handles synchronously (blocked, then collected with sigtimedwait):
# SIGTERM / SIGPWR from the VMM or an agent, SIGINT from Ctrl-Alt-Del (CAD disabled in the
# kernel so it signals init), SIGCHLD for reaping.
HANDLED = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGPWR, signal.SIGHUP, signal.SIGUSR1}
SHUTDOWN_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGPWR, signal.SIGUSR1}

ExitCallback = Callable[[int, int], None]


class Reaper:
    """Reaps every child; exit statuses of children someone registered go to their callback."""

    def __init__(self) -> None:
        self.watchers: dict[int, ExitCallback] = {}
        self.reaped = 0

    def watch(self, pid: int, callback: ExitCallback) -> None:
        self.watchers[pid] = callback

    def reap(self) -> int:
        count = 0
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            count += 1
            callback = self.watchers.pop(pid, None)
            if callback is not None:
                callback(pid, status)
        self.reaped += count
        return count


def power_off(root: Root, log: Log) -> None:
    """sync, unmount, power off. Never returns in a real guest."""
    os.sync()
    mounts.unmount_all(root)
    os.sync()
    if root.is_real and os.getpid() == 1:
        try:
            syscalls.reboot(syscalls.RB_POWER_OFF)
        except OSError as exc:
            log.error(f"power off failed: {exc}; trying sysrq")
            try:
                root.write_text("/proc/sysrq-trigger", "o")
            except OSError:
                pass
    while os.getpid() == 1:
        time.sleep(1)


class Init:
    """The running init: boot, then supervise until a shutdown request or a failure."""

    def __init__(self, state: BootState) -> None:
        self.state = state
        self.reaper = Reaper()
        self.shutdown_reason = ""

    def fail(self, reason: str, exit_status: int = 1) -> None:
        """Fail closed: report to the host, then power off within the shutdown bound."""
        log = self.state.log
        log.error(f"failing: {reason}")
        sender = self.state.sender
        if sender is not None:
            try:
                sender.send({"EXIT_STATUS": str(exit_status), "STATUS": f"failed: {reason}"[:1024]})
                sender.send({"X_SYSTEMD_SHUTDOWN": "poweroff"})
                sender.flush(self.state.config.number("shutdown_timeout") - 1.0)
            except Exception as exc:  # reporting must not stop the power-off
                log.error(f"could not report failure: {exc}")
        power_off(self.state.root, log)

    def shutdown(self, why: str) -> None:
        log = self.state.log
        log.info(f"shutdown: {why}")
        sender = self.state.sender
        if sender is not None:
            sender.send({"STATUS": f"shutting down: {why}", "X_SYSTEMD_SHUTDOWN": "poweroff"})
            sender.flush(2.0)
        power_off(self.state.root, log)

    def supervise(self) -> None:
        while True:
            info = signal.sigtimedwait(HANDLED, 1.0)
            if info is None:
                self.reaper.reap()
                continue
            if info.si_signo == signal.SIGCHLD:
                self.reaper.reap()
            elif info.si_signo in SHUTDOWN_SIGNALS:
                self.shutdown(f"signal {signal.Signals(info.si_signo).name}")


def run_as_pid1(exec_s: float | None, start_s: float) -> None:
    """Entry point when the kernel runs us as /init. Never returns."""
    signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
    root = Root("/")
    log = Log("/dev/kmsg")
    state = BootState(root, log, exec_s, start_s)
    init = Init(state)
    try:
        try:
            syscalls.reboot(syscalls.RB_DISABLE_CAD)
        except OSError:
            pass
        boot(state)
        init.supervise()
    except BaseException as exc:
        reason = f"{type(exc).__name__}: {exc}"
        for line in traceback.format_exc().splitlines():
            log.error(line)
        try:
            init.fail(reason)
        finally:
            power_off(root, log)
