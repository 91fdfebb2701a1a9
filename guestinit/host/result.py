"""What one boot found, and the report made of it: one timeline on the host axis joining QEMU's
start, the guest's own CLOCK_BOOTTIME stamps and the notify messages as they arrived, as rows,
a table and a summary line."""

from __future__ import annotations

from dataclasses import dataclass, field


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
            "exec_s": _r(as_float(self.notify.get("X_GUESTINIT_EXEC_S"))),
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


def as_float(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return None


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
    guest("init exec", as_float(result.notify.get("X_GUESTINIT_EXEC_S")))
    guest("guestinit start", as_float(result.notify.get("X_GUESTINIT_START_S")), detail="interpreter up")
    for phase in result.phases:
        start = as_float(str(phase.get("start_s")))
        end = as_float(str(phase.get("end_s")))
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
        host_s = as_float(str(msg["received_s"]))
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
        exec_s = as_float(result.notify.get("X_GUESTINIT_EXEC_S"))
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
