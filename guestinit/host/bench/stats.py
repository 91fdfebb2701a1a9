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
Each goal's ratio of medians comes with a 95 % interval (``interval``): the same ratio over
resampled rounds, so that a verdict the machine's noise could turn is said to be so. The init
share also says what the interpreter's start alone gives (``interpreter_share``): the share had
the init done nothing after its first line, which no work in the init can go under.

Beside the clocks: ``mem_used_mib``, the guest's memory in use at READY (MemTotal minus
MemAvailable, which the init sends with READY), and the init's own phases (``init_phases``:
interpreter start, imports, then each phase it stamped), whose medians say where init exec to
READY goes. Every image is compared with the floor (``floor_differences``): the median of each
metric minus the floor's.
"""

from __future__ import annotations

import random
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
MEMORY = Metric("mem_used_mib", "memory in use at READY, MiB", "memory")
# Every key summarize() covers: the time metrics, then memory.
SUMMARY_KEYS = (*METRIC_KEYS, MEMORY.key)
FLOOR = "busybox"
# Issue 15's goals (ratios of medians, never absolute times).
GUESTINIT_PER_FLOOR_MAX = 1.30
SYSTEMD_PER_GUESTINIT_MIN = 4.0
INIT_SHARE_MAX = 0.15
# The goals' intervals: this many resamples of the rounds, from a fixed seed (the same runs give
# the same interval), and the central share of their ratios that the interval holds.
RESAMPLES = 2000
RESAMPLE_SEED = 15
INTERVAL_LEVEL = 0.95
# sample()'s key, beside SUMMARY_KEYS, for the guest's uptime at the init's first line.
FIRST_LINE = "first_line_s"
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
    interval: tuple[float, float] | None = None
    interpreter_alone: float | None = None  # the init share with nothing after its first line


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
    out: dict[str, float | None] = dict.fromkeys(SUMMARY_KEYS)
    if not boot.get("ready"):
        return out
    total, available = _number(boot.get("mem_total_kib")), _number(boot.get("mem_available_kib"))
    if total is not None and available is not None and 0 <= available <= total:
        out[MEMORY.key] = (total - available) / 1024
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
        first = _number(boot.get("start_s"))  # uptime at the init's first line, if it says
        if first is not None and exec_s < first <= uptime:
            out[FIRST_LINE] = first
    return out


def summarize(samples: Sequence[Mapping[str, float | None]]) -> dict[str, Stat | None]:
    """Median, min and max of each metric over the runs that have it."""
    out: dict[str, Stat | None] = {}
    for key in SUMMARY_KEYS:
        values = [v for s in samples if (v := s.get(key)) is not None]
        out[key] = Stat(statistics.median(values), min(values), max(values), len(values)) if values else None
    return out


def ratio(numerator: Stat | None, denominator: Stat | None) -> float | None:
    """Ratio of two medians (None when either is missing or the denominator is not positive)."""
    if numerator is None or denominator is None or denominator.median <= 0:
        return None
    return numerator.median / denominator.median


Rounds = Mapping[str, Sequence[Mapping[str, float | None]]]


def interval(
    rounds: Rounds, numerator: tuple[str, str], denominator: tuple[str, str]
) -> tuple[float, float] | None:
    """The 95 % bootstrap interval of median(numerator) / median(denominator), each an (image,
    metric) pair. ``rounds[image][i]`` is that image's sample in round i: the rounds are drawn
    with replacement, every image's run of a drawn round together, since the bench interleaves
    them and a slow spell of the machine hits the whole round. None below 3 rounds or when a
    draw has no value."""
    num_values = [s.get(numerator[1]) for s in rounds.get(numerator[0], ())]
    den_values = [s.get(denominator[1]) for s in rounds.get(denominator[0], ())]
    n = min(len(num_values), len(den_values))
    if n < 3:
        return None
    rng = random.Random(RESAMPLE_SEED)
    ratios: list[float] = []
    for _ in range(RESAMPLES):
        picks = [rng.randrange(n) for _ in range(n)]
        top = [v for i in picks if (v := num_values[i]) is not None]
        bottom = [v for i in picks if (v := den_values[i]) is not None]
        if not top or not bottom or (median := statistics.median(bottom)) <= 0:
            return None
        ratios.append(statistics.median(top) / median)
    ratios.sort()
    tail = (1 - INTERVAL_LEVEL) / 2
    return ratios[int(tail * (RESAMPLES - 1))], ratios[int((1 - tail) * (RESAMPLES - 1))]


def interpreter_share(samples: Sequence[Mapping[str, float | None]]) -> float | None:
    """The median over runs of what the init share would be had the init done nothing after its
    first line: (first line - exec) / first line, the interpreter's start over the uptime at
    that line. No work after the first line can take the share below it. None when no run
    stamps its first line."""
    shares = [
        (first - exec_s) / first
        for s in samples
        if (first := s.get(FIRST_LINE)) is not None and (exec_s := s.get("kernel_s")) is not None
    ]
    return statistics.median(shares) if shares else None


def goals(summaries: Mapping[str, Mapping[str, Stat | None]], rounds: Rounds | None = None) -> list[Goal]:
    """Issue 15's goals, on medians: guestinit's READY (guest uptime) within 1.30 x the busybox
    floor's; systemd's at least 4 x guestinit's; guestinit's init exec to READY at most 15 % of
    its uptime at READY. Only for images present in the run; with ``rounds`` (each image's
    samples in run order), each with its interval, and the init share with what the
    interpreter's start alone gives (interpreter_share)."""
    out: list[Goal] = []
    key = "ready_uptime_s"
    # name, numerator, denominator, limit, comparison, whether to say the interpreter's share
    wanted = (
        ("guestinit/floor", ("guestinit", key), (FLOOR, key), GUESTINIT_PER_FLOOR_MAX, "<=", False),
        ("systemd/guestinit", ("systemd", key), ("guestinit", key), SYSTEMD_PER_GUESTINIT_MIN, ">=", False),
        ("guestinit init share", ("guestinit", "init_s"), ("guestinit", key), INIT_SHARE_MAX, "<=", True),
    )
    for name, num, den, limit, op, with_interpreter in wanted:
        if num[0] not in summaries or den[0] not in summaries:
            continue
        r = ratio(summaries[num[0]].get(num[1]), summaries[den[0]].get(den[1]))
        met = r is not None and (r <= limit if op == "<=" else r >= limit)
        span = None if rounds is None else interval(rounds, num, den)
        alone = interpreter_share(rounds.get(num[0], ())) if rounds is not None and with_interpreter else None
        out.append(_goal(name, r, limit, met, op, span, alone))
    return out


