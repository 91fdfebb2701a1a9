"""Supervision: start services in dependency order (independent ones in parallel), wait for
their readiness, restart them with back-off, give up, and stop them in reverse order. The
states a service goes through are described in service.py.

Each service runs in its own cgroup (cgroups.py) when the tree is there: stopping reaches
every process in it (kill_mode = "control-group", the default), forked or double-forked, and
what a main process leaves behind when it exits is stopped too (stopping.py). A service
with exit_action = "poweroff" that ends for good sets ``exit_request``, which PID 1 acts on."""

from __future__ import annotations

import os
import time

from guestinit.init.clock import boottime
from guestinit.init.kmsg import INFO, Log
from guestinit.init.loop import Loop
from guestinit.init.reaper import Reaper, describe, succeeded
from guestinit.init.root import Root
from guestinit.init.services import probes, spawn
from guestinit.init.services.keys import ServiceSpec
from guestinit.init.services.order import cycles, dependencies, levels
from guestinit.init.services.pipe import Pipe
from guestinit.init.services.service import Service
from guestinit.init.services.stopping import Stopper, session_of
from guestinit.init.syslog import Ring

TYPE_CHECKING = False  # typing is not imported on the boot path; mypy reads this as usual
if TYPE_CHECKING:
    from collections.abc import Callable

    from guestinit.init.cgroups import CgroupTree

    Event = Callable[["Service", str], None]

BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 10.0


