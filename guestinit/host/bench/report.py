"""The bench's report read back from its JSON: the table ``guestctl bench`` prints and the SVG.

Both show, per image, each phase's median and its difference from the busybox floor's median
(``vs floor``), and the init's own phases (interpreter start, imports, each phase it stamped,
each service it started), so that the next lever is the largest number in the table.
"""

from __future__ import annotations

from collections.abc import Mapping

from guestinit.host.bench import stats

WIDE = 15  # image name column


def stats_from_json(image: Mapping[str, object]) -> dict[str, stats.Stat | None]:
    summary = image["summary"]
    assert isinstance(summary, dict)
    return {k: None if v is None else stats.Stat(**v) for k, v in summary.items()}


def phase_stats_from_json(image: Mapping[str, object]) -> dict[str, stats.Stat]:
    summary = image.get("init_phase_summary")
    if not isinstance(summary, dict):  # a report from before the init's phases were summarized
        runs = image.get("runs")
        return stats.summarize_phases(runs if isinstance(runs, list) else [])
    return {k: stats.Stat(**v) for k, v in summary.items()}


def floor_differences(report: Mapping[str, object], image: Mapping[str, object]) -> dict[str, float | None]:
    """The image's vs-floor differences: as written, or computed for an older report."""
    diffs = image.get("vs_floor")
    if isinstance(diffs, dict):
        return diffs
    images = report["images"]
    assert isinstance(images, list)
    floor = next((i for i in images if i["name"] == stats.FLOOR), None)
    if floor is None or image["name"] == stats.FLOOR:
        return {}
    return stats.floor_differences(stats_from_json(image), stats_from_json(floor))


def _signed(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:+.{digits}f}"


def accel_label(cond: Mapping[str, object]) -> str:
    """ "kvm", "tcg", or "tcg single-threaded" (a report from before the choice says "tcg")."""
    threads = cond.get("tcg_threads")
    return f"{cond['accel']} {threads}-threaded" if threads else str(cond["accel"])


def format_table(report: Mapping[str, object]) -> str:
    cond = report["conditions"]
    assert isinstance(cond, dict)
    lines = [
        f"guestctl bench: {cond['runs']} run(s) per image, interleaved; "
        f"kernel {cond['kernel_version'] or cond['kernel']}"
        + (f" ({cond['kernel_why']})" if cond.get("kernel_why") else "")
        + f"; {cond['qemu']}, accel {accel_label(cond)}, "
        f"{cond['machine']}, {cond['cpus']} vCPU, {cond['memory_mb']} MiB; transport {cond['transport']}",
        f"load average before {cond['loadavg_before']}, after {cond['loadavg_after']}",
        "",
        f"{'image':<{WIDE}} {'size':>8}  {'phase (seconds)':<38} {'median':>7} {'min':>7} {'max':>7} "
        f"{'n':>3} {'vs floor':>9}",
    ]
    images = report["images"]
    assert isinstance(images, list)
    for image in images:
        summary = stats_from_json(image)
        diffs = floor_differences(report, image)
        first = True
        for metric in (*stats.METRICS, stats.MEMORY):
            stat = summary.get(metric.key)
            head = (
                f"{image['name']:<{WIDE}} {image['initrd_bytes'] / 2**20:>5.1f}MiB"
                if first
                else " " * (WIDE + 9)
            )
            first = False
            diff = _signed(diffs.get(metric.key), 1 if metric is stats.MEMORY else 3) if diffs else ""
            if stat is None:
                lines.append(f"{head}  {metric.label:<38} {'-':>7} {'-':>7} {'-':>7} {0:>3} {diff:>9}")
                continue
            digits = 1 if metric is stats.MEMORY else 3
            values = f"{stat.median:>7.{digits}f} {stat.min:>7.{digits}f} {stat.max:>7.{digits}f} {stat.n:>3}"
            lines.append(f"{head}  {metric.label:<38} {values} {diff:>9}".rstrip())
        init = summary.get("init_s")
        for name, stat in phase_stats_from_json(image).items():
            share = f"{stat.median / init.median:>8.0%}" if init is not None and init.median > 0 else ""
            label = f"  init: {name}"[:38]
            values = f"{stat.median:>7.3f} {stat.min:>7.3f} {stat.max:>7.3f} {stat.n:>3}"
            lines.append(f"{'':<{WIDE + 9}}  {label:<38} {values} {share:>9}")
        failed = [r for r in image["runs"] if not r["ready"]]
        if failed:
            lines.append(f"{'':<{WIDE + 9}}  {len(failed)} run(s) without READY: {failed[0]['error']}")
    lines.append(
        f"(vs floor: the median minus the {stats.FLOOR} floor's; "
        "for the init's own phases, their share of its time)"
    )
    ratios = report["ratios"]
    assert isinstance(ratios, dict)
    if ratios:
        lines.append("")
        for name, values in ratios.items():
            parts = [
                f"{k.removesuffix('_s').replace('_', ' ')} {v:.3f}"
                for k, v in values.items()
                if v is not None
            ]
            lines.append(f"ratio {name} (medians): " + ", ".join(parts))
    goal_text = report["goal_text"]
    assert isinstance(goal_text, list)
    for text in goal_text:
        lines.append(f"goal {text}")
    imports = report.get("imports")
    if isinstance(imports, dict):
        for name, found in imports.items():
            if "skipped" in found:
                lines.append(f"imports {name}: not measured ({found['skipped']})")
                continue
            heavy = ", ".join(found["heavy"]) or "none"
            lines.append(
                f"imports {name}: {found['modules']} modules, {found['total_ms']} ms (self times, "
                f"-X importtime in the guest); heavy modules: {heavy}"
            )
    return "\n".join(lines)


