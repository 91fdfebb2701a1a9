"""``guestctl boot``: start an image in QEMU, wait for READY, power it off, print the timeline.

One timeline joins three clocks: host time since QEMU started, the guest's CLOCK_BOOTTIME
stamps (phases), and host receive times of notify messages. The guest's boottime zero is
placed on the host axis from the READY message (host receive time minus guest ready time).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from guestinit.host import qemu
from guestinit.host.errors import UserError
from guestinit.host.listen import Listener, Message

DEFAULT_IMAGE = Path("build/kata/guestinit-kata.cpio")
DEFAULT_APPEND = "console=ttyS0 quiet panic=-1"
# What Kata's runtime adds to the command line for a rootfs image (rootfs_type = "erofs", the
# image on virtio-blk as disable_image_nvdimm = true attaches it): root on the disk's first
# partition, read-only, and systemd's target and masks, which guestinit takes in its stride.
KATA_IMAGE_APPEND = (
    "root=/dev/vda1 rootflags=ro rootfstype=erofs systemd.unit=kata-containers.target "
    "systemd.mask=systemd-networkd.service systemd.mask=systemd-networkd.socket"
)
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
CPIO_MAGIC = b"070701"
GZIP_MAGIC = b"\x1f\x8b"
# The other compressions Debian's kernel unpacks an initrd from (RD_*): lz4 (legacy frames,
# `lz4 -l`), xz, lzma, bzip2, lzo
OTHER_INITRD_MAGICS = (b"\x02\x21\x4c\x18", b"\xfd7zXZ\x00", b"\x5d\x00\x00", b"BZh", b"\x89LZO")


def image_form(image: Path) -> str:
    """ "initrd" (a cpio, plain or compressed) or "image" (a disk with a partition table)."""
    with open(image, "rb") as f:
        head = f.read(512)
    if head.startswith((CPIO_MAGIC, ZSTD_MAGIC, GZIP_MAGIC, *OTHER_INITRD_MAGICS)):
        return "initrd"
    if len(head) == 512 and head[510:] == b"\x55\xaa":
        return "image"
    raise UserError(
        f"{image} is neither an initrd (newc cpio, plain or compressed) nor a disk image",
        hint="give what `guestctl build` wrote (build/kata/)",
    )


def default_image(root: Path | None = None) -> Path:
    """The rootfs of the Kata image form built last (`guestctl build kata [--format erofs]`)."""
    from guestinit.host.build.images import last_build, repo_root

    try:
        base = root or repo_root()
    except UserError:
        return DEFAULT_IMAGE
    folder = last_build(base)
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        artifacts = json.loads((folder / "manifest.json").read_text())["artifacts"]
        for artifact in artifacts:
            if artifact["kind"] in ("initrd", "image"):
                return folder / str(artifact["name"])
    return folder / DEFAULT_IMAGE.name


@dataclass
class BootOptions:
    image: Path = DEFAULT_IMAGE
    kernel: Path | None = None
    append: str = ""
    extra_initrd: list[Path] = field(default_factory=list)
    accel: str = "auto"  # auto | kvm | tcg
    transport: str = "auto"  # auto | vsock | serial
    timeout_s: float = 120.0
    shutdown: bool = False
    shutdown_timeout_s: float = 30.0
    memory_mb: int = 2048
    cpus: int = 2
    run_dir: Path | None = None
    qemu_extra: tuple[str, ...] = ()
    # Boots again when the kernel itself died before init could report (seen under TCG about
    # once in 150 boots: an int3 oops while the kernel patches its own code on 2 vCPUs).
    kernel_panic_retries: int = 1


@dataclass
class BootResult:
    ready: bool = False
    accel: str = ""
    accel_why: str = ""
    transport: str = ""
    wall_s: float = 0.0
    ready_host_s: float | None = None
    uptime_at_ready_s: float | None = None
    exit_status: int | None = None
    status: str = ""
    phases: list[dict[str, object]] = field(default_factory=list)
    notify: dict[str, str] = field(default_factory=dict)
    messages: list[dict[str, object]] = field(default_factory=list)
    console_log: str = ""
    qemu_exit: int | None = None
    shutdown_s: float | None = None
    failed_exit_s: float | None = None  # EXIT_STATUS received -> QEMU exit (guest powered itself off)
    error: str = ""
    argv: list[str] = field(default_factory=list)
    started_wall: float = 0.0  # time.time() when QEMU was started: host_s 0 of the timeline
    retried: list[str] = field(default_factory=list)  # why earlier attempts were discarded

    def as_dict(self) -> dict[str, object]:
        return {
            "ready": self.ready,
            "accel": self.accel,
            "accel_why": self.accel_why,
            "transport": self.transport,
            "wall_s": round(self.wall_s, 3),
            "ready_host_s": _r(self.ready_host_s),
            "uptime_at_ready_s": _r(self.uptime_at_ready_s),
            "exec_s": _r(_float(self.notify.get("X_GUESTINIT_EXEC_S"))),
            "exit_status": self.exit_status,
            "status": self.status,
            "phases": self.phases,
            "notify": self.notify,
            "messages": self.messages,
            "vm_start": _iso(self.started_wall) if self.started_wall else None,
            "timeline": timeline(self),
            "console_log": self.console_log,
            "qemu_exit": self.qemu_exit,
            "shutdown_s": _r(self.shutdown_s),
            "failed_exit_s": _r(self.failed_exit_s),
            "error": self.error,
            "retried": self.retried,
        }


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _iso(wall: float) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(wall, datetime.UTC).isoformat(timespec="milliseconds")


def _float(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return None


def resolve_kernel(image: Path, kernel: Path | None) -> Path:
    if kernel is not None:
        if not kernel.is_file():
            raise UserError(f"kernel {kernel} not found", hint="pass an existing --kernel file")
        return kernel
    name = image.name
    for suffix in (".cpio.zst", ".cpio.gz", ".cpio", ".initrd", ".img"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    candidate = image.with_name(name + ".vmlinuz")
    if not candidate.is_file():
        raise UserError(f"no kernel beside {image} (looked for {candidate.name})", hint="pass --kernel")
    return candidate


def combine_initrd(image: Path, extras: list[Path], out: Path) -> Path:
    """Append extra cpio archives to the image, each in the image's own form: the kernel
    cannot find a plain cpio after a zstd image (its zstd reader takes the rest as more
    frames), so plain extras are compressed after a zstd image; after a plain image, zstd
    extras are decompressed, so the initrd stays one copy the kernel reads without a decoder."""
    if not extras:
        return image
    with open(image, "rb") as f:
        image_zstd = f.read(4) == ZSTD_MAGIC
    with open(out, "wb") as dst:
        with open(image, "rb") as src:
            shutil.copyfileobj(src, dst)
        for extra in extras:
            if not extra.is_file():
                raise UserError(f"extra initrd {extra} not found", hint="pass an existing cpio archive")
            with open(extra, "rb") as f:
                magic = f.read(6)
            extra_zstd = magic[:4] == ZSTD_MAGIC
            if not extra_zstd and not magic.startswith(CPIO_MAGIC):
                raise UserError(
                    f"extra initrd {extra} is neither a newc cpio nor zstd-compressed",
                    hint="create it with `cpio -o -H newc` (optionally zstd-compressed)",
                )
            if extra_zstd == image_zstd:
                with open(extra, "rb") as src:
                    shutil.copyfileobj(src, dst)
            else:
                dst.write(_zstd(extra, decompress=extra_zstd))
    return out


def _zstd(path: Path, decompress: bool) -> bytes:
    argv = ["zstd", "-q", "-c", *(["-d"] if decompress else []), os.fspath(path)]
    try:
        proc = subprocess.run(argv, capture_output=True, check=False)
    except FileNotFoundError:
        raise UserError("zstd not found", hint="apt-get install zstd (or run make setup)") from None
    if proc.returncode != 0:
        what = "decompress" if decompress else "compress"
        detail = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
        raise UserError(
            f"zstd could not {what} extra initrd {path}: {detail[0]}",
            hint="pass a newc cpio or a whole zstd-compressed one",
        )
    return proc.stdout


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
        result.uptime_at_ready_s = _float(msg.fields.get("X_GUESTINIT_READY_S"))
        phases = msg.fields.get("X_GUESTINIT_PHASES")
        if phases:
            import json

            with contextlib.suppress(ValueError, RecursionError):
                loaded = json.loads(phases)
                if isinstance(loaded, list):
                    result.phases = [p for p in loaded if isinstance(p, dict)]
    if "EXIT_STATUS" in msg.fields:
        try:
            result.exit_status = int(msg.fields["EXIT_STATUS"])
        except ValueError:
            result.exit_status = 255


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


# Keys of a message that name what it is, in the order the timeline shows them.
_EVENT_KEYS = ("READY", "EXIT_STATUS", "X_SYSTEMD_SHUTDOWN", "STATUS")


def _row(
    event: str, host_s: float | None, guest_s: float | None = None, **extra: object
) -> dict[str, object]:
    return {
        "event": event,
        "host_s": None if host_s is None else round(host_s, 4),
        "guest_s": None if guest_s is None else round(guest_s, 4),
        "duration_s": extra.get("duration_s"),
        "detail": extra.get("detail"),
    }


def timeline(result: BootResult) -> list[dict[str, object]]:
    """One timeline on the host axis (``host_s``: seconds since QEMU started), sorted by it:
    VM start, the guest's CLOCK_BOOTTIME stamps (kernel start, init exec, interpreter start,
    each phase, READY sent) placed on that axis, and each message's host receive time.

    The guest's clock zero is placed from the first READY: host receive time minus the guest's
    ``X_GUESTINIT_READY_S``; guest stamps are therefore late by the READY transport latency
    (about a millisecond, see docs/notify.md), and the rows derived that way say "est.".
    Without guest stamps (a systemd guest) only host rows appear."""
    rows: list[dict[str, object]] = [
        _row("vm start", 0.0, detail=_iso(result.started_wall) if result.started_wall else None)
    ]
    offset = None
    if result.ready_host_s is not None and result.uptime_at_ready_s is not None:
        offset = result.ready_host_s - result.uptime_at_ready_s  # host time of guest boottime 0

    def guest(event: str, guest_s: float | None, **extra: object) -> None:
        if offset is not None and guest_s is not None:
            rows.append(_row(event, offset + guest_s, guest_s, **extra))

    guest("kernel start (est.)", 0.0)
    guest("init exec", _float(result.notify.get("X_GUESTINIT_EXEC_S")))
    guest("guestinit start", _float(result.notify.get("X_GUESTINIT_START_S")), detail="interpreter up")
    for phase in result.phases:
        start = _float(str(phase.get("start_s")))
        end = _float(str(phase.get("end_s")))
        if start is None or end is None:
            continue
        error = phase.get("error")
        guest(
            f"phase {phase.get('name')}",
            start,
            duration_s=round(end - start, 4),
            detail=f"error: {error}" if error else None,
        )
    guest("READY sent", result.uptime_at_ready_s)
    for msg in result.messages:
        fields = msg["fields"]
        assert isinstance(fields, dict)
        keys = ",".join(k for k in _EVENT_KEYS if k in fields) or ",".join(list(fields)[:3])
        host_s = _float(str(msg["received_s"]))
        rows.append(_row(f"received {keys}", host_s, detail=str(msg.get("source") or "") or None))
    rows.sort(key=lambda row: float(str(row["host_s"])) if row["host_s"] is not None else 0.0)
    return rows


def format_timeline(result: BootResult) -> str:
    """The timeline as the human table ``guestctl boot`` prints."""
    lines = [f"{'event':<36} {'host s':>9} {'guest s':>9} {'duration':>10}  detail"]
    for row in timeline(result):
        host = "" if row["host_s"] is None else f"{float(str(row['host_s'])):.3f}"
        guest = "" if row["guest_s"] is None else f"{float(str(row['guest_s'])):.3f}"
        duration = "" if row["duration_s"] is None else f"{float(str(row['duration_s'])) * 1000:.1f} ms"
        detail = "" if row["detail"] is None else _printable(str(row["detail"]))[:60]
        lines.append(f"{str(row['event'])[:36]:<36} {host:>9} {guest:>9} {duration:>10}  {detail}".rstrip())
    return "\n".join(lines)


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def summary(result: BootResult) -> str:
    parts = [f"accel {result.accel} ({result.accel_why})", f"transport {result.transport}"]
    if result.ready:
        parts.append(
            f"READY at guest uptime {result.uptime_at_ready_s:.3f} s, host {result.ready_host_s:.3f} s"
        )
        exec_s = _float(result.notify.get("X_GUESTINIT_EXEC_S"))
        if exec_s is not None and result.uptime_at_ready_s is not None:
            parts.append(f"init exec to READY {result.uptime_at_ready_s - exec_s:.3f} s")
    if result.shutdown_s is not None:
        parts.append(f"powerdown to QEMU exit {result.shutdown_s:.3f} s")
    if result.failed_exit_s is not None:
        parts.append(f"failure report to QEMU exit {result.failed_exit_s:.3f} s")
    if result.retried:
        parts.append(f"booted again after: {'; '.join(result.retried)}")
    parts.append(f"wall {result.wall_s:.3f} s")
    return "; ".join(parts)
