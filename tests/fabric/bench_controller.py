"""Latency of fm-controller against the stand-in SDK (tests/fabric/fake: libnvfm.so.1 and
nv-fabricmanager doubles), measured where it is made and where it is felt.

50 clients spread over several processes (threads in each, a connection each) run rounds of
ListPartitions, ActivatePartition and DeactivatePartition, each client on one single-GPU
partition (7-14), so activations do real work: once back to back (the controller saturated), and
once paced (each client starting a round every --pace-ms). Server-side figures come from the
controller's own histograms (GetStatus before and after, bucket counts subtracted); client-side
ones from the clients' clocks. Baselines measured in the same run: one client alone, and the
stand-in SDK's own time per change. Prints a table, the goals (server-side p99 <= 5 ms for
ListPartitions, <= 20 ms for ActivatePartition), CPU use and the load average. Run it under the
heavy lock:

    flock /tmp/guestinit-heavy.lock .venv/bin/python tests/fabric/bench_controller.py \\
        [--clients 50] [--processes 5] [--rounds 20] [--pace-ms 1000] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import psutil
from fabric_harness import ControllerProcess, FakeFabricManager, build_fakes, percentile, stub

from guestinit.fabric import latency, nvfm, protogen

METHODS = ("ListPartitions", "ActivatePartition", "DeactivatePartition")
GOALS_MS = {"ListPartitions": 5.0, "ActivatePartition": 20.0}
SINGLE_GPU = tuple(range(7, 15))  # H100's single-GPU partitions: they overlap no other of them


def client_rounds(
    s: Any,
    pb: Any,
    pid: int,
    rounds: int,
    out: dict[str, list[float]],
    seen: Counter[str],
    pace_s: float = 0.0,
    offset_s: float = 0.0,
) -> None:
    """One client's work: rounds of List, Activate and Deactivate of partition ``pid``, back to
    back, or each round starting ``pace_s`` after the one before (from ``offset_s``)."""
    start = time.perf_counter() + offset_s
    for i in range(rounds):
        if pace_s:
            time.sleep(max(0.0, start + i * pace_s - time.perf_counter()))
        for method, request in (
            ("ListPartitions", pb.ListPartitionsRequest()),
            ("ActivatePartition", pb.PartitionRequest(id=pid)),
            ("DeactivatePartition", pb.PartitionRequest(id=pid)),
        ):
            t0 = time.perf_counter()
            reply = getattr(s, method)(request, timeout=60)
            out[method].append(time.perf_counter() - t0)
            if method != "ListPartitions":
                seen[f"{method}:{'changed' if reply.changed else 'unchanged'}"] += 1


def worker(
    address: str, first: int, threads: int, rounds: int, pace_s: float, ready: Any, go: Any, results: Any
) -> None:
    """One process: ``threads`` clients, connected before the clock starts."""
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    seen: Counter[str] = Counter()
    errors: list[str] = []
    lock = threading.Lock()
    connected = threading.Barrier(threads + 1)

    def client(n: int) -> None:
        mine: dict[str, list[float]] = {m: [] for m in METHODS}
        counts: Counter[str] = Counter()
        try:
            with stub(address) as (s, pb):
                s.ListPartitions(pb.ListPartitionsRequest(), timeout=60)  # connect
                connected.wait()
                go.wait()
                pid = SINGLE_GPU[n % len(SINGLE_GPU)]
                offset = random.Random(n).random() * pace_s  # spread the clients' starts
                client_rounds(s, pb, pid, rounds, mine, counts, pace_s, offset)
        except Exception as exc:  # counted and reported; the benchmark then fails
            errors.append(f"client {n}: {exc!r}"[:300])
            connected.abort()  # no one waits for a client that is gone
        with lock:
            for m in METHODS:
                times[m] += mine[m]
            seen.update(counts)

    pool = [threading.Thread(target=client, args=(first + i,)) for i in range(threads)]
    for t in pool:
        t.start()
    try:
        connected.wait()
    except threading.BrokenBarrierError:
        pass
    ready.wait()
    for t in pool:
        t.join()
    results.put({"times": times, "seen": dict(seen), "errors": errors})


def server_counts(address: str) -> dict[str, tuple[tuple[int, ...], float]]:
    """Per method: the controller's bucket counts and its largest time (seconds) so far."""
    with stub(address) as (s, pb):
        status = s.GetStatus(pb.Empty(), timeout=30)
    return {
        m.method: (latency.counts_from_buckets((b.le_ms / 1000, b.count) for b in m.buckets), m.max_ms / 1000)
        for m in status.latency
    }


