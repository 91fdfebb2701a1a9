"""Stopping one service, and what its exited main process left behind.

What stopping reaches (``scope``): "cgroup", every process of the service's cgroup
(kill_mode = "control-group" with a cgroup: SIGTERM to each, cgroup.kill after the timeout,
cgroup.events for when it is empty; psutil is never imported); "process", the main process
alone (kill_mode = "process"); "tree", where a service has no cgroup, its process tree as
psutil finds it (the main process, its descendants, its session's members), imported then.
"""

from __future__ import annotations

import os
import time

from guestinit.init.cmodules import signal
from guestinit.init.services.service import Service

TYPE_CHECKING = False  # typing is not imported on the boot path; mypy reads this as usual
if TYPE_CHECKING:
    from collections.abc import Callable

    import psutil  # imported only when a service without a cgroup is stopped

    from guestinit.init.cgroups import CgroupTree
    from guestinit.init.kmsg import Log
    from guestinit.init.loop import Loop

POLL_S = 0.02  # how often a stopping service's cgroup (or tree) is checked for leftovers


def session_of(proc: str, pid: int) -> int:
    """The session id of a process (from PROC/PID/stat), 0 when it cannot be read."""
    try:
        with open(f"{proc}/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
        return int(stat[stat.rindex(")") + 2 :].split()[3])
    except (OSError, ValueError, IndexError):
        return 0


class Stopper:
    def __init__(self, loop: Loop, log: Log, cgroups: CgroupTree | None, proc: str = "/proc") -> None:
        self.loop = loop
        self.log = log
        self.cgroups = cgroups
        self.proc = proc

    def scope(self, svc: Service) -> str:
        if svc.spec.kill_mode == "process":
            return "process"
        return "cgroup" if svc.cgroup and self.cgroups is not None else "tree"

    # -- leftovers of an exited main process ----------------------------------------------

    def sweep(self, svc: Service, timeout: float) -> None:
        """The main process exited: SIGTERM what it left in the service's cgroup, cgroup.kill
        after ``timeout`` (or at once, when the service starts again before: ``clear``)."""
        if self.scope(svc) != "cgroup":
            return
        assert self.cgroups is not None
        left = self.cgroups.pids(svc.name)
        if not left:
            return
        self.log.info(f"{svc.name}: {len(left)} left behind: SIGTERM, cgroup.kill after {timeout:g} s")
        _signal(left, signal.SIGTERM)
        svc.sweep_timer = self.loop.call_later(timeout, lambda: self._sweep_kill(svc))

    def _sweep_kill(self, svc: Service) -> None:
        svc.sweep_timer = None
        if self.cgroups is not None and self.cgroups.populated(svc.name):
            self.log.warning(f"{svc.name}: processes left behind still running after SIGTERM: cgroup.kill")
            self.kill_cgroup(svc)

    def clear(self, svc: Service) -> None:
        """Before the service's next process enters its cgroup: a sweep still under way ends
        with cgroup.kill now."""
        if svc.sweep_timer is None:
            return
        svc.sweep_timer.cancel()
        svc.sweep_timer = None
        if self.cgroups is not None and self.cgroups.populated(svc.name):
            self.kill_cgroup(svc)

    def leftovers(self, svc: Service) -> bool:
        """Processes of the service still in its cgroup (its main process gone or not)."""
        return self.scope(svc) == "cgroup" and self.cgroups is not None and self.cgroups.populated(svc.name)

    def kill_cgroup(self, svc: Service) -> None:
        """SIGKILL the whole cgroup: cgroup.kill, or each process where the kernel lacks it."""
        assert self.cgroups is not None
        if not self.cgroups.kill(svc.name):
            _signal(self.cgroups.pids(svc.name), signal.SIGKILL)

    # -- stopping ---------------------------------------------------------------------------

    def terminate(self, svc: Service, timeout: float, then: Callable[[], None]) -> None:
        """SIGTERM what the scope reaches; SIGKILL what is left after timeout; then ``then()``."""
        svc.state = "stopping"
        svc.after_stop = then
        svc.stop_started = time.monotonic()
        svc.stop_how = "exited"
        svc.stop_readiness_wait()
        for timer in (svc.restart_timer, svc.sweep_timer):
            if timer is not None:
                timer.cancel()
        svc.restart_timer = svc.sweep_timer = None
        svc.tree = []
        scope = self.scope(svc)
        if scope == "tree":
            svc.tree = self._tree(svc.pid) if svc.pid else []
            targets = [p.pid for p in svc.tree]
        elif scope == "cgroup":
            assert self.cgroups is not None
            targets = sorted(set(self.cgroups.pids(svc.name)) | ({svc.pid} if svc.pid else set()))
        else:
            targets = [svc.pid] if svc.pid else []
        if targets:
            svc.stop_how = "SIGTERM"
        _signal(targets, signal.SIGTERM)
        svc.kill_timer = self.loop.call_later(timeout, lambda: self._kill(svc))
        self.check_stopped(svc)

    def _kill(self, svc: Service) -> None:
        svc.kill_timer = None
        if svc.state != "stopping":
            return
        scope = self.scope(svc)
        if scope == "tree":
            alive = [p for p in svc.tree if _alive(p)]
            if alive:
                svc.stop_how = "SIGKILL"
                self.log.warning(f"{svc.name}: {len(alive)} process(es) still running after SIGTERM: SIGKILL")
            for proc in alive:
                try:
                    proc.kill()
                except Exception:
                    pass
            return
        if scope == "cgroup":
            assert self.cgroups is not None
            if self.cgroups.populated(svc.name):
                svc.stop_how = "SIGKILL"
                self.log.warning(f"{svc.name}: still running after SIGTERM: cgroup.kill")
                self.kill_cgroup(svc)
        if svc.pid:
            svc.stop_how = "SIGKILL"
            _signal([svc.pid], signal.SIGKILL)

    def kill_now(self, svc: Service) -> None:
        """The shutdown deadline: SIGKILL whatever of the service is left, at once."""
        if self.scope(svc) == "cgroup":
            self.kill_cgroup(svc)
            _signal([svc.pid] if svc.pid else [], signal.SIGKILL)
            return
        for proc in svc.tree or (self._tree(svc.pid) if svc.pid else []):
            try:
                proc.kill()
            except Exception:
                pass

    def check_stopped(self, svc: Service) -> None:
        """Stopped once the main process was reaped and nothing else the scope reaches is
        left; the main exit is an event (the reaper), leftovers are re-checked every 20 ms."""
        svc.poll_timer = None
        if svc.state != "stopping" or svc.pid:
            return
        if self._left(svc):
            svc.poll_timer = self.loop.call_later(POLL_S, lambda: self.check_stopped(svc))
            return
        if svc.kill_timer is not None:
            svc.kill_timer.cancel()
            svc.kill_timer = None
        svc.tree = []
        then, svc.after_stop = svc.after_stop, None
        if then is not None:
            then()

    def _left(self, svc: Service) -> bool:
        scope = self.scope(svc)
        if scope == "cgroup":
            assert self.cgroups is not None
            return self.cgroups.populated(svc.name)
        return scope == "tree" and any(_alive(p) for p in svc.tree)

    def _tree(self, pid: int) -> list[psutil.Process]:
        """The main process, its descendants, and its session's members."""
        import psutil

        procs: dict[int, psutil.Process] = {}
        try:
            main = psutil.Process(pid)
            procs[pid] = main
            for child in main.children(recursive=True):
                procs[child.pid] = child
        except psutil.Error:
            pass
        try:
            entries = os.listdir(self.proc)
        except OSError:
            entries = []
        for entry in entries:
            other = int(entry) if entry.isdigit() else 0
            if other and other not in procs and other != os.getpid() and session_of(self.proc, other) == pid:
                try:
                    procs[other] = psutil.Process(other)
                except psutil.Error:
                    pass
        return list(procs.values())


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        if pid > 1:
            try:
                os.kill(pid, sig)
            except OSError:
                pass


def _alive(proc: psutil.Process) -> bool:
    import psutil

    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
