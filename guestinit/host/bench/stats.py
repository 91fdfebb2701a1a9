"""Boot benchmark statistics: per-run phase durations from a recorded boot, their median/min/max,
the ratios between images, and the interleaved run order. Pure functions of recorded data.

Each boot gives four numbers on two clocks (seconds):

- ``firmware_s`` QEMU start to first kernel message: the host time at which the guest's clock
  read zero, i.e. host-observed READY minus the guest's uptime at READY. The kernel's first
  record ("Linux version ...") is stamped 0.000000 on that clock, so this is when the kernel
  started talking, without needing console output (the command line has ``quiet``). It runs
  late by the notify latency (virtio-serial to the host listener), milliseconds.
- ``kernel_s`` kernel start to init exec: the kernel's own stamp of its "Run /init as init
  process" record (initramfs unpacking and device probing are in here).
- ``init_s`` init exec to READY: guest uptime at READY minus ``kernel_s``.
- ``ready_host_s`` host-observed READY: QEMU start to the READY message at the host listener.

``ready_uptime_s`` (the guest's uptime at READY, ``kernel_s + init_s``) is what the goals compare.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    short: str


METRICS: tuple[Metric, ...] = (
    Metric("firmware_s", "QEMU start to first kernel message", "firmware"),
    Metric("kernel_s", "kernel start to init exec", "kernel"),
    Metric("init_s", "init exec to READY", "init"),
    Metric("ready_uptime_s", "READY, guest uptime", "READY (guest)"),
    Metric("ready_host_s", "READY, host-observed", "READY (host)"),
)
METRIC_KEYS = tuple(m.key for m in METRICS)
# The phases drawn one after another on the timeline (they add up to READY).
PHASES = ("firmware_s", "kernel_s", "init_s")


@dataclass(frozen=True)
class Stat:
    median: float
    min: float
    max: float
    n: int

    def as_dict(self) -> dict[str, float | int]:
        return {
            "median": round(self.median, 4),
            "min": round(self.min, 4),
            "max": round(self.max, 4),
            "n": self.n,
        }


@dataclass(frozen=True)
class Goal:
    name: str
    ratio: float | None
    limit: float
    met: bool | None
    text: str


def _number(value: object) -> float | None:
    if isinstance(value, bool) or value is None or value == "":
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def sample(boot: Mapping[str, object]) -> dict[str, float | None]:
    """The metrics of one recorded boot (a ``BootResult.as_dict()``); None where the guest did
    not give the stamp (e.g. no READY, or no exec record)."""
    out: dict[str, float | None] = dict.fromkeys(METRIC_KEYS)
    if not boot.get("ready"):
        return out
    host = _number(boot.get("ready_host_s"))
    uptime = _number(boot.get("uptime_at_ready_s"))
    exec_s = _number(boot.get("exec_s"))
    out["ready_host_s"] = host
    out["ready_uptime_s"] = uptime
    if host is not None and uptime is not None:
        out["firmware_s"] = host - uptime
    if exec_s is not None and uptime is not None and 0 < exec_s <= uptime:
        out["kernel_s"] = exec_s
        out["init_s"] = uptime - exec_s
    return out


def summarize(samples: Sequence[Mapping[str, float | None]]) -> dict[str, Stat | None]:
    """Median, min and max of each metric over the runs that have it."""
    out: dict[str, Stat | None] = {}
    for key in METRIC_KEYS:
        values = [v for s in samples if (v := s.get(key)) is not None]
        out[key] = Stat(statistics.median(values), min(values), max(values), len(values)) if values else None
    return out


def ratio(numerator: Stat | None, denominator: Stat | None) -> float | None:
    """Ratio of two medians (None when either is missing or the denominator is not positive)."""
    if numerator is None or denominator is None or denominator.median <= 0:
        return None
    return numerator.median / denominator.median


def goals(summaries: Mapping[str, Mapping[str, Stat | None]]) -> list[Goal]:
    """Issue 7's goals on guest uptime at READY: guestinit within 1.5 x the busybox floor, and
    systemd at least 2 x slower than guestinit. Only for images present in the run."""
    out: list[Goal] = []
    key = "ready_uptime_s"
    if "guestinit" in summaries and "busybox" in summaries:
        r = ratio(summaries["guestinit"].get(key), summaries["busybox"].get(key))
        out.append(_goal("guestinit/floor", r, 1.5, r is not None and r <= 1.5, "<="))
    if "systemd" in summaries and "guestinit" in summaries:
        r = ratio(summaries["systemd"].get(key), summaries["guestinit"].get(key))
        out.append(_goal("systemd/guestinit", r, 2.0, r is not None and r >= 2.0, ">="))
    return out


def _goal(name: str, r: float | None, limit: float, met: bool, op: str) -> Goal:
    if r is None:
        return Goal(name, None, limit, None, f"{name}: not measured (missing READY stamps)")
    verdict = "met" if met else "NOT met"
    return Goal(name, r, limit, met, f"{name} = {r:.3f} (goal {op} {limit:g}: {verdict})")


def schedule(images: Sequence[str], runs: int) -> list[tuple[int, str]]:
    """Interleaved order: run 1 of every image, then run 2 of every image, ... so a change in
    the machine's load during the bench hits every image alike."""
    return [(run, image) for run in range(1, runs + 1) for image in images]


def representative(samples: Sequence[Mapping[str, float | None]]) -> int | None:
    """Index of the run whose guest READY is the median (lower middle), for drawing its phases."""
    indexed = [(v, i) for i, s in enumerate(samples) if (v := s.get("ready_uptime_s")) is not None]
    if not indexed:
        return None
    indexed.sort()
    return indexed[(len(indexed) - 1) // 2][1]
