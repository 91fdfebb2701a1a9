"""The boot's head start: what PID 1 does before it imports the rest of its boot path.

The early mounts, then the drivers for the devices this VM has that do not depend on the
kernel command line (coldplug.wanted: vsock, rng, the power button), loaded in threads
(modules.Loading). The kernel links them on another CPU while the interpreter imports the boot
path, which under TCG takes longer (0.1-0.2 s) than the loads (about 0.06 s); without the head
start the boot waited for them after importing. boot.py takes over from here: early() re-checks
the mounts, start_modules() adds what the command line asks for, finish_modules() collects both.

Nothing here raises: a failure is kept and raised again by boot.take_head_start(), inside the
boot, so it takes PID 1's failure path (a report to the host, a power-off) like any other.
"""

from __future__ import annotations

from guestinit.init import coldplug, modules, mounts
from guestinit.init.clock import Phase, boottime
from guestinit.init.cmodules import signal
from guestinit.init.root import Root


class HeadStart:
    """What begin() did: its phases, the module loads under way, or the error that stopped it."""

    def __init__(self) -> None:
        self.phases: list[Phase] = []  # for the timeline as they are
        self.module_phase: Phase | None = None  # the boot's modules phase, from its first load
        self.tree: modules.ModuleTree | None = None
        self.loading: modules.Loading | None = None
        self.error: BaseException | None = None
        self.end_s = 0.0  # when it handed over to the imports

    @property
    def started(self) -> tuple[str, ...]:
        """The modules it started (their dependencies included)."""
        return tuple(self.loading.order) if self.loading is not None else ()


def begin(root: Root) -> HeadStart:
    """Mount, then start loading the command-line-independent coldplug modules; never raises."""
    head = HeadStart()
    try:
        phase = Phase("early mounts", boottime())
        head.phases.append(phase)
        if root.is_real:  # never the host's proc, sys, dev into a fixture or test tree
            mounts.mount_all(root)
        phase.end_s = boottime()
        # The power button, vsock and rng drivers do not depend on the command line; qemu_fw_cfg
        # does (only without guestinit.notify=), so start_modules() decides on it.
        head.tree = modules.ModuleTree(root)
        names = [m for m in coldplug.wanted(coldplug.Devices(root), True) if head.tree.resolve(m) is not None]
        if names:
            head.module_phase = Phase("modules", boottime())
            # The loads' threads take no signal: PID 1 reads its own from a signalfd once
            # pid1.run() has blocked them, and one taken by such a thread first would be lost.
            old = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
            try:
                head.loading = modules.Loading(head.tree, names)
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, old)
    except BaseException as exc:  # raised again in boot.take_head_start(), on the failure path
        head.error = exc
    head.end_s = boottime()
    return head
