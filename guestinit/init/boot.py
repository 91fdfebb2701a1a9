"""The boot sequence, phase by phase. Each phase is timed on CLOCK_BOOTTIME and its facts
go into the one readiness message the host turns into a timeline.

After the early mounts everything runs on one event loop (loop.py), in one thread: signals,
the reaper, /dev/log, the power button and the services. ``boot()`` is the sequence.
"""

from __future__ import annotations

import os

from guestinit import __version__
from guestinit.init import (
    cgroups,
    coldplug,
    meminfo,
    modules,
    mounts,
    net,
    params,
    settings,
    syscalls,
    tomlfiles,
)
from guestinit.init.clock import Phase, boottime, kernel_log_stamp, log_text_stamp
from guestinit.init.context import Context
from guestinit.init.gpu import phase as gpu
from guestinit.init.headstart import HeadStart
from guestinit.init.kmsg import LEVELS, Log
from guestinit.init.loop import Loop
from guestinit.init.reaper import Reaper
from guestinit.init.report import SERIAL_PORT_NAME, Sender, find_virtio_port
from guestinit.init.root import Root
from guestinit.init.services import phase as services
from guestinit.init.services.supervisor import Supervisor
from guestinit.notify import credentials, jsonenc
from guestinit.notify.address import AddressError, Target, parse_target

EXEC_LOG_TAIL = 16384  # what boot logs after the kernel ran init, many times over


class BootState(Context):
    """What boot found and did: the input to the readiness message and to supervision."""

    def __init__(self, root: Root, log: Log, exec_s: float | None, start_s: float) -> None:
        super().__init__(root, log, params.parse_cmdline(""))
        self.exec_s = exec_s
        self.start_s = start_s
        self.sender: Sender | None = None
        self.module_results: list[modules.LoadResult] = []
        self.head: HeadStart | None = None  # what PID 1 did before importing the boot path
        self.module_tree: modules.ModuleTree | None = None  # the base loads', shared with the GPU phase
        self.module_loadings: list[modules.Loading] = []  # the head start's, then start_modules'
        self.module_phase: Phase | None = None
        self.gpu: gpu.GpuState | None = None
        self.locked = False  # guestinit.lockdown applied: no module loads after boot's own
        self.ready_s = 0.0
        self.loop = Loop()
        self.reaper = Reaper()
        self.toml_cache: dict[str, dict[str, object]] = {}
        self.logging: services.Logging | None = None
        self.supervisor: Supervisor | None = None
        self.cgroups: cgroups.CgroupTree | None = None
        self.hostname = ""
        self.shutdown_why = ""  # set by a shutdown signal or the power button
        self.failure = ""  # set when a critical service fails after READY
        self.ready_sent = False


def choose_target(config: params.Config, root: Root) -> tuple[Target, str]:
    """The notify target and where it came from: ``guestinit.notify=``, else systemd's
    ``vmm.notify_socket`` credential (fw_cfg, SMBIOS type 11, kernel command line), else the
    virtio-serial port named guestinit.notify, else the console. A bad address falls back to
    the console, and the returned source says why."""
    text = config.text("notify")
    if text:
        try:
            return parse_target(text), "guestinit.notify"
        except AddressError as exc:
            return Target("console"), f"console ({exc})"
    words = params.split_cmdline(root.read_text("/proc/cmdline", ""))
    address, origin, problems = credentials.notify_socket(root, words)
    note = f" ({'; '.join(problems)})" if problems else ""
    if address:
        try:
            return parse_target(address), f"{credentials.NOTIFY_CREDENTIAL} from {origin}{note}"
        except AddressError as exc:
            return Target("console"), f"console ({credentials.NOTIFY_CREDENTIAL} from {origin}: {exc})"
    if find_virtio_port(root("/sys"), root("/dev"), SERIAL_PORT_NAME):
        return Target("serial", path=SERIAL_PORT_NAME), f"virtio-serial port{note}"
    return Target("console"), f"console (no other transport found){note}"


def early(state: BootState) -> None:
    root, log = state.root, state.log
    # after a head start (headstart.py) the mounts are made: the kernel's log and lo are left
    with state.timeline.phase("mounts" if state.head is None else "kmsg, lo"):
        if root.is_real and state.head is None:  # never the host's proc, sys, dev into a test tree
            mounts.mount_all(root)
        try:
            root.write_text("/proc/sys/kernel/printk_devkmsg", "on\n")
        except OSError:
            pass
        log.reopen(root("/dev/kmsg"))
        if root.is_real:
            try:
                net.interface_up("lo")
            except OSError as exc:
                log.warning(f"loopback: {exc}")
                state.problems.append("lo not up")
    with state.timeline.phase("cmdline"):
        state.toml_cache = tomlfiles.read_cache(root) if root.exists(tomlfiles.CONFIG_DIR) else {}
        # the same reading as `guestinit check`: never raises for what the files hold
        state.config = settings.read_config(root, state.toml_cache, root.read_text("/proc/cmdline", ""))
        log.level = LEVELS[state.config.text("log")]
        for problem in state.config.problems:
            state.problem(problem)


