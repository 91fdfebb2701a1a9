"""The bench's SVG timeline, like ``systemd-analyze plot``: one row per image, one bar per phase
(median durations laid end to end on the host's time axis), a whisker for the spread of
host-observed READY, the init's own phases (from the median run) in a thin row below, and a
line under it with each phase's median difference from the busybox floor.

The layout (every coordinate) is computed here; templates/bench.svg.j2 only draws it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from guestinit.host.bench.stats import METRICS, PHASES, Stat

COLOURS = {"firmware_s": "#b0b7c3", "kernel_s": "#5b8def", "init_s": "#3fb37f", "sub": "#f0a43a"}
# the init's start-up, before its own phases: interpreter, then imports
SUB_COLOURS = {"python": "#9b6bd6", "imports": "#c7a0f0"}
LEFT = 170  # label column, px
RIGHT = 40
WIDTH = 1100
ROW_H = 22
SUB_H = 10
ROW_GAP = 26
TOP = 92  # the first row's top with up to two subtitle lines
SUBTITLE_LINE = 16  # px per subtitle line (the template's step); more lines push the rows down


@dataclass
class Bar:
    x: float
    y: float
    w: float
    h: float
    colour: str
    label: str  # drawn inside the bar when it fits
    title: str  # tooltip


@dataclass
class Row:
    name: str
    caption: str
    y: float
    bars: list[Bar] = field(default_factory=list)
    whisker: tuple[float, float, float] | None = None  # x_min, x_max, y
    ready_x: float | None = None
    ready_label: str = ""
    delta: str = ""  # the medians' differences from the floor, phase by phase


@dataclass
class Tick:
    x: float
    label: str


@dataclass
class Layout:
    width: int
    height: int
    title: str
    subtitle: list[str]
    rows: list[Row]
    ticks: list[Tick]
    axis_y: float
    plot_top: float
    legend: list[tuple[str, str]]
    left: int = LEFT
    subtitle_line: int = SUBTITLE_LINE


def _tick_step(span: float) -> float:
    for step in (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0):
        if span / step <= 16:
            return step
    return 120.0


def layout(
    images: Sequence[Mapping[str, object]],
    title: str,
    subtitle: str | list[str],
) -> Layout:
    """``images``: dicts with ``name``, ``caption``, ``summary`` (metric -> Stat | None),
    ``phases`` (the init's own phases of the median run: name, start_s, end_s on guest time) and
    optionally ``delta`` (a line of differences from the floor)."""
    span = 0.0
    for img in images:
        summary = _summary(img)
        ends = [_stacked_end(summary)]
        host = summary.get("ready_host_s")
        if host is not None:
            ends.append(host.max)
        span = max(span, *ends)
    span = max(span, 0.1) * 1.04
    step = _tick_step(span)
    scale = (WIDTH - LEFT - RIGHT) / (math.ceil(span / step) * step)

    lines = [subtitle] if isinstance(subtitle, str) else list(subtitle)
    top = TOP + SUBTITLE_LINE * max(0, len(lines) - 2)
    rows: list[Row] = []
    y = float(top)
    for img in images:
        summary = _summary(img)
        name = str(img.get("name", ""))
        row = Row(name=name, caption=str(img.get("caption", "")), y=y, delta=str(img.get("delta") or ""))
        start = 0.0
        for key in PHASES:
            stat = summary.get(key)
            if stat is None:
                continue
            label = next(m.short for m in METRICS if m.key == key)
            w = stat.median * scale
            text = f"{stat.median:.2f}s"
            row.bars.append(
                Bar(
                    x=LEFT + start * scale,
                    y=y,
                    w=w,
                    h=ROW_H,
                    colour=COLOURS[key],
                    label=text if w > 7.5 * len(text) else "",
                    title=f"{name}: {label} median {stat.median:.3f} s "
                    f"(min {stat.min:.3f}, max {stat.max:.3f})",
                )
            )
            start += stat.median
        phases = img.get("phases") or []
        fw = summary.get("firmware_s")
        offset = fw.median if fw is not None else 0.0
        assert isinstance(phases, list)
        for phase in phases:
            try:
                p_start = float(phase["start_s"])
                p_end = float(phase["end_s"])
            except (KeyError, TypeError, ValueError):
                continue
            w = max((p_end - p_start) * scale, 1.0)
            phase_name = str(phase.get("name"))
            row.bars.append(
                Bar(
                    x=LEFT + (offset + p_start) * scale,
                    y=y + ROW_H + 2,
                    w=w,
                    h=SUB_H,
                    colour=SUB_COLOURS.get(phase_name, COLOURS["sub"]),
                    label=phase_name if w > 6.5 * len(phase_name) else "",
                    title=f"{name} phase {phase_name}: {(p_end - p_start) * 1000:.1f} ms",
                )
            )
        host = summary.get("ready_host_s")
        if host is not None:
            mid = y + ROW_H / 2
            row.whisker = (LEFT + host.min * scale, LEFT + host.max * scale, mid)
            row.ready_x = LEFT + host.median * scale
            row.ready_label = f"READY {host.median:.2f}s"
        rows.append(row)
        y += ROW_H + SUB_H + ROW_GAP
    axis_y = y - ROW_GAP / 2
    n_ticks = math.ceil(span / step)
    ticks = [Tick(LEFT + i * step * scale, f"{i * step:g}s") for i in range(n_ticks + 1)]
    legend = [
        (COLOURS["firmware_s"], "QEMU start → first kernel message"),
        (COLOURS["kernel_s"], "kernel start → init exec"),
        (COLOURS["init_s"], "init exec → READY (guest)"),
        (SUB_COLOURS["python"], "init start-up: interpreter, imports"),
        (COLOURS["sub"], "init's own phases (median run)"),
        ("#d33", "READY at the host (median, min–max)"),
    ]
    return Layout(
        width=WIDTH,
        height=int(axis_y + 70),
        title=title,
        subtitle=lines,
        rows=rows,
        ticks=ticks,
        axis_y=axis_y,
        plot_top=top - 8,
        legend=legend,
    )


def _summary(img: Mapping[str, object]) -> Mapping[str, Stat | None]:
    summary = img.get("summary") or {}
    assert isinstance(summary, Mapping)
    return summary


def _stacked_end(summary: Mapping[str, Stat | None]) -> float:
    return sum(s.median for k in PHASES if (s := summary.get(k)) is not None)


def render(lay: Layout) -> str:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    return env.get_template("bench.svg.j2").render(lay=lay)
