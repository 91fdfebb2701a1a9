"""PID 1 duties: signals, reaping every child, clean power-off, and failing closed.

PID 1 never returns: if it did the kernel would panic. Any error ends in a report to the
host (EXIT_STATUS= non-zero, STATUS= the reason) and a power-off within the shutdown bound.
SIGTERM, SIGPWR, SIGINT (Ctrl-Alt-Del, with the kernel's CAD reboot disabled) and the ACPI
power button all lead to the one clean shutdown: services stopped in reverse dependency
order, X_SYSTEMD_SHUTDOWN=poweroff to the host, sync, unmount, power off.

A service with exit_action = "poweroff" (the kata-agent) ending for good powers the VM off
as the agent's own init mode does, with EXIT_STATUS= its exit status and STATUS= the reason:
a clean exit 0 (the agent's answer to DestroySandbox, the sandbox's normal end) through the
clean shutdown above, with EXIT_STATUS=0; any other end through the failure path.
"""

from __future__ import annotations

import os
import time

from guestinit.init import mounts, syscalls
from guestinit.init.boot import BootState, boot, choose_target
from guestinit.init.boot import degraded as boot_degraded
from guestinit.init.cmodules import signal, signal_name
from guestinit.init.headstart import HeadStart
from guestinit.init.kmsg import Log
from guestinit.init.loop import SignalFd
from guestinit.init.reaper import Reaper
from guestinit.init.report import Sender
from guestinit.init.root import Root
from guestinit.init.services.phase import CriticalFailure
from guestinit.init.services.service import Service
from guestinit.notify import jsonenc

__all__ = ["HANDLED", "SHUTDOWN_SIGNALS", "Init", "Reaper", "power_off", "run", "run_as_pid1"]

# Signals PID 1 handles synchronously (blocked in every thread, read from a signalfd):
# SIGTERM / SIGPWR from the VMM or an agent, SIGINT from Ctrl-Alt-Del (CAD disabled in the
# kernel so it signals init), SIGCHLD for reaping.
HANDLED = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGPWR, signal.SIGHUP, signal.SIGUSR1}
SHUTDOWN_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGPWR, signal.SIGUSR1}
KILL_GRACE_S = 0.3