def take_head_start(state: BootState) -> None:
    """The head start's phases (headstart.py) into the timeline, the imports after it as a phase
    of their own, and its error, if any, raised here on the boot's failure path."""
    head = state.head
    if head is None:
        return
    state.timeline.phases.extend(head.phases)
    imports = Phase("imports (rest)", head.end_s)
    imports.end_s = boottime()
    state.timeline.phases.append(imports)
    if head.error is not None:
        if head.phases:
            head.phases[-1].error = f"{type(head.error).__name__}: {head.error}"
        raise head.error


def start_modules(state: BootState) -> None:
    """Start loading, in the background, the modules this VM's devices call for (coldplug.py)
    and those ``guestinit.modules=`` names, beside those the head start is loading already;
    finish_modules() collects them. The kernel links them on other CPUs while the init goes on
    with the GPU phase."""
    head = state.head
    tree = head.tree if head is not None and head.tree is not None else modules.ModuleTree(state.root)
    state.module_tree = tree
    devices = coldplug.Devices(state.root)
    wanted = [*coldplug.wanted(devices, bool(state.config.text("notify"))), *state.config.strings("modules")]
    present = [m for m in wanted if tree.resolve(m) is not None]
    if head is not None and head.loading is not None:
        state.module_loadings.append(head.loading)
        state.module_phase = head.module_phase
        present = [m for m in present if m not in head.started]
        if present:  # they may share dependencies with the loads under way: after those
            head.loading.wait()
    if state.module_phase is None:
        state.module_phase = Phase("modules", boottime())
    state.timeline.phases.append(state.module_phase)
    if present or not state.module_loadings:
        state.module_loadings.append(modules.Loading(tree, present))


def read_exec_time(state: BootState) -> None:
    """When the kernel ran init, from its log: the start of "init exec to READY"."""
    if state.exec_s is None and state.root.is_real:
        # "Run /init as init process" from an initrd, "Run /sbin/init ..." from a root disk:
        # the kernel's last line before init, so first in the log's newest records (not a
        # buffer of the log's whole size, 256 KiB or more, to fill and search), then the whole
        # log in one syslog(2) call, else record by record from /dev/kmsg
        marker = " as init process"
        state.exec_s = log_text_stamp(marker, syscalls.kernel_log(tail=EXEC_LOG_TAIL))
        if state.exec_s is None:
            state.exec_s = log_text_stamp(marker, syscalls.kernel_log())
        if state.exec_s is None:
            state.exec_s = kernel_log_stamp(marker, state.root("/dev/kmsg"))


def finish_modules(state: BootState) -> None:
    """Wait for the last of start_modules()' loads; a failed one is a problem, not fatal."""
    phase = state.module_phase
    if not state.module_loadings or phase is None:
        return
    results = [r for loading in state.module_loadings for r in loading.wait()]
    # when the last load returned, which with a head start is often well before this wait
    phase.end_s = max(loading.finished_s or boottime() for loading in state.module_loadings)
    state.module_results[:0] = results  # before the GPU phase's own, loaded meanwhile
    for result in results:
        if result.how == "failed":
            state.log.warning(f"module {result.name}: {result.error}")
            state.problems.append(f"module {result.name} failed")


def bring_up_gpus(state: BootState) -> None:
    """Topology, BAR / hugepage tuning, the NVIDIA modules and nodes, the GPU services (gpu/)."""
    state.gpu = gpu.bring_up(state, state.module_tree)
    if state.gpu is not None:
        state.module_results.extend(state.gpu.module_results)


def lock_modules(state: BootState) -> None:
    """guestinit.lockdown: no module loads from here on (every module phase comes before)."""
    if state.config.flag("lockdown"):
        state.root.write_text("/proc/sys/kernel/modules_disabled", "1\n")
        state.locked = True
        state.log.info("lockdown: kernel.modules_disabled=1")


def connect_notify(state: BootState) -> None:
    with state.timeline.phase("notify"):
        target, source = choose_target(state.config, state.root)
        state.log.info(f"notify target {target} from {source}")
        state.sender = Sender(target, state.root("/sys"), state.root("/dev"), state.root("/dev/console"))


def start_logging(state: BootState) -> None:
    """/dev/log and the ring file; the power button (its driver loaded with the modules)."""

    def owner(pid: int, ident: str) -> str | None:
        return state.supervisor.owner(pid, ident) if state.supervisor is not None else None

    def pressed(device: str) -> None:
        if not state.shutdown_why:
            state.shutdown_why = f"power button ({device})"
            state.log.info(f"shutdown requested: {state.shutdown_why}")

    with state.timeline.phase("syslog"):
        kib = state.config.number("syslog_kib")
        state.logging = services.open_logging(state, state.loop, kib, owner, pressed)


