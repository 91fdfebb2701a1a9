"""Server-side latency: the fixed-bucket histogram and its quantiles (guestinit.fabric.latency),
the interceptor's method names, and GetStatus / fmctl status showing them. No assertion here
depends on how long anything took: values are recorded by hand, or only counted."""

from __future__ import annotations

import io
import itertools
import json
import math
import random
import threading

import pytest
from fabric_harness import ControllerProcess, stub

from guestinit.fabric import fmctl, latency
from guestinit.fabric.interceptor import method_name
from guestinit.fabric.latency import BOUNDS_S, GROWTH, Histogram, Latencies


def test_buckets_grow_by_a_fixed_factor_and_bounds_are_inclusive() -> None:
    assert BOUNDS_S[0] == pytest.approx(10e-6) and BOUNDS_S[-1] > 60
    assert all(b / a == pytest.approx(GROWTH) for a, b in itertools.pairwise(BOUNDS_S))
    assert latency.bucket_of(0.0) == 0
    assert latency.bucket_of(BOUNDS_S[3]) == 3
    assert latency.bucket_of(BOUNDS_S[3] * 1.0001) == 4
    assert latency.bucket_of(1e6) == len(BOUNDS_S)  # the overflow bucket


def test_quantiles_of_known_values_are_within_a_bucket() -> None:
    values = [(i + 1) / 1000 for i in range(1000)]  # 1 ms .. 1 s, evenly
    random.Random(4).shuffle(values)
    h = Histogram()
    for v in values:
        h.record(v)
    s = h.summary()
    assert (s.count, s.errors, s.min_s, s.max_s) == (1000, 0, 0.001, 1.0)
    assert s.mean_s == pytest.approx(0.5005)
    for q, exact in ((0.5, 0.5), (0.9, 0.9), (0.99, 0.99)):
        assert abs(s.quantile(q) - exact) <= exact * (GROWTH - 1)
    assert s.quantile(0.0) == 0.001 and s.quantile(1.0) == 1.0
    qs = [s.quantile(q / 100) for q in range(101)]
    assert qs == sorted(qs)


def test_one_value_many_times_is_that_value() -> None:
    h = Histogram()
    for _ in range(50):
        h.record(0.0042)
    assert h.summary().quantile(0.5) == h.summary().quantile(0.99) == 0.0042


def test_a_slow_tail_shows_in_p99_not_in_p50() -> None:
    h = Histogram()
    for _ in range(980):
        h.record(0.001)
    for _ in range(20):
        h.record(0.2, ok=False)
    s = h.summary()
    assert s.quantile(0.5) < 0.0012 and s.quantile(0.99) > 0.15 and s.errors == 20
    assert s.buckets() == [(BOUNDS_S[latency.bucket_of(0.001)], 980), (BOUNDS_S[latency.bucket_of(0.2)], 20)]


def test_empty_and_overflow() -> None:
    assert Histogram().summary().quantile(0.99) == 0.0
    h = Histogram()
    h.record(500.0)
    assert h.summary().quantile(0.5) == 500.0
    assert h.summary().buckets() == [(math.inf, 1)]


def test_buckets_travel_and_come_back() -> None:
    h = Histogram()
    for v in (0.00002, 0.0003, 0.0003, 0.05, 7.0, 1000.0):
        h.record(v)
    s = h.summary()
    assert latency.counts_from_buckets(s.buckets()) == s.counts
    assert latency.counts_from_buckets([(b * 1000 / 1000, n) for b, n in s.buckets()]) == s.counts


def test_memory_is_fixed_and_recording_is_thread_safe() -> None:
    lat = Latencies()
    h = lat.histogram("ListPartitions")
    assert lat.histogram("ListPartitions") is h

    def work(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(2000):
            h.record(rng.random() / 10)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    s = lat.summaries()["ListPartitions"]
    assert s.count == 16000 and len(s.counts) == len(BOUNDS_S) + 1
    assert "unused" not in lat.summaries() and lat.histogram("unused") is not None
    assert "unused" not in lat.summaries()  # methods without calls are left out


def test_method_names() -> None:
    assert method_name("/guestinit.fabric.v1.FabricController/ListPartitions") == "ListPartitions"
    assert method_name("/grpc.health.v1.Health/Check") == "grpc.health.v1.Health/Check"


def test_get_status_and_fmctl_show_the_servers_latency(controller: ControllerProcess) -> None:
    with stub(controller.address) as (s, pb):
        for _ in range(5):
            s.ListPartitions(pb.ListPartitionsRequest(), timeout=5)
        s.ActivatePartition(pb.PartitionRequest(id=3), timeout=5)
        with pytest.raises(Exception, match="names no partition id"):
            s.ActivatePartition(pb.PartitionRequest(), timeout=5)
        stream = s.Watch(pb.WatchRequest(), timeout=5)
        next(stream)
        stream.cancel()
        status = s.GetStatus(pb.Empty(), timeout=5)
    by_method = {m.method: m for m in status.latency}
    assert "Watch" not in by_method  # streams are not timed
    assert by_method["ListPartitions"].count == 5 and by_method["ListPartitions"].errors == 0
    activate = by_method["ActivatePartition"]
    assert (activate.count, activate.errors) == (2, 1)
    assert sum(b.count for b in activate.buckets) == 2
    for m in by_method.values():
        assert 0 < m.p50_ms <= m.p90_ms <= m.p99_ms <= m.max_ms

    out = io.StringIO()
    assert fmctl.main(["--address", controller.address, "status"], out, io.StringIO()) == 0
    lines = out.getvalue().splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("METHOD (server side)"))
    assert lines[head].split() == [
        "METHOD",
        "(server",
        "side)",
        "CALLS",
        "ERRORS",
        "P50",
        "ms",
        "P99",
        "ms",
        "MAX",
        "ms",
    ]
    rows = {line.split()[0]: line.split()[1:3] for line in lines[head + 2 :]}
    assert rows["ListPartitions"] == ["5", "0"] and rows["ActivatePartition"] == ["2", "1"]

    out = io.StringIO()
    assert fmctl.main(["--address", controller.address, "--json", "status"], out, io.StringIO()) == 0
    data = json.loads(out.getvalue())["latency"]
    assert data["ActivatePartition"]["count"] == 2 and data["ActivatePartition"]["errors"] == 1
    assert data["GetStatus"]["count"] >= 1  # the text status call before this one
    assert sum(n for _, n in data["ListPartitions"]["buckets"]) == 5
