"""Latency of fm-controller against the fake fabricmanager: one client alone, then 50 concurrent
clients (each ListPartitions + activate/deactivate of overlapping partitions). Prints JSON.

    .venv/bin/python tests/fabric/bench_controller.py [--clients 50] [--rounds 20]

Numbers from a 2-core machine include the clients' own CPU time (they share the machine).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fabric_harness import (
    ControllerProcess,
    FakeFabricManager,
    build_fakes,
    concurrent_workload,
    percentile,
    stub,
)

from guestinit.fabric import protogen


def alone(address: str, calls: int = 200) -> dict[str, float]:
    out: dict[str, float] = {}
    with stub(address) as (s, pb):
        s.ListPartitions(pb.ListPartitionsRequest(), timeout=10)
        for name, fn in (
            ("ListPartitions", lambda i: s.ListPartitions(pb.ListPartitionsRequest(), timeout=10)),
            (
                "ActivatePartition",
                lambda i: s.ActivatePartition(pb.PartitionRequest(id=7 + i % 8), timeout=10),
            ),
        ):
            times = []
            for i in range(calls):
                t0 = time.perf_counter()
                fn(i)
                times.append(time.perf_counter() - t0)
            out[f"{name}_p50_ms"] = round(percentile(times, 50) * 1000, 3)
            out[f"{name}_p99_ms"] = round(percentile(times, 99) * 1000, 3)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    protogen.ensure()
    work = Path(tempfile.mkdtemp(prefix="fm-bench-"))
    lib, daemon = build_fakes(work / "build")
    fm = FakeFabricManager(daemon, work / "fm").start()
    ctl = ControllerProcess(lib, work / "ctl", fm.address).start()
    try:
        single = alone(ctl.address)
        with stub(ctl.address) as (s, pb):
            for pid in range(15):
                s.DeactivatePartition(pb.PartitionRequest(id=pid), timeout=10)
        many = concurrent_workload(ctl.address, args.clients, args.rounds)
    finally:
        ctl.stop()
        fm.stop()
    print(json.dumps({"one_client": single, "concurrent": many}, indent=2))
    return 1 if many["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
