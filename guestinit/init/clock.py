"""CLOCK_BOOTTIME stamps and the phase record that becomes the timeline the host prints."""

from __future__ import annotations

import os
import time


def boottime() -> float:
    """Seconds since the kernel started (CLOCK_BOOTTIME: counts suspend, same clock as uptime)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def process_start(pid: int | str = "self", proc: str = "/proc") -> float | None:
    """When a process was exec'd, in CLOCK_BOOTTIME seconds (field 22 of /proc/PID/stat)."""
    try:
        with open(f"{proc}/{pid}/stat", "rb") as f:
            stat = f.read().decode()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19]) / os.sysconf("SC_CLK_TCK")


class Phase:
    __slots__ = ("end_s", "error", "name", "start_s")

    def __init__(self, name: str, start_s: float) -> None:
        self.name = name
        self.start_s = start_s
        self.end_s = start_s
        self.error = ""

    def as_dict(self) -> dict[str, object]:
        d: dict[str, object] = {
            "name": self.name,
            "start_s": round(self.start_s, 4),
            "end_s": round(self.end_s, 4),
        }
        if self.error:
            d["error"] = self.error
        return d


class Timeline:
    """Phases in the order they ran; ``with timeline.phase("mounts"):`` records start and end."""

    def __init__(self) -> None:
        self.phases: list[Phase] = []

    def phase(self, name: str) -> _PhaseContext:
        return _PhaseContext(self, name)

    def as_list(self) -> list[dict[str, object]]:
        return [p.as_dict() for p in self.phases]


class _PhaseContext:
    __slots__ = ("_name", "_phase", "_timeline")

    def __init__(self, timeline: Timeline, name: str) -> None:
        self._timeline = timeline
        self._name = name
        self._phase: Phase | None = None

    def __enter__(self) -> Phase:
        self._phase = Phase(self._name, boottime())
        self._timeline.phases.append(self._phase)
        return self._phase

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        assert self._phase is not None
        self._phase.end_s = boottime()
        if exc is not None:
            self._phase.error = f"{type(exc).__name__}: {exc}"


def log_text_stamp(marker: str, text: bytes) -> float | None:
    """Time of the first line of the kernel's log as text (syslog(2), dmesg: "<6>[    2.201000]
    Run /init as init process") containing ``marker``; None when there is none, or when its
    line carries no time stamp (printk.time=0)."""
    wanted = marker.encode()
    pos = text.find(wanted)
    while pos >= 0:
        line = text[text.rfind(b"\n", 0, pos) + 1 : pos]
        open_, close = line.find(b"["), line.find(b"]")
        if 0 <= open_ < close:
            try:
                return float(line[open_ + 1 : close])
            except ValueError:
                pass
        pos = text.find(wanted, pos + len(wanted))
    return None


def kernel_log_stamp(marker: str, kmsg: str = "/dev/kmsg") -> float | None:
    """Time of the first kernel log record containing ``marker`` (monotonic
    seconds since boot, as the kernel stamps records), read without blocking from /dev/kmsg.

    The kernel logs "Run /init as init process" (from an initrd; "Run /sbin/init ..." from a
    root disk) just before it execs init, so this is the
    exec time of PID 1 (its /proc stat start time is when the kernel created the task,
    before the initramfs was unpacked).
    """
    try:
        fd = os.open(kmsg, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    wanted = marker.encode()
    try:
        for _ in range(100000):
            try:
                record = os.read(fd, 8192)
            except BlockingIOError:
                return None
            except OSError as exc:
                if exc.errno == 32:  # EPIPE: a record was overwritten; keep reading
                    continue
                return None
            if not record:
                return None
            if wanted not in record:  # one search per record: a boot logs hundreds of them
                continue
            for line in record.split(b"\n"):
                head, sep, text = line.partition(b";")
                if sep and not line.startswith(b" ") and wanted in text:
                    fields = head.split(b",")
                    return int(fields[2]) / 1e6 if len(fields) > 2 else None
        return None
    finally:
        os.close(fd)
