"""``guestctl boot``: start an image in QEMU, wait for READY, power it off; the result and its
timeline are result.py's, what to boot is media.py's."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from guestinit.host import qemu
from guestinit.host.errors import UserError
from guestinit.host.listen.listener import Listener
from guestinit.host.listen.messages import Message
from guestinit.host.media import DEFAULT_IMAGE, KATA_IMAGE_APPEND, combine_initrd, image_form, resolve_kernel
from guestinit.host.result import BootResult, as_float
from guestinit.notify.message import exit_status

DEFAULT_APPEND = "console=ttyS0 quiet panic=-1"


@dataclass
class BootOptions:
    image: Path = DEFAULT_IMAGE
    kernel: Path | None = None
    append: str = ""
    extra_initrd: list[Path] = field(default_factory=list)
    accel: str = "auto"  # auto | kvm | tcg
    transport: str = "auto"  # auto | vsock | serial
    tcg_threads: str = "auto"  # auto | multi | single (see qemu.tcg_threads)
    timeout_s: float = 120.0
    shutdown: bool = False
    shutdown_timeout_s: float = 30.0
    memory_mb: int = 2048
    cpus: int = 2
    run_dir: Path | None = None
    qemu_extra: tuple[str, ...] = ()
    # Boots again when the kernel itself died before init could report. Multi-threaded TCG did
    # that about once in 150 boots (qemu.tcg_threads), so auto now runs TCG single-threaded; this
    # stays for --tcg-threads multi and for deaths not yet understood, each one reported.
    kernel_panic_retries: int = 1


def choose_accel(requested: str, kernel: Path) -> tuple[str, str]:
    if requested == "tcg":
        return "tcg", "requested"
    usable, why = qemu.probe_kvm(kernel)
    if requested == "kvm":
        if not usable:
            raise UserError(f"KVM cannot boot guests here ({why})", hint="use --accel tcg or --accel auto")
        return "kvm", why
    return ("kvm", why) if usable else ("tcg", f"KVM unusable: {why}")


def choose_transport(requested: str) -> str:
    has_vhost = os.path.exists("/dev/vhost-vsock")
    if requested == "vsock" and not has_vhost:
        raise UserError(
            "vsock transport needs /dev/vhost-vsock", hint="modprobe vhost_vsock, or --transport serial"
        )
    if requested == "auto":
        return "vsock" if has_vhost else "serial"
    return requested


def _message_dict(msg: Message, t0: float) -> dict[str, object]:
    return {"received_s": round(msg.received - t0, 4), "source": msg.source, "fields": msg.fields}


def kernel_died_early(result: BootResult) -> str | None:
    """Why the kernel died before init reported anything, or None. Only the kernel's own
    failure counts: init dying ("Attempted to kill init") is ours and is never retried."""
    if result.ready or result.messages or not result.console_log:
        return None
    try:
        text = Path(result.console_log).read_text(errors="replace")
    except OSError:
        return None
    return kernel_death(text)


def kernel_death(text: str) -> str | None:
    """The kernel's own death in a console log (its first Oops, BUG or panic line), or None;
    init dying ("Attempted to kill init") is not the kernel's."""
    if "Kernel panic" not in text or "Attempted to kill init" in text:
        return None
    for line in text.splitlines():
        if "Oops:" in line or "Kernel panic" in line or "BUG:" in line:
            return line.split("]", 1)[-1].strip()[:160]
    return "kernel panic"


def boot(opts: BootOptions) -> BootResult:
    """Boot; raises UserError for bad input, returns a result for anything the guest did.
    A kernel that dies before init runs is booted again (``kernel_panic_retries``), and the
    result says so in ``retried``."""
    base = opts.run_dir or Path("build/runs") / time.strftime("%Y%m%d-%H%M%S")
    retried: list[str] = []
    for attempt in range(1 + max(0, opts.kernel_panic_retries)):
        run_dir = base if attempt == 0 else base / f"retry-{attempt}"
        result = _boot_once(opts, run_dir)
        why = kernel_died_early(result)
        if why is None:
            break
        retried.append(f"attempt {attempt + 1}: kernel died before init ({why}); see {result.console_log}")
    result.retried = retried
    if retried and not result.ready and not result.error.startswith("the kernel"):
        result.error = f"the kernel died before init on every attempt: {retried[-1]}"
    return result