def server_side(before: dict[str, Any], after: dict[str, Any]) -> dict[str, dict[str, float]]:
    """p50/p99 (ms) of the calls made between two GetStatus answers."""
    out = {}
    for method in METHODS:
        counts, high = after.get(method, ((), 0.0))
        old = before.get(method, ((0,) * len(counts), 0.0))[0]
        diff = [a - b for a, b in zip(counts, old, strict=True)]
        out[method] = {
            "calls": sum(diff),
            "p50_ms": latency.quantile(diff, 0.5, 0.0, high) * 1000,
            "p99_ms": latency.quantile(diff, 0.99, 0.0, high) * 1000,
        }
    return out


def client_side(times: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    return {
        m: {"calls": len(v), "p50_ms": percentile(v, 50) * 1000, "p99_ms": percentile(v, 99) * 1000}
        for m, v in times.items()
    }


def alone(address: str, rounds: int) -> dict[str, Any]:
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    seen: Counter[str] = Counter()
    before = server_counts(address)
    with stub(address) as (s, pb):
        s.ListPartitions(pb.ListPartitionsRequest(), timeout=60)
        client_rounds(s, pb, SINGLE_GPU[0], rounds, times, seen)
    return {
        "server": server_side(before, server_counts(address)),
        "client": client_side(times),
        "seen": dict(seen),
    }


def stand_in_change_ms(lib: Path, fm_address: str, pairs: int = 100) -> float:
    """The stand-in SDK's own time per change (activate or deactivate, one client, no controller):
    the floor under the controller's, since fabricmanager makes changes one at a time."""
    library = nvfm.Library(str(lib))
    library.init()
    conn = library.connect(nvfm.FMAddress.parse(fm_address))
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                conn.partitions()
                break
            except nvfm.NotConfigured:  # initializing for a moment after its start
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        t0 = time.perf_counter()
        for _ in range(pairs):
            conn.activate(SINGLE_GPU[0])
            conn.deactivate(SINGLE_GPU[0])
        return (time.perf_counter() - t0) / (2 * pairs) * 1000
    finally:
        conn.disconnect()
        library.shutdown()


def under_load(
    address: str, clients: int, processes: int, rounds: int, pace_s: float, pids: dict[str, int]
) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")  # no gRPC state crosses a fork
    ready = ctx.Barrier(processes + 1)
    go = ctx.Event()
    results = ctx.Queue()
    shares = [clients // processes + (1 if i < clients % processes else 0) for i in range(processes)]
    firsts = [sum(shares[:i]) for i in range(processes)]
    procs = [
        ctx.Process(target=worker, args=(address, firsts[i], shares[i], rounds, pace_s, ready, go, results))
        for i in range(processes)
    ]
    for p in procs:
        p.start()
    ready.wait()  # every client connected
    before = server_counts(address)
    cpu = {name: psutil.Process(pid) for name, pid in pids.items()}
    cpu_before = {name: sum(p.cpu_times()[:2]) for name, p in cpu.items()}
    psutil.cpu_percent()
    t0 = time.perf_counter()
    go.set()
    gathered = [results.get(timeout=600) for _ in procs]
    wall = time.perf_counter() - t0
    busy = psutil.cpu_percent()
    cpu_s = {name: sum(p.cpu_times()[:2]) - cpu_before[name] for name, p in cpu.items()}
    load = os.getloadavg()
    for p in procs:
        p.join(30)
    after = server_counts(address)
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    seen: Counter[str] = Counter()
    errors: list[str] = []
    for g in gathered:
        for m in METHODS:
            times[m] += g["times"][m]
        seen.update(g["seen"])
        errors += g["errors"]
    return {
        "server": server_side(before, after),
        "client": client_side(times),
        "seen": dict(seen),
        "errors": errors,
        "wall_s": wall,
        "loadavg_at_end": load,
        "cpu_busy_percent": busy,
        "cpu_s": cpu_s,
    }


def report(args: argparse.Namespace, figures: dict[str, Any]) -> str:
    loads: dict[str, dict[str, Any]] = figures["loads"]
    base = figures["alone"]
    change_ms = figures["stand_in_change_ms"]
    lines = [
        f"fm-controller latency against the stand-in SDK: {args.clients} clients in {args.processes} "
        f"processes, {args.rounds} rounds each; {os.cpu_count()} CPUs; load average before "
        + " ".join(f"{x:.2f}" for x in figures["loadavg_before"]),
        "",
        f"{'scenario':<26}{'method':<21}{'calls':>6}{'server p50':>12}{'server p99':>12}"
        f"{'client p50':>12}{'client p99':>12}  (ms)",
    ]
    for name, data in (("1 client alone", base), *loads.items()):
        for m in METHODS:
            srv, cli = data["server"][m], data["client"][m]
            lines.append(
                f"{name:<26}{m:<21}{cli['calls']:>6}{srv['p50_ms']:>12.2f}{srv['p99_ms']:>12.2f}"
                f"{cli['p50_ms']:>12.2f}{cli['p99_ms']:>12.2f}"
            )
    for name, load in loads.items():
        lines += ["", f"{name}:"]
        for m, goal in GOALS_MS.items():
            p99 = load["server"][m]["p99_ms"]
            ratio = p99 / base["server"][m]["p99_ms"] if base["server"][m]["p99_ms"] else float("nan")
            verdict = "met" if p99 <= goal else "NOT met"
            lines.append(
                f"  goal {m} server-side p99 <= {goal:g} ms: {p99:.2f} ms, {verdict} "
                f"({ratio:.1f}x the one-client p99)"
            )
        changes = sum(n for k, n in load["seen"].items() if k.endswith(":changed"))
        calls = sum(load["client"][m]["calls"] for m in METHODS)
        lines.append(
            f"  {calls} calls in {load['wall_s']:.1f} s ({calls / load['wall_s']:.0f}/s), {changes} of them "
            f"changes, taking the stand-in SDK {changes * change_ms / 1000:.2f} s at {change_ms:.2f} ms each "
            f"(one at a time); errors {len(load['errors'])}"
        )
        lines.append(
            f"  CPUs busy {load['cpu_busy_percent']:.0f}%; CPU seconds "
            + ", ".join(f"{name} {v:.1f}" for name, v in load["cpu_s"].items())
            + "; load average at the end "
            + " ".join(f"{x:.2f}" for x in load["loadavg_at_end"])
        )
        lines += [f"  {e}" for e in load["errors"][:5]]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Measure fm-controller's latency against the stand-in SDK, alone and under load."
    )
    parser.add_argument("--clients", type=int, default=50, help="concurrent clients (default: %(default)s)")
    parser.add_argument(
        "--processes", type=int, default=5, help="processes they run in (default: %(default)s)"
    )
    parser.add_argument("--rounds", type=int, default=20, help="rounds per client (default: %(default)s)")
    parser.add_argument(
        "--pace-ms",
        type=float,
        default=1000.0,
        help="the paced load: each client starts a round this often; 0 skips it (default: %(default)s)",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the figures here")
    args = parser.parse_args()
    if args.processes < 1 or args.clients < args.processes or args.pace_ms < 0:
        parser.error("--clients must be at least --processes, --processes at least 1, --pace-ms >= 0")
    protogen.ensure()
    figures: dict[str, Any] = {"loadavg_before": os.getloadavg(), "loads": {}}
    paces = [0.0] + ([args.pace_ms / 1000] if args.pace_ms else [])
    with tempfile.TemporaryDirectory(prefix="fm-bench-") as tmp:
        work = Path(tmp)
        lib, daemon = build_fakes(work / "build")
        fm = FakeFabricManager(daemon, work / "fm").start()
        ctl = ControllerProcess(lib, work / "ctl", fm.address)
        try:
            figures["stand_in_change_ms"] = stand_in_change_ms(lib, fm.address)
            ctl.start()
            assert ctl.proc is not None and fm.proc is not None
            figures["alone"] = alone(ctl.address, rounds=100)
            pids = {"controller": ctl.proc.pid, "stand-in fabricmanager": fm.proc.pid}
            for pace in paces:
                name = f"{args.clients} clients, " + (f"every {pace * 1000:g} ms" if pace else "back to back")
                figures["loads"][name] = under_load(
                    ctl.address, args.clients, args.processes, args.rounds, pace, pids
                )
        finally:
            ctl.stop()
            fm.stop()
    print(report(args, figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 1 if any(load["errors"] for load in figures["loads"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
