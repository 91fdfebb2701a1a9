"""``guestctl bench``: boot each image N times, interleaved, with one kernel, one QEMU setup and one
accelerator; report median/min/max of each boot phase and of the init's own phases, each
image's difference from the busybox floor, the ratios between images, the guest's memory in
use at READY, a table, JSON (every run kept) and an SVG timeline.

Images (guestinit.host.bench.images): ``guestinit``, ``guestinit-erofs``, ``guestinit-gpu``,
``servicevm``, ``busybox`` (the floor), ``systemd``, or any ``NAME=PATH`` whose init reports
READY the same way. Phase definitions: stats. ``--imports`` adds one boot of each guestinit
initrd with ``-X importtime`` (importtime) and prints the boot path's imports.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
from pathlib import Path

from guestinit.atomicfile import write_atomic
from guestinit.host.bench import baselines, stats
from guestinit.host.bench import images as bench_images
from guestinit.host.bench.images import BenchImage
from guestinit.host.bench.report import format_table, render_svg
from guestinit.host.boot import BootOptions, boot, choose_accel, choose_transport
from guestinit.host.errors import UserError
from guestinit.host.qemu import DEFAULT_VSOCK_PORT, accel_threads, add_accel_options, find_qemu, qemu_version
from guestinit.host.result import BootResult

# What of a boot's notify fields the bench keeps, under the names its JSON uses.
KEPT_FIELDS = {
    "X_GUESTINIT_START_S": "start_s",  # guestinit's first Python line: splits exec to READY
    "X_GUESTINIT_MEM_TOTAL_KIB": "mem_total_kib",
    "X_GUESTINIT_MEM_AVAILABLE_KIB": "mem_available_kib",
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="guestctl bench",
        description="Boot images N times each (interleaved) under one kernel and QEMU setup; "
        "print median/min/max per boot phase, each image's difference from the busybox floor, "
        "and the ratios guestinit/floor, systemd/guestinit.",
    )
    p.add_argument("--runs", type=int, default=3, help="boots per image (default 3)")
    p.add_argument(
        "--image",
        action="append",
        metavar="NAME[=PATH]",
        help="guestinit, guestinit-erofs, guestinit-gpu, servicevm, busybox, systemd, or NAME=PATH "
        "of an initrd or disk image reporting READY (repeatable; default: guestinit, busybox, systemd)",
    )
    p.add_argument(
        "--kernel",
        help="kernel for every image (default: a disk image's own kernel when one is benched, "
        "else the one beside the guestinit image)",
    )
    add_accel_options(
        p,
        tcg_threads_default="multi",
        why="vCPUs in parallel, as under KVM, for boots that end at READY; a kernel that dies "
        "before init is booted again and the run says so",
    )
    p.add_argument("--memory", type=int, default=2048, help="guest memory in MiB (default 2048)")
    p.add_argument("--cpus", type=int, default=2, help="guest vCPUs (default 2)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for each READY")
    p.add_argument(
        "--imports",
        action="store_true",
        help="also boot each guestinit initrd once with python3 -X importtime and print its imports",
    )
    p.add_argument("--json", metavar="FILE", help="write every run and the statistics as JSON")
    p.add_argument("--svg", metavar="FILE", help="write the timeline picture")
    p.add_argument(
        "--runs-dir",
        metavar="DIR",
        help="console logs and the whole report, bench.json (default build/bench/<time>)",
    )
    args = p.parse_args(argv)
    if not 1 <= args.runs <= 100:
        raise UserError(f"--runs {args.runs} is out of range", hint="use 1 to 100")
    if args.timeout <= 0:
        raise UserError(f"--timeout {args.timeout:g} must be positive", hint="e.g. --timeout 120")
    return args


def _kernel_version(kernel: Path) -> str:
    kver = kernel.with_name(kernel.name.removesuffix(".vmlinuz") + ".kver")
    return kver.read_text().strip() if kver.is_file() else ""


def _record(result: BootResult) -> dict[str, object]:
    d = result.as_dict()
    keep = ("ready", "error", "wall_s", "ready_host_s", "uptime_at_ready_s", "exec_s", "status", "phases")
    out = {k: d[k] for k in keep}
    for field, key in KEPT_FIELDS.items():
        value = result.notify.get(field)
        try:
            out[key] = float(value) if value else None
        except ValueError:
            out[key] = None
    out["console_log"] = result.console_log
    if result.retried:  # a kernel that died before init: this run is the boot after it
        out["retried"] = result.retried
    return out


def _warn_kernel_mismatch(images: list[BenchImage], kver: str) -> None:
    for image in images:
        image_kver = baselines.kernel_version_of(image.path)
        if kver and image_kver and image_kver != kver:
            print(
                f"guestctl bench: warning: {image.name}'s modules are for {image_kver}, the kernel is {kver}",
                file=sys.stderr,
            )


def _append(transport: str) -> str:
    """What every image's command line gets beyond guestctl boot's own (identical for all)."""
    append = baselines.SYSTEMD_APPEND
    if transport == "vsock":  # systemd reports READY itself over vsock (references §3)
        append += f" systemd.set_credential=vmm.notify_socket:vsock-stream:2:{DEFAULT_VSOCK_PORT}"
    return append


def _boot_options(
    args: argparse.Namespace, accel: str, transport: str, image: BenchImage, kernel: Path, run_dir: Path
) -> BootOptions:
    return BootOptions(
        image=image.path,
        kernel=kernel,
        append=_append(transport),
        accel=accel,
        transport=transport,
        tcg_threads=args.tcg_threads,
        timeout_s=args.timeout,
        memory_mb=args.memory,
        cpus=args.cpus,
        run_dir=run_dir,
    )


def run_bench(args: argparse.Namespace) -> dict[str, object]:
    images = bench_images.resolve(bench_images.parse_specs(args.image))
    kernel, kernel_why = bench_images.choose_kernel(images, Path(args.kernel) if args.kernel else None)
    kver = _kernel_version(kernel)
    _warn_kernel_mismatch(images, kver)
    binary = find_qemu()
    accel, accel_why = choose_accel(args.accel, kernel)  # probed once, the same for every boot
    threads, note = accel_threads(accel, args.tcg_threads, args.cpus)  # as boot() does for each boot
    accel_why += note
    transport = choose_transport(args.transport)
    started = datetime.datetime.now(datetime.UTC)
    runs_dir = Path(args.runs_dir or Path("build/bench") / started.strftime("%Y%m%d-%H%M%S"))
    load_before = os.getloadavg()
    records: dict[str, list[dict[str, object]]] = {image.name: [] for image in images}
    by_name = {image.name: image for image in images}
    order = stats.schedule([image.name for image in images], args.runs)
    for run, name in order:
        opts = _boot_options(args, accel, transport, by_name[name], kernel, runs_dir / f"{name}-{run}")
        record = _record(boot(opts))
        record["run"] = run
        records[name].append(record)
        print(f"  run {run}/{args.runs} {name:<15} {_progress(record)}", file=sys.stderr, flush=True)
    load_after = os.getloadavg()
    imports = _imports(args, accel, transport, images, kernel, runs_dir) if args.imports else {}
    out_images = []
    summaries: dict[str, dict[str, stats.Stat | None]] = {}
    rounds: dict[str, list[dict[str, float | None]]] = {}
    for image in images:
        samples = rounds[image.name] = [stats.sample(r) for r in records[image.name]]
        for r, s in zip(records[image.name], samples, strict=True):
            r["metrics"] = {k: None if v is None else round(v, 4) for k, v in s.items()}
            r["init_phases"] = {k: round(v, 4) for k, v in stats.phase_durations(r).items()}
        summaries[image.name] = stats.summarize(samples)
        rep = stats.representative(samples)
        out_images.append(
            {
                "name": image.name,
                "caption": image.caption,
                "form": image.form,
                "initrd": os.fspath(image.path),
                "initrd_bytes": image.path.stat().st_size,
                "summary": {
                    k: (None if v is None else v.as_dict()) for k, v in summaries[image.name].items()
                },
                "init_phase_summary": {
                    k: v.as_dict() for k, v in stats.summarize_phases(records[image.name]).items()
                },
                "representative_run": None if rep is None else records[image.name][rep]["run"],
                "runs": records[image.name],
            }
        )
    floor = summaries.get(stats.FLOOR)
    for image_out in out_images:
        name = str(image_out["name"])
        image_out["vs_floor"] = (
            None
            if floor is None or name == stats.FLOOR
            else {k: _round(v) for k, v in stats.floor_differences(summaries[name], floor).items()}
        )
    goals = stats.goals(summaries, rounds)
    return {
        "version": 2,
        "conditions": {
            "started": started.isoformat(timespec="seconds"),
            "runs": args.runs,
            "order": "interleaved: " + ", ".join(f"{n}#{r}" for r, n in order[: len(images) + 1]) + ", ...",
            "kernel": os.fspath(kernel),
            "kernel_why": kernel_why,
            "kernel_version": kver,
            "qemu": f"{binary} {qemu_version(binary)}",
            "accel": accel,
            "accel_why": accel_why,
            "tcg_threads": threads,
            "transport": transport,
            "machine": "q35",
            "cpus": args.cpus,
            "memory_mb": args.memory,
            "append_extra": _append(transport),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in load_after],
            "runs_dir": os.fspath(runs_dir),
        },
        "definitions": {m.key: m.label for m in (*stats.METRICS, stats.MEMORY)},
        "images": out_images,
        "ratios": _ratios(summaries),
        "goals": [
            {
                "name": g.name,
                "ratio": _round(g.ratio),
                "interval": None if g.interval is None else [_round(v) for v in g.interval],
                "interpreter_alone": _round(g.interpreter_alone),  # the init share's; else None
                "limit": g.limit,
                "met": g.met,
            }
            for g in goals
        ],
        "goal_text": [g.text for g in goals],
        "imports": imports,
    }


def _ratios(summaries: dict[str, dict[str, stats.Stat | None]]) -> dict[str, dict[str, float | None]]:
    """Each image's medians over the floor's, and systemd's over guestinit's."""
    pairs = [(name, stats.FLOOR) for name in summaries if name != stats.FLOOR]
    pairs.append(("systemd", "guestinit"))
    out = {}
    for num, den in pairs:
        if num in summaries and den in summaries:
            out[f"{num}/{den}"] = {
                m.key: _round(stats.ratio(summaries[num][m.key], summaries[den][m.key]))
                for m in stats.METRICS
                if m.key in ("ready_uptime_s", "ready_host_s", "init_s", "kernel_s")
            }
    return out


def _imports(
    args: argparse.Namespace,
    accel: str,
    transport: str,
    images: list[BenchImage],
    kernel: Path,
    runs_dir: Path,
) -> dict[str, object]:
    """One boot of each guestinit initrd with ``-X importtime``: its imports, as parsed."""
    from guestinit.host.bench import importtime

    out: dict[str, object] = {}
    for image in images:
        if image.form != "initrd" or not image.name.startswith(("guestinit", "servicevm")):
            continue
        run_dir = runs_dir / f"{image.name}-importtime"
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="guestinit-importtime-") as tmp:
            try:
                extra = importtime.overlay(image.path, Path(tmp) / "importtime.cpio")
            except UserError as exc:  # an /init of another shape (a link to init.py): say so, go on
                print(f"{image.name}: imports not measured: {exc}", file=sys.stderr, flush=True)
                out[image.name] = {"ready": None, "skipped": str(exc)}
                continue
            opts = _boot_options(args, accel, transport, image, kernel, run_dir)
            opts.extra_initrd = [extra]
            result = boot(opts)
        found = importtime.parse(Path(result.console_log).read_text(errors="replace"))
        out[image.name] = {
            "ready": result.ready,
            "modules": len(found),
            "total_ms": round(importtime.total_us(found) / 1000, 1),
            "heavy": importtime.heavy(found),
            "imports": [[i.name, i.self_us, i.cumulative_us, i.depth] for i in found],
            "console_log": result.console_log,
        }
        print(f"{image.name}: {importtime.report(found)}", file=sys.stderr, flush=True)
    return out


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _progress(record: dict[str, object]) -> str:
    if not record["ready"]:
        return f"FAILED: {record['error']} (console {record['console_log']})"
    up, host = record["uptime_at_ready_s"], record["ready_host_s"]
    again = record.get("retried")
    after = f" (booted again after: {'; '.join(map(str, again))})" if isinstance(again, list) else ""
    return f"READY at guest {up} s, host {host} s{after}"


def check_output(option: str, value: str | None) -> None:
    """Refuse an output path the bench could not write, before any boot rather than after them."""
    if not value:
        return
    path = Path(value)
    if path.is_dir():
        raise UserError(f"{option} {value}: is a folder", hint="give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(
            f"{option} {value}: cannot make its folder: {exc.strerror}", hint="give a writable path"
        ) from None
    if not os.access(path.parent, os.W_OK):
        raise UserError(f"{option} {value}: its folder is not writable", hint="give a writable path")


def write_outputs(args: argparse.Namespace, report: dict[str, object]) -> tuple[list[str], list[str]]:
    """The JSON into the runs folder (always: a bench is minutes of boots) and where --json and
    --svg say. Returns what was written, as lines to print, and a line for each that failed."""
    written: list[str] = []
    failed: list[str] = []
    text = json.dumps(report, indent=2) + "\n"
    conditions = report["conditions"]
    assert isinstance(conditions, dict)
    kept = Path(str(conditions["runs_dir"])) / "bench.json"
    outputs = [(kept, text, "")]
    if args.json:
        outputs.append((Path(args.json), text, "JSON"))
    if args.svg:
        outputs.append((Path(args.svg), render_svg(report), "SVG timeline"))
    for path, content, label in outputs:
        try:
            write_atomic(path, content)
        except OSError as exc:
            failed.append(f"guestctl bench: {path}: not written ({exc.strerror}); the runs are in {kept}")
        else:
            if label:
                written.append(f"{label}: {path}")
    return written, failed


def main(argv: list[str]) -> int:
    try:
        args = parse_args(argv)
        check_output("--json", args.json)
        check_output("--svg", args.svg)
        report = run_bench(args)
    except UserError as exc:
        print(f"guestctl bench: {exc.line()}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("guestctl bench: interrupted", file=sys.stderr)
        return 130
    print(format_table(report))
    written, failed = write_outputs(args, report)
    for line in written:
        print(line)
    for line in failed:
        print(line, file=sys.stderr)
    if failed:
        return 1
    images = report["images"]
    assert isinstance(images, list)
    return 0 if all(r["ready"] for image in images for r in image["runs"]) else 1