def _user_processes() -> list[int]:
    """Pids of processes other than init and kernel threads (which have no command line)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and entry != "1":
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if f.read(1):
                        pids.append(int(entry))
            except OSError:
                pass
    return pids


def kill_everything(log: Log, reaper: Reaper | None = None) -> None:
    """Only as the real PID 1: SIGTERM, then SIGKILL after a short grace, whatever processes
    are left once the services are stopped (kill(-1) spares init), so that nothing writes
    while filesystems are unmounted."""
    if os.getpid() != 1 or not _user_processes():
        return
    deadline = time.monotonic() + KILL_GRACE_S
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(-1, sig)
        except ProcessLookupError:
            return
        except OSError as exc:
            log.warning(f"kill(-1, {signal_name(sig)}): {exc}")
        while sig == signal.SIGTERM and time.monotonic() < deadline:
            if reaper is not None:
                reaper.reap()
            if not _user_processes():
                return
            time.sleep(0.01)  # last step before power-off; these are not our children to wait on


def power_off(root: Root, log: Log, reaper: Reaper | None = None) -> None:
    """sync, unmount, power off. Never returns in a real guest."""
    os.sync()
    kill_everything(log, reaper)
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
        self.signals: SignalFd | None = None
        self.stopped: list[dict[str, object]] = []

    @property
    def reaper(self) -> Reaper:
        return self.state.reaper

    def install(self, signals: set[signal.Signals] = HANDLED) -> None:
        """Read the (already blocked) signals on the loop; pending ones are delivered at once."""
        self.signals = SignalFd(signals)
        self.state.loop.add_reader(self.signals.fd, self._signalled)

    def _signalled(self) -> None:
        assert self.signals is not None
        for info in self.signals.read():
            if info.signo == signal.SIGCHLD:
                self.reaper.reap()
            elif info.signo in SHUTDOWN_SIGNALS:
                self.request_shutdown(f"signal {signal_name(info.signo)} from pid {info.pid}")
            else:
                self.state.log.info(f"ignoring signal {info.signo} from pid {info.pid}")

    def request_shutdown(self, why: str) -> None:
        if not self.state.shutdown_why:
            self.state.shutdown_why = why
            self.state.log.info(f"shutdown requested: {why}")

    def service_event(self, svc: Service, what: str) -> None:
        """After READY: a critical failure fails the VM; other failures update the host."""
        state = self.state
        if not state.ready_sent or state.shutdown_why or what != "failed":
            return
        sup = state.supervisor
        assert sup is not None
        if sup.exit_request is not None:
            return  # its exit_action powers the VM off (supervise)
        if svc.spec.critical and what == "failed":
            state.failure = f"critical service {svc.name} failed: {svc.error}"
            return
        if state.sender is not None:
            degraded = boot_degraded(state)
            state.sender.send(
                {
                    "STATUS": f"degraded: {', '.join(degraded)} ({svc.name}: {svc.error})"[:1024],
                    "X_GUESTINIT_DEGRADED": ",".join(degraded),
                }
            )

    def supervise(self) -> None:
        state = self.state
        sup = state.supervisor
        if sup is not None:
            sup.on_event = self.service_event
        while True:
            if sup is not None and sup.exit_request is not None and not state.shutdown_why:
                self.service_ended(*sup.exit_request)
                return
            if state.failure:
                self.fail(state.failure, CriticalFailure.exit_status)
                return
            if state.shutdown_why:
                self.shutdown(state.shutdown_why)
                return
            state.loop.run_once(60.0)

    def _sender(self) -> Sender | None:
        """The notify sender; one is made here when boot failed before it had one."""
        state = self.state
        if state.sender is None:
            try:
                target, _source = choose_target(state.config, state.root)
                root = state.root
                state.sender = Sender(target, root("/sys"), root("/dev"), root("/dev/console"))
            except Exception as exc:
                state.log.error(f"no notify channel: {exc}")
        return state.sender

    def _stop_services(self, deadline: float) -> None:
        sup = self.state.supervisor
        if sup is None:
            return
        try:
            self.stopped = sup.stop_all(deadline)
        except Exception as exc:  # stopping must not stop the power-off
            self.state.log.error(f"stopping services: {type(exc).__name__}: {exc}")
        for record in self.stopped:
            self.state.log.info(f"stopped {record['name']}: {record['how']} ({record['s']} s)")

    def service_ended(self, exit_status: int, reason: str) -> None:
        """A service with exit_action = "poweroff" ended: report its status, power off."""
        if exit_status == 0:
            self.shutdown(reason, exit_status=0)
        else:
            self.fail(reason, exit_status)

    def fail(self, reason: str, exit_status: int = 1) -> None:
        """Fail closed: report to the host, stop what runs, power off within the shutdown bound."""
        state, log = self.state, self.state.log
        deadline = time.monotonic() + state.config.number("shutdown_timeout")
        log.error(f"failing: {reason}")
        sender = self._sender()
        try:
            if sender is not None:
                sender.send({"EXIT_STATUS": str(exit_status), "STATUS": f"failed: {reason}"[:1024]})
        except Exception as exc:  # reporting must not stop the power-off
            log.error(f"could not report failure: {exc}")
        self._stop_services(deadline - 1.0)
        try:
            if sender is not None:
                sender.send({"X_SYSTEMD_SHUTDOWN": "poweroff"})
                sender.flush(max(0.2, deadline - time.monotonic() - 0.3))
        except Exception as exc:
            log.error(f"could not report failure: {exc}")
        power_off(state.root, log, state.reaper)

    def shutdown(self, why: str, exit_status: int | None = None) -> None:
        state, log = self.state, self.state.log
        deadline = time.monotonic() + state.config.number("shutdown_timeout")
        log.info(f"shutdown: {why}")
        sender = state.sender if exit_status is None else self._sender()
        if sender is not None:
            first = {"STATUS": f"shutting down: {why}"}
            if exit_status is not None:
                first = {"EXIT_STATUS": str(exit_status), **first}
            sender.send(first)
        self._stop_services(deadline - 0.5)
        order = ", ".join(f"{r['name']} ({r['how']})" for r in self.stopped)
        if sender is not None:
            sender.send(
                {
                    "STATUS": f"powering off ({why})" + (f"; stopped {order}" if order else ""),
                    "X_SYSTEMD_SHUTDOWN": "poweroff",
                    "X_GUESTINIT_STOPPED": jsonenc.dumps(self.stopped),
                }
            )
            sender.flush(max(0.2, deadline - time.monotonic()))
        power_off(state.root, log, state.reaper)


def run_as_pid1(exec_s: float | None, start_s: float, head: HeadStart | None = None) -> None:
    """Entry point when the kernel runs us as /init. Never returns."""
    run(Root("/"), Log("/dev/kmsg"), exec_s, start_s, head)


def run(root: Root, log: Log, exec_s: float | None, start_s: float, head: HeadStart | None = None) -> None:
    """Boot, supervise, shut down or fail closed. As the real PID 1 this never returns; on any
    other root (tests) it returns once the power-off step is reached. ``head``: what
    headstart.begin() did before the boot path was imported."""
    signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
    state = BootState(root, log, exec_s, start_s)
    state.head = head
    init = Init(state)
    try:
        if root.is_real and os.getpid() == 1:
            try:
                syscalls.reboot(syscalls.RB_DISABLE_CAD)  # Ctrl-Alt-Del becomes SIGINT to init
            except OSError:
                pass
        init.install()
        boot(state)
        init.supervise()
    except BaseException as exc:
        status = exc.exit_status if isinstance(exc, CriticalFailure) else 1
        reason = str(exc) if isinstance(exc, CriticalFailure) else f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, CriticalFailure):
            import traceback

            for line in traceback.format_exc().splitlines():
                log.error(line)
        try:
            init.fail(reason, status)
        except BaseException:
            power_off(root, log)