def _boot_once(opts: BootOptions, run_dir: Path) -> BootResult:
    if not opts.image.is_file():
        raise UserError(
            f"image {opts.image} not found", hint="build it first: guestctl build kata (or make run)"
        )
    kernel = resolve_kernel(opts.image, opts.kernel)
    form = image_form(opts.image)
    if form == "image" and opts.extra_initrd:
        raise UserError(
            f"{opts.image} is a root disk image: the kernel mounts it itself, so an extra initrd "
            "cannot add files to it",
            hint="build the files in (e.g. guestctl build --kata-agent), or boot the initrd form",
        )
    binary = qemu.find_qemu()
    result = BootResult()
    result.accel, result.accel_why = choose_accel(opts.accel, kernel)
    threads, note = qemu.accel_threads(result.accel, opts.tcg_threads, opts.cpus)
    result.accel_why += note
    result.transport = choose_transport(opts.transport)
    run_dir.mkdir(parents=True, exist_ok=True)
    sock_dir = Path(tempfile.mkdtemp(prefix="guestinit-"))  # AF_UNIX paths must be short
    console = run_dir / "console.log"
    result.console_log = os.fspath(console)
    initrd = (
        combine_initrd(opts.image, opts.extra_initrd, run_dir / "initrd.img") if form == "initrd" else None
    )
    notify_sock = sock_dir / "notify.sock"
    qmp_sock = sock_dir / "qmp.sock"
    vsock_port = qemu.DEFAULT_VSOCK_PORT
    root_args = KATA_IMAGE_APPEND if form == "image" else ""
    append = " ".join(
        x
        for x in (DEFAULT_APPEND, root_args, qemu.notify_append(result.transport, vsock_port), opts.append)
        if x
    )
    cfg = qemu.QemuConfig(
        kernel=kernel,
        initrd=initrd,
        disk=opts.image if form == "image" else None,
        append=append,
        accel=result.accel,
        tcg_threads=threads,
        memory_mb=opts.memory_mb,
        cpus=opts.cpus,
        transport=result.transport,
        notify_socket=notify_sock,
        vsock_cid=3 + os.getpid() % 100000,
        qmp_socket=qmp_sock,
        console_log=console,
        extra=opts.qemu_extra,
        binary=binary,
    )
    result.argv = qemu.qemu_argv(cfg)
    address = f"serial:{notify_sock}" if result.transport == "serial" else f"vsock:{vsock_port}"
    # The console log is read too: a guest whose only channel is the console still reports.
    listener = Listener([address, f"console:{console}"]).start()
    qemu_log = open(run_dir / "qemu.log", "wb")  # noqa: SIM115 - closed in finally
    t0 = time.monotonic()
    result.started_wall = time.time()
    proc = subprocess.Popen(result.argv, stdin=subprocess.DEVNULL, stdout=qemu_log, stderr=subprocess.STDOUT)
    try:
        _wait(proc, listener, result, t0, opts.timeout_s)
        if result.ready and opts.shutdown:
            _graceful_shutdown(proc, listener, result, qmp_sock, t0, opts.shutdown_timeout_s)
        elif result.exit_status not in (None, 0):
            _await_poweroff(proc, listener, result, t0, opts.shutdown_timeout_s)
    finally:
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                q = qemu.QMP(qmp_sock, timeout_s=2)
                q.command("quit")
                q.close()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        result.qemu_exit = proc.returncode
        result.wall_s = time.monotonic() - t0
        listener.close()
        qemu_log.close()
        shutil.rmtree(sock_dir, ignore_errors=True)
    if result.qemu_exit not in (0, None) and not result.ready and not result.error:
        tail = (run_dir / "qemu.log").read_text(errors="replace").strip().splitlines()[-1:] or [""]
        result.error = f"QEMU exited with {result.qemu_exit}: {tail[0][:200]}"
    return result


def _absorb(msg: Message, result: BootResult, t0: float) -> None:
    """Fold one message into the result: every message is kept with its host receive time;
    the first READY=1 fixes the guest clock on the host axis and carries the phases."""
    result.messages.append(_message_dict(msg, t0))
    result.notify.update(msg.fields)
    if "STATUS" in msg.fields:
        result.status = msg.fields["STATUS"]
    if msg.fields.get("READY") == "1" and not result.ready:
        result.ready = True
        result.ready_host_s = msg.received - t0
        result.uptime_at_ready_s = as_float(msg.fields.get("X_GUESTINIT_READY_S"))
        phases = msg.fields.get("X_GUESTINIT_PHASES")
        if phases:
            import json

            with contextlib.suppress(ValueError, RecursionError):
                loaded = json.loads(phases)
                if isinstance(loaded, list):
                    result.phases = [p for p in loaded if isinstance(p, dict)]
    if "EXIT_STATUS" in msg.fields:
        try:
            result.exit_status = exit_status(msg.fields["EXIT_STATUS"])
        except ValueError as exc:  # not 0..255 in plain decimal: a failure, reported as received
            result.exit_status = 1
            result.error = str(exc)


def _wait(
    proc: subprocess.Popen[bytes], listener: Listener, result: BootResult, t0: float, timeout_s: float
) -> None:
    deadline = t0 + timeout_s
    while time.monotonic() < deadline:
        msg = listener.get(timeout=0.05)
        if msg is not None:
            _absorb(msg, result, t0)
            if result.ready or (result.exit_status not in (None, 0)):
                return
        if proc.poll() is not None:
            # drain what arrived just before QEMU exited
            while (msg := listener.get(timeout=0.2)) is not None:
                _absorb(msg, result, t0)
            if not result.ready and not result.error:
                result.error = f"QEMU exited ({proc.returncode}) before READY"
            return
    result.error = f"no READY within {timeout_s:.0f} s"


def _graceful_shutdown(
    proc: subprocess.Popen[bytes],
    listener: Listener,
    result: BootResult,
    qmp_sock: Path,
    t0: float,
    timeout_s: float,
) -> None:
    start = time.monotonic()
    try:
        q = qemu.QMP(qmp_sock, timeout_s=5)
        q.command("system_powerdown")
        q.close()
    except OSError as exc:
        result.error = f"system_powerdown failed: {exc}"
        return
    while time.monotonic() - start < timeout_s:
        msg = listener.get(timeout=0.05)
        if msg is not None:
            _absorb(msg, result, t0)
        if proc.poll() is not None:
            result.shutdown_s = time.monotonic() - start
            while (msg := listener.get(timeout=0.1)) is not None:
                _absorb(msg, result, t0)
            return
    result.error = f"guest did not power off within {timeout_s:.0f} s of system_powerdown"


def _await_poweroff(
    proc: subprocess.Popen[bytes], listener: Listener, result: BootResult, t0: float, timeout_s: float
) -> None:
    """A guest that reported a failure powers itself off: wait for that (bounded), timed."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        msg = listener.get(timeout=0.05)
        if msg is not None:
            _absorb(msg, result, t0)
        if proc.poll() is not None:
            result.failed_exit_s = time.monotonic() - start
            while (msg := listener.get(timeout=0.1)) is not None:
                _absorb(msg, result, t0)
            return
