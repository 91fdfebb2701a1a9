"""``guestctl bench``: boot each image N times, interleaved, with one kernel, one QEMU setup and one
accelerator; report median/min/max of each boot phase, the ratios between images, a table,
JSON and an SVG timeline.

Images: ``guestinit`` (the default Kata image, built when needed), ``busybox`` (the floor) and
``systemd`` (the same userland with systemd as init), see guestinit.host.bench.baselines; or any
``NAME=PATH`` cpio whose init reports READY the same way. Phase definitions: stats.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from guestinit.atomicfile import write_atomic
from guestinit.host.bench import stats
from guestinit.host.errors import UserError

BUILTIN = ("guestinit", "busybox", "systemd")
CAPTIONS = {
    "guestinit": "guestinit as PID 1",
    "busybox": "busybox sh /init (floor)",
    "systemd": "systemd as init",
}


@dataclass(frozen=True)
class BenchImage:
    name: str
    initrd: Path
    caption: str


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="guestctl bench",
        description="Boot images N times each (interleaved) under one kernel and QEMU setup; "
        "print median/min/max per boot phase and the ratios guestinit/floor, systemd/guestinit.",
    )
    p.add_argument("--runs", type=int, default=3, help="boots per image (default 3)")
    p.add_argument(
        "--image",
        action="append",
        metavar="NAME[=PATH]",
        help="guestinit, busybox, systemd, or NAME=PATH of a cpio reporting READY (repeatable; "
        "default: all three built-in images)",
    )
    p.add_argument("--kernel", help="kernel for every image (default: the one beside the guestinit image)")
    p.add_argument(
        "--accel",
        choices=("auto", "kvm", "tcg"),
        default="auto",
        help="accelerator: kvm when it really boots a guest here (probed), else tcg (default auto)",
    )
    p.add_argument(
        "--transport",
        choices=("auto", "vsock", "serial"),
        default="auto",
        help="readiness channel: vsock when /dev/vhost-vsock exists, else virtio-serial (default auto)",
    )
    p.add_argument("--memory", type=int, default=2048, help="guest memory in MiB (default 2048)")
    p.add_argument("--cpus", type=int, default=2, help="guest vCPUs (default 2)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for each READY")
    p.add_argument("--json", metavar="FILE", help="write every run and the statistics as JSON")
    p.add_argument("--svg", metavar="FILE", help="write the timeline picture")
    p.add_argument("--runs-dir", metavar="DIR", help="console logs (default build/bench/<time>)")
    args = p.parse_args(argv)
    if not 1 <= args.runs <= 100:
        raise UserError(f"--runs {args.runs} is out of range", hint="use 1 to 100")
    if args.timeout <= 0:
        raise UserError(f"--timeout {args.timeout:g} must be positive", hint="e.g. --timeout 120")
    return args


def parse_image_specs(specs: list[str] | None) -> list[tuple[str, Path | None]]:
    """``NAME`` (a built-in) or ``NAME=PATH``; names are unique."""
    out: list[tuple[str, Path | None]] = []
    for spec in specs or list(BUILTIN):
        name, sep, path = spec.partition("=")
        if not name or not all(c.isalnum() or c in "-_." for c in name):
            raise UserError(f"--image {spec!r}: bad name", hint="use letters, digits, - _ . (e.g. guestinit)")
        if sep and not path:
            raise UserError(f"--image {spec!r}: empty path", hint="use NAME=PATH")
        if not sep and name not in BUILTIN:
            raise UserError(
                f"--image {spec!r} is not a built-in image", hint=f"use {', '.join(BUILTIN)} or NAME=PATH"
            )
        if any(name == n for n, _ in out):
            raise UserError(f"--image {name} given twice", hint="name each image once")
        out.append((name, Path(path) if sep else None))
    return out


def resolve_images(specs: list[tuple[str, Path | None]]) -> list[BenchImage]:
    from guestinit.host.bench import baselines

    images = []
    for name, path in specs:
        if path is None:
            if name == "guestinit":
                path = _guestinit_image()
            elif name == "busybox":
                path = baselines.busybox_floor()
            else:
                path = baselines.systemd_baseline()
        if not path.is_file():
            raise UserError(f"--image {name}={path}: file not found", hint="give an existing cpio initrd")
        images.append(BenchImage(name, path, CAPTIONS.get(name, path.name)))
    return images


def _guestinit_image() -> Path:
    """The default Kata image, built (or restored from the cache) when its inputs changed."""
    from guestinit.host.build.builder import build
    from guestinit.host.media import DEFAULT_IMAGE

    print("guestctl bench: checking the guestinit image (guestctl build kata --if-needed)", file=sys.stderr)
    manifest = build("kata", if_needed=True)
    return manifest.parent / DEFAULT_IMAGE.name


def _kernel(args: argparse.Namespace, images: list[BenchImage]) -> Path:
    from guestinit.host.media import resolve_kernel

    if args.kernel:
        return resolve_kernel(Path(args.kernel), Path(args.kernel))
    for image in images:
        if image.name == "guestinit":
            return resolve_kernel(image.initrd, None)
    return resolve_kernel(_guestinit_image(), None)


def _kernel_version(kernel: Path) -> str:
    kver = kernel.with_name(kernel.name.removesuffix(".vmlinuz") + ".kver")
    return kver.read_text().strip() if kver.is_file() else ""


def _record(result: object) -> dict[str, object]:
    from guestinit.host.result import BootResult

    assert isinstance(result, BootResult)
    d = result.as_dict()
    keep = ("ready", "error", "wall_s", "ready_host_s", "uptime_at_ready_s", "exec_s", "status", "phases")
    out = {k: d[k] for k in keep}
    # guestinit's stamp of its first Python line (X_GUESTINIT_START_S): splits exec-to-READY
    # into interpreter start, imports, and its own phases
    start = result.notify.get("X_GUESTINIT_START_S")
    out["start_s"] = float(start) if start else None
    out["console_log"] = result.console_log
    return out


def init_phases(run: dict[str, object]) -> list[dict[str, object]]:
    """The init's phases of one recorded run, led by "python" (exec to its first line) and
    "imports" (first line to its first phase) where the init stamps its start."""
    phases = [p for p in run.get("phases") or [] if isinstance(p, dict)]  # type: ignore[attr-defined]
    exec_s, start_s = run.get("exec_s"), run.get("start_s")
    if isinstance(exec_s, float) and isinstance(start_s, float) and phases and exec_s < start_s:
        first = float(str(phases[0]["start_s"]))
        lead = [{"name": "python", "start_s": exec_s, "end_s": start_s}]
        if start_s < first:
            lead.append({"name": "imports", "start_s": start_s, "end_s": first})
        phases = lead + phases
    return phases


def run_bench(args: argparse.Namespace) -> dict[str, object]:
    from guestinit.host.bench import baselines
    from guestinit.host.boot import BootOptions, boot, choose_accel, choose_transport
    from guestinit.host.qemu import DEFAULT_VSOCK_PORT, find_qemu, qemu_version

    images = resolve_images(parse_image_specs(args.image))
    kernel = _kernel(args, images)
    kver = _kernel_version(kernel)
    for image in images:
        image_kver = baselines.kernel_version_of(image.initrd)
        if kver and image_kver and image_kver != kver:
            print(
                f"guestctl bench: warning: {image.name}'s modules are for {image_kver}, the kernel is {kver}",
                file=sys.stderr,
            )
    binary = find_qemu()
    accel, accel_why = choose_accel(args.accel, kernel)
    transport = choose_transport(args.transport)
    append = baselines.SYSTEMD_APPEND
    if transport == "vsock":  # systemd reports READY itself over vsock (references §3)
        append += f" systemd.set_credential=vmm.notify_socket:vsock-stream:2:{DEFAULT_VSOCK_PORT}"
    started = datetime.datetime.now(datetime.UTC)
    runs_dir = Path(args.runs_dir or Path("build/bench") / started.strftime("%Y%m%d-%H%M%S"))
    load_before = os.getloadavg()
    records: dict[str, list[dict[str, object]]] = {image.name: [] for image in images}
    by_name = {image.name: image for image in images}
    order = stats.schedule([image.name for image in images], args.runs)
    for run, name in order:
        image = by_name[name]
        opts = BootOptions(
            image=image.initrd,
            kernel=kernel,
            append=append,
            accel=accel,
            transport=transport,
            timeout_s=args.timeout,
            memory_mb=args.memory,
            cpus=args.cpus,
            run_dir=runs_dir / f"{name}-{run}",
        )
        record = _record(boot(opts))
        record["run"] = run
        records[name].append(record)
        print(f"  run {run}/{args.runs} {name:<10} {_progress(record)}", file=sys.stderr, flush=True)
    load_after = os.getloadavg()
    out_images = []
    summaries: dict[str, dict[str, stats.Stat | None]] = {}
    for image in images:
        samples = [stats.sample(r) for r in records[image.name]]
        for r, s in zip(records[image.name], samples, strict=True):
            r["metrics"] = {k: None if v is None else round(v, 4) for k, v in s.items()}
        summaries[image.name] = stats.summarize(samples)
        rep = stats.representative(samples)
        out_images.append(
            {
                "name": image.name,
                "caption": image.caption,
                "initrd": os.fspath(image.initrd),
                "initrd_bytes": image.initrd.stat().st_size,
                "summary": {
                    k: (None if v is None else v.as_dict()) for k, v in summaries[image.name].items()
                },
                "representative_run": None if rep is None else records[image.name][rep]["run"],
                "runs": records[image.name],
            }
        )
    goals = stats.goals(summaries)
    ratios = {}
    for num, den in (("guestinit", "busybox"), ("systemd", "guestinit")):
        if num in summaries and den in summaries:
            ratios[f"{num}/{den}"] = {
                m.key: _round(stats.ratio(summaries[num][m.key], summaries[den][m.key]))
                for m in stats.METRICS
                if m.key in ("ready_uptime_s", "ready_host_s", "init_s", "kernel_s")
            }
    return {
        "version": 1,
        "conditions": {
            "started": started.isoformat(timespec="seconds"),
            "runs": args.runs,
            "order": "interleaved: " + ", ".join(f"{n}#{r}" for r, n in order[: len(images) + 1]) + ", ...",
            "kernel": os.fspath(kernel),
            "kernel_version": kver,
            "qemu": f"{binary} {qemu_version(binary)}",
            "accel": accel,
            "accel_why": accel_why,
            "transport": transport,
            "machine": "q35",
            "cpus": args.cpus,
            "memory_mb": args.memory,
            "append_extra": append,
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in load_after],
            "runs_dir": os.fspath(runs_dir),
        },
        "definitions": {m.key: m.label for m in stats.METRICS},
        "images": out_images,
        "ratios": ratios,
        "goals": [{"name": g.name, "ratio": _round(g.ratio), "limit": g.limit, "met": g.met} for g in goals],
        "goal_text": [g.text for g in goals],
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _progress(record: dict[str, object]) -> str:
    if not record["ready"]:
        return f"FAILED: {record['error']} (console {record['console_log']})"
    up, host = record["uptime_at_ready_s"], record["ready_host_s"]
    return f"READY at guest {up} s, host {host} s"


def stats_from_json(image: dict[str, object]) -> dict[str, stats.Stat | None]:
    summary = image["summary"]
    assert isinstance(summary, dict)
    return {k: None if v is None else stats.Stat(**v) for k, v in summary.items()}


def format_table(report: dict[str, object]) -> str:
    cond = report["conditions"]
    assert isinstance(cond, dict)
    lines = [
        f"guestctl bench: {cond['runs']} run(s) per image, interleaved; "
        f"kernel {cond['kernel_version'] or cond['kernel']}; {cond['qemu']}, accel {cond['accel']}, "
        f"{cond['machine']}, {cond['cpus']} vCPU, {cond['memory_mb']} MiB; transport {cond['transport']}",
        f"load average before {cond['loadavg_before']}, after {cond['loadavg_after']}",
        "",
        f"{'image':<11} {'initrd':>8}  {'phase (seconds)':<38} {'median':>7} {'min':>7} {'max':>7} {'n':>3}",
    ]
    images = report["images"]
    assert isinstance(images, list)
    for image in images:
        summary = stats_from_json(image)
        first = True
        for metric in stats.METRICS:
            stat = summary.get(metric.key)
            head = f"{image['name']:<11} {image['initrd_bytes'] / 1e6:>6.1f}MB" if first else " " * 20
            first = False
            if stat is None:
                lines.append(f"{head}  {metric.label:<38} {'-':>7} {'-':>7} {'-':>7} {0:>3}")
            else:
                values = f"{stat.median:>7.3f} {stat.min:>7.3f} {stat.max:>7.3f} {stat.n:>3}"
                lines.append(f"{head}  {metric.label:<38} {values}")
        failed = [r for r in image["runs"] if not r["ready"]]
        if failed:
            lines.append(f"{'':<20}  {len(failed)} run(s) without READY: {failed[0]['error']}")
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
    return "\n".join(lines)


def render_svg(report: dict[str, object]) -> str:
    from guestinit.host.bench import plot

    cond = report["conditions"]
    images = report["images"]
    assert isinstance(cond, dict) and isinstance(images, list)
    rows = []
    for image in images:
        rep = image["representative_run"]
        phases = next((init_phases(r) for r in image["runs"] if r["run"] == rep), [])
        rows.append(
            {
                "name": image["name"],
                "caption": f"{image['caption']}, {image['initrd_bytes'] / 1e6:.1f} MB",
                "summary": stats_from_json(image),
                "phases": phases,
            }
        )
    goal_text = report["goal_text"]
    subtitle = [
        f"{cond['runs']} run(s) each, interleaved, medians; kernel {cond['kernel_version']}, "
        f"accel {cond['accel']}, {cond['cpus']} vCPU, {cond['memory_mb']} MiB; "
        f"load average {cond['loadavg_before'][0]} before, {cond['loadavg_after'][0]} after",
        "; ".join(str(t) for t in goal_text) if isinstance(goal_text, list) else "",
    ]
    return plot.render(plot.layout(rows, "Boot to READY: where the time goes", subtitle))


def main(argv: list[str]) -> int:
    try:
        args = parse_args(argv)
        report = run_bench(args)
    except UserError as exc:
        print(f"guestctl bench: {exc.line()}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("guestctl bench: interrupted", file=sys.stderr)
        return 130
    print(format_table(report))
    if args.json:
        write_atomic(Path(args.json), json.dumps(report, indent=2) + "\n")
        print(f"JSON: {args.json}")
    if args.svg:
        write_atomic(Path(args.svg), render_svg(report))
        print(f"SVG timeline: {args.svg}")
    images = report["images"]
    assert isinstance(images, list)
    return 0 if all(r["ready"] for image in images for r in image["runs"]) else 1