def prepare_services(state: BootState) -> None:
    """What services, the kata-agent first, are started into: the hostname (/etc/hostname or
    ``localhost``), an /etc/resolv.conf, and the cgroup tree (cgroups.py)."""
    root = state.root
    with state.timeline.phase("system"):
        try:
            state.hostname = net.set_hostname(root)
        except (OSError, ValueError) as exc:
            state.problem(f"hostname: {exc}")
        try:
            if net.ensure_resolv_conf(root):
                state.log.info(f"created an empty {net.RESOLV_CONF}")
        except OSError as exc:
            state.problem(f"{net.RESOLV_CONF} missing and cannot be created: {exc.strerror}")
        if root.is_real:  # never the host's cgroups from a fixture or test tree
            state.cgroups, problems = cgroups.setup(root(cgroups.MOUNT))
            for problem in problems:
                state.problem(problem)


def start_services(state: BootState) -> None:
    """Start the services and wait (bounded by their own timeouts) until each is ready, has
    failed, or was skipped. A critical failure raises services.CriticalFailure."""
    assert state.logging is not None
    with state.timeline.phase("services"):
        generated = state.gpu.services if state.gpu is not None else []
        ring = state.logging.ring
        sup = state.supervisor = services.load(
            state, state.loop, state.reaper, ring, state.toml_cache, generated, state.cgroups
        )
        # An unusable service file or a cycle fails that service alone (degraded, or the VM if
        # it says critical = true): its reason goes to the host in STATUS=.
        for svc in sup.services.values():
            if svc.spec.error and svc.state != "disabled":
                state.problems.append(svc.spec.error)
        sup.start()
        state.loop.run_until(
            lambda: sup.settled() or bool(state.shutdown_why or sup.critical_failure() or sup.exit_request)
        )
    for svc in sup.services.values():
        if svc.first_start_s is not None:
            phase = Phase(f"service {svc.name}", svc.first_start_s)
            phase.end_s = svc.ready_s if svc.ready_s is not None else boottime()
            if svc.state not in ("ready", "exited"):
                phase.error = svc.error or svc.state
            state.timeline.phases.append(phase)
    failure = sup.critical_failure()
    if failure and not state.shutdown_why and sup.exit_request is None:  # exit_action wins
        raise services.CriticalFailure(failure)


def degraded(state: BootState) -> list[str]:
    """What works only in part: the NVIDIA driver (GPU phase), failed non-critical services."""
    gpu_part = state.gpu.degraded if state.gpu is not None else []
    return gpu_part + (state.supervisor.degraded() if state.supervisor is not None else [])


def ready_message(state: BootState) -> dict[str, str]:
    ready = boottime()
    state.ready_s = ready
    since_exec = ready - (state.exec_s if state.exec_s is not None else state.start_s)
    status = f"guestinit {__version__} ready in {since_exec:.3f} s from exec"
    gpu_fields = state.gpu.notify_fields() if state.gpu is not None else {}
    if state.gpu is not None and state.gpu.topology.mode not in ("cpu", "unknown"):  # unknown: a problem
        status += f"; {state.gpu.topology.status()}"
    parts = degraded(state)
    if parts:
        status += f"; degraded: {', '.join(parts)}"
    if state.problems:
        status += "; " + "; ".join(state.problems)
    fields = {
        "READY": "1",
        "STATUS": status[:1024],
        "X_GUESTINIT_VERSION": __version__,
        "X_GUESTINIT_EXEC_S": f"{state.exec_s:.3f}" if state.exec_s is not None else "",
        "X_GUESTINIT_START_S": f"{state.start_s:.4f}",
        "X_GUESTINIT_READY_S": f"{ready:.4f}",
        "X_GUESTINIT_PHASES": jsonenc.dumps(state.timeline.as_list()),
        "X_GUESTINIT_MODULES": jsonenc.dumps([r.as_dict() for r in state.module_results]),
        "X_GUESTINIT_KERNEL": os.uname().release,
        "X_GUESTINIT_LOCKDOWN": "1" if state.locked else "",
        **meminfo.ready_fields(state.root),
        **gpu_fields,
        "X_GUESTINIT_DEGRADED": ",".join(parts),
        "X_GUESTINIT_REAPED": f"{state.reaper.reaped}" if state.reaper.reaped else "",
        "X_GUESTINIT_SERVICES": jsonenc.dumps(state.supervisor.summary())
        if state.supervisor is not None and state.supervisor.services
        else "",
    }
    return {k: v for k, v in fields.items() if v}


def boot(state: BootState) -> None:
    """The whole sequence; PID 1 then supervises until shutdown. A shutdown request during
    boot (signal, power button) ends it early, without READY."""
    take_head_start(state)
    early(state)
    start_modules(state)
    read_exec_time(state)
    bring_up_gpus(state)
    finish_modules(state)
    lock_modules(state)
    connect_notify(state)
    start_logging(state)
    prepare_services(state)
    start_services(state)
    if state.shutdown_why or (state.supervisor is not None and state.supervisor.exit_request):
        return  # PID 1 shuts down, or powers off for the service that ended (pid1.py)
    assert state.sender is not None
    state.sender.send(ready_message(state))
    state.ready_sent = True
    state.log.info(f"ready at {state.ready_s:.3f} s (exec at {state.exec_s} s)")