def floor_differences(
    summary: Mapping[str, Stat | None], floor: Mapping[str, Stat | None]
) -> dict[str, float | None]:
    """Each metric's median minus the floor's (None where either is missing)."""
    out: dict[str, float | None] = {}
    for key in SUMMARY_KEYS:
        mine, base = summary.get(key), floor.get(key)
        out[key] = None if mine is None or base is None else mine.median - base.median
    return out


def init_phases(run: Mapping[str, object]) -> list[dict[str, object]]:
    """The init's phases of one recorded run, led by "python" (exec to its first line) and
    "imports" (first line to its first phase) where the init stamps its start."""
    raw = run.get("phases")
    phases = [p for p in raw if isinstance(p, dict)] if isinstance(raw, list) else []
    exec_s, start_s = _number(run.get("exec_s")), _number(run.get("start_s"))
    if exec_s is not None and start_s is not None and phases and exec_s < start_s:
        first = _number(phases[0].get("start_s"))
        lead: list[dict[str, object]] = [{"name": "python", "start_s": exec_s, "end_s": start_s}]
        if first is not None and start_s < first:
            lead.append({"name": "imports", "start_s": start_s, "end_s": first})
        phases = lead + phases
    return phases


def phase_durations(run: Mapping[str, object]) -> dict[str, float]:
    """Seconds of each of the init's phases in one run (see init_phases), by name; phases may
    overlap (modules load while the GPU phase runs, a service starts inside "services")."""
    out: dict[str, float] = {}
    for phase in init_phases(run):
        start, end = _number(phase.get("start_s")), _number(phase.get("end_s"))
        if start is not None and end is not None and end >= start:
            out[str(phase.get("name"))] = out.get(str(phase.get("name")), 0.0) + end - start
    return out


def summarize_phases(runs: Sequence[Mapping[str, object]]) -> dict[str, Stat]:
    """Median, min and max of each init phase over the runs that have it, in boot order (the
    order of the run that has the most phases, then any others)."""
    durations = [phase_durations(r) for r in runs if r.get("ready")]
    names: list[str] = []
    for d in sorted(durations, key=len, reverse=True):
        names += [n for n in d if n not in names]
    out: dict[str, Stat] = {}
    for name in names:
        values = [d[name] for d in durations if name in d]
        out[name] = Stat(statistics.median(values), min(values), max(values), len(values))
    return out


def _goal(
    name: str,
    r: float | None,
    limit: float,
    met: bool,
    op: str,
    span: tuple[float, float] | None = None,
    alone: float | None = None,
) -> Goal:
    if r is None:
        return Goal(name, None, limit, None, f"{name}: not measured (missing READY stamps)")
    verdict = "met" if met else "NOT met"
    where = ""
    if span is not None:
        where = f"95 % interval {span[0]:.3f}-{span[1]:.3f}; "
        if span[0] <= limit <= span[1]:
            verdict += ", within this run's noise"
    if alone is not None:
        verdict += f"; the interpreter's start alone gives {alone:.3f}"
    return Goal(name, r, limit, met, f"{name} = {r:.3f} ({where}goal {op} {limit:g}: {verdict})", span, alone)


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
