"""The services phase of boot, in one place: the logging services start with (syslog, ring,
power button), the service files, and the supervisor that runs them.

The pieces live in their own modules: keys (what a service file may say), files (reading
them), order (start and stop order), supervisor (states, restarts, stopping), probes
(readiness), spawn (fork/exec); syslog and the power button are init's own (../).
"""

from __future__ import annotations

from guestinit.init.power_button import PowerButton
from guestinit.init.services import files
from guestinit.init.services.keys import ServiceSpec
from guestinit.init.services.supervisor import Supervisor
from guestinit.init.syslog import RING_PATH, Ring, Syslog

TYPE_CHECKING = False  # typing is not imported on the boot path; mypy reads this as usual
if TYPE_CHECKING:
    from collections.abc import Callable

    from guestinit.init.cgroups import CgroupTree
    from guestinit.init.context import Context
    from guestinit.init.loop import Loop
    from guestinit.init.reaper import Reaper

__all__ = ["CriticalFailure", "Logging", "load", "open_logging"]


class CriticalFailure(Exception):
    """A critical service failed: the VM fails closed with this exit status."""

    exit_status = 2


class Logging:
    __slots__ = ("button", "ring", "syslog")

    def __init__(self, ring: Ring, syslog: Syslog, button: PowerButton) -> None:
        self.ring = ring
        self.syslog = syslog
        self.button = button


def open_logging(
    ctx: Context,
    loop: Loop,
    ring_kib: float,
    owner: Callable[[int, str], str | None],
    pressed: Callable[[str], None],
) -> Logging:
    """/dev/log and the ring file, and the power button. ``owner`` names the service a syslog
    sender belongs to; ``pressed`` is called with the device when the power button is pressed."""
    root, log = ctx.root, ctx.log
    ring = Ring(root(RING_PATH), int(ring_kib) * 1024)
    syslog = Syslog(root, loop, log, ring, owner)
    try:
        syslog.open()
    except OSError as exc:
        log.warning(f"syslog: cannot bind /dev/log: {exc}")
        ctx.problems.append("no /dev/log")
    button = PowerButton(root, loop, pressed)
    devices = button.open()
    log.info(f"power button: {', '.join(devices) if devices else 'none found'}")
    for error in button.errors:
        log.warning(f"power button: {error}")
    return Logging(ring, syslog, button)


def load(
    ctx: Context,
    loop: Loop,
    reaper: Reaper,
    ring: Ring,
    toml_cache: dict[str, dict[str, object]],
    generated: list[ServiceSpec] | None = None,
    cgroups: CgroupTree | None = None,
) -> Supervisor:
    """Read /etc/guestinit/services.d and set up (not start) the supervisor. ``generated``
    services (the GPU phase's) come first; a file of the same name replaces one. With
    ``cgroups`` each service runs in a cgroup of its own."""
    config = ctx.config
    sup = Supervisor(
        ctx.root,
        loop,
        reaper,
        ctx.log,
        ring,
        ready_timeout=config.number("ready_timeout"),
        stop_timeout=config.number("stop_timeout"),
        cgroups=cgroups,
    )
    loaded = files.load_services(ctx.root, toml_cache, generated)  # as `guestinit check` reads them
    sup.add(loaded.specs, disabled=config.strings("disable"))
    ctx.problems.extend(sup.problems)
    return sup