class Supervisor:
    def __init__(
        self,
        root: Root,
        loop: Loop,
        reaper: Reaper,
        log: Log,
        ring: Ring,
        ready_timeout: float = 30.0,
        stop_timeout: float = 3.0,
        on_event: Event | None = None,
        proc: str = "/proc",
        cgroups: CgroupTree | None = None,
    ) -> None:
        self.root = root
        self.loop = loop
        self.reaper = reaper
        self.log = log
        self.ring = ring
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.on_event = on_event
        self.proc = proc
        self.cgroups = cgroups
        self.stopper = Stopper(loop, log, cgroups, proc)
        self.services: dict[str, Service] = {}
        self.problems: list[str] = []
        self.stopping = False
        # (EXIT_STATUS, reason) once a service with exit_action = "poweroff" has ended
        self.exit_request: tuple[int, str] | None = None

    # -- configuration ------------------------------------------------------------------

    def add(self, specs: list[ServiceSpec], disabled: tuple[str, ...] = ()) -> None:
        for spec in specs:
            self.services[spec.name] = Service(spec)
            self.problems.extend(spec.problems)
        for name in disabled:
            if name in self.services:
                self.services[name].state = "disabled"
            else:
                self.problems.append(f"guestinit.disable names {name!r}, which is not a service here")
        deps, problems = dependencies([s.spec for s in self.services.values()])
        self.problems.extend(problems)
        on_cycle = cycles(deps)
        depth = levels(deps)
        for name, svc in self.services.items():
            svc.deps = deps[name]
            svc.level = depth[name]
            if name in on_cycle and not svc.spec.error:
                svc.spec.error = f"{svc.spec.path}: after forms a cycle ({', '.join(sorted(on_cycle))})"
        for problem in self.problems:
            self.log.warning(problem)

    # -- queries ------------------------------------------------------------------------

    def settled(self) -> bool:
        return all(s.settled for s in self.services.values())

    def critical_failure(self) -> str | None:
        for svc in self.services.values():
            if svc.spec.critical and svc.state == "failed":
                return f"critical service {svc.name} failed: {svc.error}"
        return None

    def degraded(self) -> list[str]:
        return [s.name for s in self.services.values() if s.state == "failed" and not s.spec.critical]

    def summary(self) -> list[dict[str, object]]:
        """Each service's state, with its cgroup's memory.current and CPU time where it has one."""
        out = []
        for svc in self.services.values():
            d = svc.as_dict()
            if svc.cgroup and self.cgroups is not None:
                d.update(self.cgroups.stats(svc.name))
            out.append(d)
        return out

    def owner(self, pid: int, ident: str) -> str | None:
        """The service a process (or a syslog program name) belongs to, if any."""
        if pid:
            for svc in self.services.values():
                if pid in (svc.pid, svc.out_pid):
                    return svc.name
            in_cgroup = self._cgroup_of(pid)
            if in_cgroup:
                return in_cgroup
            session = session_of(self.proc, pid)
            if session:
                for svc in self.services.values():
                    if session in (svc.pid, svc.out_pid):
                        return svc.name
        for svc in self.services.values():
            if ident in (svc.name, os.path.basename(svc.spec.command[0]) if svc.spec.command else ""):
                return svc.name
        return None

    def _cgroup_of(self, pid: int) -> str | None:
        """The service whose cgroup holds pid (/proc/PID/cgroup: "0::/guestinit/NAME")."""
        if self.cgroups is None:
            return None
        try:
            with open(f"{self.proc}/{pid}/cgroup", "rb") as f:
                text = f.read().decode(errors="replace")
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith("0::/"):
                parts = line[4:].split("/")
                if len(parts) >= 2 and parts[-2] == "guestinit" and parts[-1] in self.services:
                    return parts[-1]
        return None

    # -- starting -----------------------------------------------------------------------

    def start(self) -> None:
        self._schedule()

    def _schedule(self) -> None:
        if self.stopping or self.critical_failure():
            return
        for svc in self.services.values():
            if svc.state == "waiting" and all(self.services[d].settled for d in svc.deps):
                self._begin(svc)

    def _event(self, svc: Service, what: str) -> None:
        if self.on_event is not None:
            self.on_event(svc, what)

    def _begin(self, svc: Service) -> None:
        spec = svc.spec
        if spec.error:
            self._give_up(svc, spec.error)
            return
        if spec.condition_path_exists and not self.root.exists(spec.condition_path_exists):
            svc.state = "skipped"
            self.log.info(f"{svc.name}: skipped ({spec.condition_path_exists} does not exist)")
            self._event(svc, "skipped")
            self._schedule()
            return
        try:
            svc.creds = spawn.resolve(self.root, spec.user, spec.group)
        except spawn.SpawnError as exc:
            self._give_up(svc, f"{spec.path}: {exc}")
            return
        self._spawn(svc)

    def _spawn(self, svc: Service) -> None:
        svc.restart_timer = None
        if self.stopping:
            svc.state = "stopped"
            return
        spec = svc.spec
        assert svc.creds is not None
        svc.last_status = None
        cgroup_fd = self._enter_cgroup(svc)
        read_end, write_end = os.pipe()
        try:
            pid = spawn.spawn(
                spec.command,
                spawn.clean_environment(svc.creds, spec.environment),
                svc.creds,
                write_end,
                write_end,
                spec.oom_score_adj,
                spec.rlimit_nofile,
                cgroup_fd=cgroup_fd,
            )
        except spawn.SpawnError as exc:
            os.close(read_end)
            os.close(write_end)
            svc.starts += 1
            self._failed(svc, str(exc))
            return
        finally:
            if cgroup_fd >= 0:
                os.close(cgroup_fd)
        os.close(write_end)
        self.reaper.watch(pid, lambda p, status: self._exited(svc, p, status))
        svc.pid = svc.out_pid = pid
        svc.adopted = False
        # a previous run's pipe (held open by a leftover process) keeps draining on its own
        svc.pipe = Pipe(self.loop, read_end, lambda text: self._line(svc, pid, text))
        svc.starts += 1
        svc.state = "starting"
        if svc.first_start_s is None:
            svc.first_start_s = boottime()
        self.log.info(f"{svc.name}: started {spec.command[0]} as pid {pid} (user {svc.creds.name})")
        kind, arg = spec.ready
        timeout = spec.ready_timeout or self.ready_timeout
        svc.ready_timer = self.loop.call_later(timeout, lambda: self._ready_timeout(svc, timeout))
        if kind == "exit":
            return  # a one-shot: its own exit (_exited) makes it ready
        svc.probe = probes.make(
            kind,
            self.root(arg) if kind == "socket" and isinstance(arg, str) else arg,
            self.loop,
            lambda ok, detail: self._ready(svc, ok, detail),
            self.root,
            self.ring,
            svc.name,
            lambda argv, on_exit: self._run_probe(svc, argv, on_exit),
        )
        svc.probe.start()

    def _enter_cgroup(self, svc: Service) -> int:
        """The service's cgroup.procs, opened for its next process to enter (-1: none). Made
        and limited at the first start; what a previous run left there is killed first."""
        tree = self.cgroups
        if tree is None:
            return -1
        self.stopper.clear(svc)
        try:
            if not svc.cgroup:
                tree.create(svc.name)
                for problem in tree.limit(svc.name, svc.spec.memory_max, svc.spec.cpu_weight):
                    self.problems.append(f"{svc.name}: {problem}")
                    self.log.warning(f"{svc.name}: {problem}")
            fd = tree.open_procs(svc.name)
        except OSError as exc:
            self.log.warning(f"{svc.name}: no cgroup ({exc}): its process tree stands in for it")
            svc.cgroup = False
            return -1
        svc.cgroup = True
        return fd

    def _run_probe(self, svc: Service, argv: tuple[str, ...], on_exit: Callable[[int], None]) -> int:
        assert svc.creds is not None
        read_end, write_end = os.pipe()
        cgroup_fd = -1
        try:
            if svc.cgroup and self.cgroups is not None:
                cgroup_fd = self.cgroups.open_procs(svc.name)  # a probe counts as the service's
            env = spawn.clean_environment(svc.creds, svc.spec.environment)
            pid = spawn.spawn(argv, env, svc.creds, write_end, write_end, cgroup_fd=cgroup_fd)
        except (spawn.SpawnError, OSError):
            os.close(read_end)
            raise
        finally:
            os.close(write_end)
            if cgroup_fd >= 0:
                os.close(cgroup_fd)
        ident = f"{svc.name}(probe)[{pid}]"
        pipe = Pipe(self.loop, read_end, lambda text: self.log.log(INFO, text, ident=ident))

        def exited(_pid: int, status: int) -> None:
            pipe.drain()
            pipe.close()
            on_exit(status)

        self.reaper.watch(pid, exited)
        return pid

    def _line(self, svc: Service, pid: int, text: str) -> None:
        self.log.log(INFO, text, ident=f"{svc.name}[{pid}]")
        self.ring.append(svc.name, pid, INFO, text, svc.name)

    def _ready(self, svc: Service, ok: bool, detail: str) -> None:
        if svc.ready_timer is not None:
            svc.ready_timer.cancel()
            svc.ready_timer = None
        svc.probe = None
        if svc.state != "starting":
            return
        if not ok:
            self.stopper.terminate(svc, self._stop_timeout(svc), lambda: self._failed(svc, detail))
            return
        svc.state = "ready"
        svc.ever_ready = True
        svc.ready_s = boottime()
        svc.ready_detail = detail
        self.log.info(f"{svc.name}: ready ({detail})")
        self._event(svc, "ready")
        self._schedule()

    def _ready_timeout(self, svc: Service, timeout: float) -> None:
        svc.ready_timer = None
        probe = svc.probe
        svc.probe = None
        if probe is not None:
            probe.cancel()
        if svc.state != "starting":
            return
        kind = svc.spec.ready[0]
        extra = f"; last: {probe.last}" if isinstance(probe, probes.CommandExits) and probe.last else ""
        reason = f"not ready ({kind}) within {timeout:g} s{extra}"
        self.stopper.terminate(svc, self._stop_timeout(svc), lambda: self._failed(svc, reason))

    # -- exits, restarts ----------------------------------------------------------------

    def _exited(self, svc: Service, pid: int, status: int) -> None:
        if svc.pipe is not None:
            svc.pipe.drain()
        if pid != svc.pid:
            return
        svc.pid = 0
        svc.last_status = status
        what = describe(status)
        if svc.state == "stopping":
            self.stopper.check_stopped(svc)
            return
        if svc.spec.pid_file and not svc.adopted and svc.state in ("starting", "ready") and succeeded(status):
            if not self._adopt(svc):
                self._sweep(svc)
                self._failed(svc, f"exited with 0 but {svc.spec.pid_file} names no running process")
            return
        self._sweep(svc)
        if svc.state == "starting" and svc.spec.ready[0] == "exit" and succeeded(status):
            self._ready(svc, True, "exited with 0")
            if svc.state == "ready":
                svc.state = "exited"
                self._ended(svc)
                self._event(svc, "exited")
            return
        if svc.state == "starting":
            svc.stop_readiness_wait()
            self._failed(svc, f"{what} before it was ready")
            return
        if svc.state == "ready":
            if succeeded(status) and svc.spec.restart != "always":
                svc.state = "exited"
                self.log.info(f"{svc.name}: exited with 0")
                self._ended(svc)
                self._event(svc, "exited")
                self._schedule()
                return
            self._failed(svc, what)

    def _adopt(self, svc: Service) -> bool:
        """A forking service's program exited 0: the daemon its pid_file names becomes the main
        process. Orphans are re-parented to init, so the reaper reports the daemon's exit; one
        that died before it was watched (reaped as an orphan) is no longer there to signal."""
        try:
            pid = int(self.root.read_text(svc.spec.pid_file).split()[0])
        except (OSError, ValueError, IndexError):
            return False
        if pid <= 1:
            return False
        self.reaper.watch(pid, lambda p, status: self._exited(svc, p, status))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            self.reaper.forget(pid)
            return False
        except PermissionError:
            pass
        svc.pid = pid
        svc.adopted = True
        self.log.info(f"{svc.name}: daemon pid {pid} (from {svc.spec.pid_file})")
        return True

    def _failed(self, svc: Service, reason: str) -> None:
        svc.error = reason
        if self.stopping:
            svc.state = "stopped"
            return
        spec = svc.spec
        if spec.restart != "no":
            now = time.monotonic()
            if svc.ever_ready:
                svc.restart_times = [t for t in svc.restart_times if now - t < spec.restart_window]
            if len(svc.restart_times) < spec.max_restarts:
                delay = min(BACKOFF_FIRST_S * 2 ** len(svc.restart_times), BACKOFF_MAX_S)
                svc.restart_times.append(now)
                svc.state = "backoff"
                count = f"{len(svc.restart_times)}/{spec.max_restarts}"
                self.log.warning(f"{svc.name}: {reason}; restart {count} in {delay:g} s")
                self._event(svc, "restarting")
                svc.restart_timer = self.loop.call_later(delay, lambda: self._spawn(svc))
                return
            reason = f"{reason}; gave up after {len(svc.restart_times)} restarts"
        self._give_up(svc, reason)

    def _give_up(self, svc: Service, reason: str) -> None:
        svc.error = reason
        svc.state = "failed"
        self.log.error(f"{svc.name}: failed: {reason}" + (" (critical)" if svc.spec.critical else ""))
        self._ended(svc)
        self._event(svc, "failed")
        self._schedule()

    def _ended(self, svc: Service) -> None:
        """The service ended for good (exited, or failed): act on its exit_action."""
        if svc.spec.exit_action != "poweroff" or self.stopping or self.exit_request is not None:
            return
        status = svc.last_status
        code = 1 if status is None else exit_code(status)
        reason = f"{svc.name} exited with 0" if svc.state == "exited" else f"{svc.name}: {svc.error}"
        self.log.info(f"{svc.name}: exit_action poweroff (EXIT_STATUS={code})")
        self.exit_request = (code, reason)

    def _stop_timeout(self, svc: Service) -> float:
        return svc.spec.stop_timeout or self.stop_timeout

    def _sweep(self, svc: Service) -> None:
        if not self.stopping:
            self.stopper.sweep(svc, self._stop_timeout(svc))

    def stop_all(self, deadline: float) -> list[dict[str, object]]:
        """Stop every service in reverse dependency order (deepest level first, each level in
        parallel): SIGTERM, stop_timeout, SIGKILL. Returns what happened, in stopping order.
        Whatever still runs at the monotonic deadline is killed outright."""
        self.stopping = True
        records: list[dict[str, object]] = []
        for svc in self.services.values():
            for timer in (svc.restart_timer, svc.ready_timer, svc.sweep_timer):
                if timer is not None:
                    timer.cancel()
            svc.sweep_timer = None
            if svc.state in ("waiting", "backoff"):
                svc.state = "stopped"
        for level in sorted({s.level for s in self.services.values()}, reverse=True):
            group = [
                s
                for s in self.services.values()
                if s.level == level and (s.pid or s.state == "stopping" or self.stopper.leftovers(s))
            ]
            for svc in group:
                if svc.state == "stopping":
                    continue  # a ready-timeout stop already under way
                timeout = max(0.0, min(self._stop_timeout(svc), deadline - time.monotonic()))
                self.log.info(f"{svc.name}: stopping (SIGTERM, SIGKILL after {timeout:.1f} s)")

                def done(svc: Service = svc) -> None:
                    svc.state = "stopped"
                    records.append(
                        {
                            "name": svc.name,
                            "how": svc.stop_how,
                            "s": round(time.monotonic() - svc.stop_started, 3),
                        }
                    )

                self.stopper.terminate(svc, timeout, done)
            self.loop.run_until(lambda: all(s.state != "stopping" for s in group), deadline)  # noqa: B023
        for svc in self.services.values():
            if svc.state == "stopping" or svc.pid:
                self.stopper.kill_now(svc)
                records.append({"name": svc.name, "how": "SIGKILL (shutdown deadline)", "s": None})
                svc.state = "stopped"
        return records


def exit_code(status: int) -> int:
    """A wait status as a shell reports it: the exit code, or 128+N when killed by signal N."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1
