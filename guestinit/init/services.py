"""The services phase of boot, in one place: the logging services start with (syslog, ring,
power button), the service files, and the supervisor that runs them.

The pieces live in their own modules: service_config (the files and their key table),
supervisor (states, restarts, stop order), probes (readiness), spawn (fork/exec), syslog.
"""

from __future__ import annotations

from guestinit.init import service_config
from guestinit.init.power_button import PowerButton
from guestinit.init.service_config import ServiceSpec
from guestinit.init.supervisor import Service, Supervisor
from guestinit.init.syslog import RING_PATH, Ring, Syslog

TYPE_CHECKING = False  # typing is not imported on the boot path; mypy reads this as usual
if TYPE_CHECKING:
    from guestinit.init.boot import BootState

__all__ = ["CriticalFailure", "Logging", "Service", "Supervisor", "load", "open_logging"]


class CriticalFailure(Exception):
    """A critical service failed: the VM fails closed with this exit status."""

    exit_status = 2


class Logging:
    __slots__ = ("button", "ring", "syslog")

    def __init__(self, ring: Ring, syslog: Syslog, button: PowerButton) -> None:
        self.ring = ring
        self.syslog = syslog
        self.button = button


def open_logging(state: BootState, ring_kib: float) -> Logging:
    root, log = state.root, state.log
    ring = Ring(root(RING_PATH), int(ring_kib) * 1024)

    def owner(pid: int, ident: str) -> str | None:
        return state.supervisor.owner(pid, ident) if state.supervisor is not None else None

    syslog = Syslog(root, state.loop, log, ring, owner)
    try:
        syslog.open()
    except OSError as exc:
        log.warning(f"syslog: cannot bind /dev/log: {exc}")
        state.problems.append("no /dev/log")

    def pressed(device: str) -> None:
        if not state.shutdown_why:
            state.shutdown_why = f"power button ({device})"
            log.info(f"shutdown requested: {state.shutdown_why}")

    button = PowerButton(root, state.loop, pressed)
    devices = button.open()
    log.info(f"power button: {', '.join(devices) if devices else 'none found'}")
    for error in button.errors:
        log.warning(f"power button: {error}")
    return Logging(ring, syslog, button)


def load(state: BootState, ring: Ring, generated: list[ServiceSpec] | None = None) -> Supervisor:
    """Read /etc/guestinit/services.d and set up (not start) the supervisor. ``generated``
    services (the GPU phase's) come first; a file of the same name replaces one."""
    config = state.config
    sup = Supervisor(
        state.root,
        state.loop,
        state.reaper,
        state.log,
        ring,
        ready_timeout=config.number("ready_timeout"),
        stop_timeout=config.number("stop_timeout"),
    )
    specs = service_config.load_all(state.root, state.toml_cache)
    files = {spec.name for spec in specs}
    specs = [spec for spec in generated or [] if spec.name not in files] + specs
    sup.add(specs, disabled=config.strings("disable"))
    state.problems.extend(sup.problems)
    return sup