def delta_label(report: Mapping[str, object], image: Mapping[str, object]) -> str:
    """One line of the image's differences from the floor, phase by phase, for the SVG."""
    diffs = floor_differences(report, image)
    if not diffs:
        return ""
    parts = []
    for key in (*stats.PHASES, "ready_uptime_s"):
        value = diffs.get(key)
        if value is not None:
            short = next(m.short for m in stats.METRICS if m.key == key)
            parts.append(f"{short} {value:+.2f} s")
    memory = diffs.get(stats.MEMORY.key)
    if memory is not None:
        parts.append(f"memory {memory:+.0f} MiB")
    return "vs floor: " + ", ".join(parts) if parts else ""


def render_svg(report: Mapping[str, object]) -> str:
    from guestinit.host.bench import plot

    cond = report["conditions"]
    images = report["images"]
    assert isinstance(cond, dict) and isinstance(images, list)
    rows = []
    for image in images:
        rep = image["representative_run"]
        phases = next((stats.init_phases(r) for r in image["runs"] if r["run"] == rep), [])
        memory = stats_from_json(image).get(stats.MEMORY.key)
        caption = f"{image['caption']}, {image['initrd_bytes'] / 2**20:.1f} MiB"
        if memory is not None:
            caption += f", {memory.median:.0f} MiB in use"
        rows.append(
            {
                "name": image["name"],
                "caption": caption,
                "summary": stats_from_json(image),
                "phases": phases,
                "delta": delta_label(report, image),
            }
        )
    goal_text = report["goal_text"]
    subtitle = [
        f"{cond['runs']} run(s) each, interleaved, medians; kernel {cond['kernel_version']}, "
        f"accel {accel_label(cond)}, {cond['cpus']} vCPU, {cond['memory_mb']} MiB; "
        f"load average {cond['loadavg_before'][0]} before, {cond['loadavg_after'][0]} after",
        *(str(t) for t in (goal_text if isinstance(goal_text, list) else [])),  # a line per goal
    ]
    return plot.render(plot.layout(rows, "Boot to READY: where the time goes", subtitle))
