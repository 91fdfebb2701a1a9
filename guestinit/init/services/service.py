"""One service's runtime state, as the supervisor drives it and the host sees it.

States: waiting -> starting -> ready [-> exited]; starting/ready -> backoff -> starting ...;
any -> failed (gave up) / stopping -> stopped; skipped (condition false) and disabled
(guestinit.disable) count as settled, like ready, exited and failed.
"""

from __future__ import annotations

from guestinit.init.services.keys import ServiceSpec

TYPE_CHECKING = False  # typing is not imported on the boot path; mypy reads this as usual
if TYPE_CHECKING:
    from collections.abc import Callable

    import psutil

    from guestinit.init.loop import Timer
    from guestinit.init.services import probes, spawn
    from guestinit.init.services.pipe import Pipe

SETTLED = frozenset({"ready", "exited", "failed", "skipped", "disabled", "stopped"})


class Service:
    """One service's runtime state."""

    def __init__(self, spec: ServiceSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self.state = "waiting"
        self.deps: list[str] = []
        self.level = 0
        self.pid = 0
        self.out_pid = 0
        self.pipe: Pipe | None = None
        self.starts = 0
        self.restart_times: list[float] = []
        self.ever_ready = False
        self.first_start_s: float | None = None
        self.ready_s: float | None = None
        self.error = ""
        self.ready_detail = ""
        self.creds: spawn.Credentials | None = None
        self.probe: probes.Probe | None = None
        self.ready_timer: Timer | None = None
        self.restart_timer: Timer | None = None
        self.kill_timer: Timer | None = None
        self.poll_timer: Timer | None = None
        self.tree: list[psutil.Process] = []
        self.stop_started = 0.0
        self.stop_how = ""
        self.after_stop: Callable[[], None] | None = None
        self.adopted = False  # pid_file: the main process is the daemon the started program forked
        self.cgroup = False  # runs in its own cgroup (cgroups.CgroupTree), set at its first start
        self.sweep_timer: Timer | None = None  # cgroup.kill of what an exited main process left
        self.last_status: int | None = None  # wait status of the main process's last exit

    def stop_readiness_wait(self) -> None:
        """Cancel the ready timeout and the readiness probe, if they are still running."""
        if self.ready_timer is not None:
            self.ready_timer.cancel()
            self.ready_timer = None
        if self.probe is not None:
            self.probe.cancel()
            self.probe = None

    @property
    def settled(self) -> bool:
        return self.state in SETTLED

    def as_dict(self) -> dict[str, object]:
        d: dict[str, object] = {"name": self.name, "state": self.state}
        if self.pid:
            d["pid"] = self.pid
        if self.first_start_s is not None:
            d["start_s"] = round(self.first_start_s, 4)
        if self.ready_s is not None:
            d["ready_s"] = round(self.ready_s, 4)
        if self.starts > 1:
            d["restarts"] = self.starts - 1
        if self.spec.critical:
            d["critical"] = True
        if self.error:
            d["error"] = self.error[:300]
        return d
