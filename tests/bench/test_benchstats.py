"""The bench's statistics on recorded timelines: data/recorded-bench.json is the JSON that
`guestctl bench --runs 5` wrote on the development machine (TCG, 2 cores, load average ~1)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from guestinit.host.bench import stats as benchstats
from guestinit.host.bench.report import format_table
from guestinit.host.bench.stats import Stat

RECORDED = Path(__file__).parent / "data" / "recorded-bench.json"


@pytest.fixture(scope="module")
def report() -> dict[str, object]:
    data: dict[str, object] = json.loads(RECORDED.read_text())
    return data


def _images(report: dict[str, object]) -> list[dict[str, object]]:
    images = report["images"]
    assert isinstance(images, list)
    return images


def test_recorded_runs_have_every_image_and_run(report: dict[str, object]) -> None:
    names = [i["name"] for i in _images(report)]
    assert names == ["guestinit", "busybox", "systemd"]
    for image in _images(report):
        runs = image["runs"]
        assert isinstance(runs, list)
        assert [r["run"] for r in runs] == list(range(1, report["conditions"]["runs"] + 1))  # type: ignore[index]


def test_sample_splits_each_recorded_boot_into_phases_that_add_up(report: dict[str, object]) -> None:
    for image in _images(report):
        for run in image["runs"]:  # type: ignore[attr-defined]
            s = benchstats.sample(run)
            # the definitions, from the raw stamps the guest and the host recorded
            assert s["ready_host_s"] == run["ready_host_s"]
            assert s["ready_uptime_s"] == run["uptime_at_ready_s"]
            assert s["kernel_s"] == run["exec_s"]
            assert s["firmware_s"] == pytest.approx(run["ready_host_s"] - run["uptime_at_ready_s"])
            assert s["init_s"] == pytest.approx(run["uptime_at_ready_s"] - run["exec_s"])
            phases = sum(s[k] or 0.0 for k in benchstats.PHASES)
            assert phases == pytest.approx(run["ready_host_s"])
            assert all(s[k] is not None and s[k] > 0 for k in benchstats.METRIC_KEYS)  # type: ignore[operator]


def test_summary_is_median_min_max_of_the_recorded_runs(report: dict[str, object]) -> None:
    for image in _images(report):
        runs = image["runs"]
        assert isinstance(runs, list)
        summary = benchstats.summarize([benchstats.sample(r) for r in runs])
        n = len(runs)
        assert n % 2 == 1  # an odd count: the median is the middle run
        ups = sorted(r["uptime_at_ready_s"] for r in runs)
        assert summary["ready_uptime_s"] == Stat(ups[n // 2], ups[0], ups[-1], n)
        hosts = sorted(r["ready_host_s"] for r in runs)
        assert summary["ready_host_s"] == Stat(hosts[n // 2], hosts[0], hosts[-1], n)
        # what the bench wrote is what the statistics say
        written = image["summary"]
        assert isinstance(written, dict)
        for key in benchstats.METRIC_KEYS:
            stat = summary[key]
            assert stat is not None
            assert written[key] == stat.as_dict()
        memory = summary[benchstats.MEMORY.key]
        assert written.get(benchstats.MEMORY.key) == (None if memory is None else memory.as_dict())


def test_median_of_an_even_count_is_the_mean_of_the_middle_two() -> None:
    samples = [{"init_s": v} for v in (0.4, 0.1, 0.3, 0.2)]
    stat = benchstats.summarize(samples)["init_s"]
    assert stat == Stat(pytest.approx(0.25), 0.1, 0.4, 4)  # type: ignore[arg-type]


def test_a_boot_without_ready_counts_for_nothing(report: dict[str, object]) -> None:
    runs = list(_images(report)[0]["runs"])  # type: ignore[call-overload]
    failed = dict(runs[0], ready=False, error="no READY within 120 s")
    samples = [benchstats.sample(r) for r in [failed, *runs[1:]]]
    assert all(v is None for v in samples[0].values())
    summary = benchstats.summarize(samples)
    assert summary["ready_host_s"] is not None and summary["ready_host_s"].n == len(runs) - 1


def test_a_boot_without_exec_stamp_keeps_its_ready_times() -> None:
    s = benchstats.sample({"ready": True, "ready_host_s": 5.0, "uptime_at_ready_s": 3.0, "exec_s": None})
    assert s == {
        "firmware_s": 2.0,
        "kernel_s": None,
        "init_s": None,
        "ready_uptime_s": 3.0,
        "ready_host_s": 5.0,
        "mem_used_mib": None,
    }
    assert benchstats.summarize([s])["kernel_s"] is None


def test_memory_in_use_is_total_less_available() -> None:
    boot = {"ready": True, "ready_host_s": 5.0, "uptime_at_ready_s": 3.0, "exec_s": 2.0}
    s = benchstats.sample(dict(boot, mem_total_kib=2000.0 * 1024, mem_available_kib=1950.5 * 1024))
    assert s["mem_used_mib"] == pytest.approx(49.5)
    # a value the guest did not send, or nonsense, is no measurement
    assert benchstats.sample(dict(boot, mem_total_kib=1024.0))["mem_used_mib"] is None
    assert benchstats.sample(dict(boot, mem_total_kib=10.0, mem_available_kib=20.0))["mem_used_mib"] is None
    assert (
        benchstats.sample(dict(boot, ready=False, mem_total_kib=2.0, mem_available_kib=1.0))["mem_used_mib"]
        is None
    )


def test_goals_from_the_recorded_medians(report: dict[str, object]) -> None:
    summaries = {
        str(i["name"]): benchstats.summarize([benchstats.sample(r) for r in i["runs"]])  # type: ignore[attr-defined]
        for i in _images(report)
    }
    goals = {g.name: g for g in benchstats.goals(summaries)}
    med = {name: s["ready_uptime_s"].median for name, s in summaries.items()}  # type: ignore[union-attr]
    assert goals["guestinit/floor"].ratio == pytest.approx(med["guestinit"] / med["busybox"])
    assert goals["systemd/guestinit"].ratio == pytest.approx(med["systemd"] / med["guestinit"])
    assert goals["guestinit/floor"].met == (med["guestinit"] / med["busybox"] <= 1.30)
    assert goals["systemd/guestinit"].met == (med["systemd"] / med["guestinit"] >= 4.0)
    init = summaries["guestinit"]["init_s"]
    assert init is not None
    assert goals["guestinit init share"].ratio == pytest.approx(init.median / med["guestinit"])
    assert goals["guestinit init share"].met == (init.median / med["guestinit"] <= 0.15)


def test_goal_verdicts_at_and_past_the_limits() -> None:
    def stat(m: float, init: float = 0.0) -> dict[str, Stat | None]:
        return {"ready_uptime_s": Stat(m, m, m, 1), "init_s": Stat(init, init, init, 1)}

    at_limit = benchstats.goals({"guestinit": stat(2.6, 0.39), "busybox": stat(2.0), "systemd": stat(10.4)})
    assert [(g.name, g.met) for g in at_limit] == [
        ("guestinit/floor", True),
        ("systemd/guestinit", True),
        ("guestinit init share", True),
    ]
    past = benchstats.goals({"guestinit": stat(2.62, 0.4), "busybox": stat(2.0), "systemd": stat(10.4)})
    assert [g.met for g in past] == [False, False, False]
    assert "NOT met" in past[0].text
    missing = benchstats.goals({"guestinit": {"ready_uptime_s": None}, "busybox": stat(2.0)})
    assert missing[0].met is None and "not measured" in missing[0].text


def _rounds(**uptimes: list[float]) -> dict[str, list[dict[str, float | None]]]:
    return {
        name: [{"ready_uptime_s": u, "init_s": u / 4} for u in values] for name, values in uptimes.items()
    }


def test_goal_intervals_resample_whole_rounds() -> None:
    steady = _rounds(guestinit=[2.4] * 9, busybox=[2.0] * 9)
    assert benchstats.interval(steady, ("guestinit", "ready_uptime_s"), ("busybox", "ready_uptime_s")) == (
        1.2,
        1.2,
    )
    # a slow spell that hits whole rounds (the bench interleaves) moves both images: kept apart
    # by round, the ratio hardly moves; a guestinit that is itself noisy does
    drift = [1.0, 1.5, 1.0, 1.4, 1.0, 1.6, 1.0, 1.3, 1.0]
    together = _rounds(guestinit=[2.4 * d for d in drift], busybox=[2.0 * d for d in drift])
    noisy = _rounds(guestinit=[2.4 * d for d in drift], busybox=[2.0] * 9)
    span = benchstats.interval(together, ("guestinit", "ready_uptime_s"), ("busybox", "ready_uptime_s"))
    wide = benchstats.interval(noisy, ("guestinit", "ready_uptime_s"), ("busybox", "ready_uptime_s"))
    assert span is not None and wide is not None
    assert span[0] <= 1.2 <= span[1] and wide[1] - wide[0] > span[1] - span[0]
    # the same runs give the same interval; too few rounds give none
    assert benchstats.interval(noisy, ("guestinit", "ready_uptime_s"), ("busybox", "ready_uptime_s")) == wide
    two = _rounds(guestinit=[2.4, 2.5], busybox=[2.0, 2.1])
    assert benchstats.interval(two, ("guestinit", "ready_uptime_s"), ("busybox", "ready_uptime_s")) is None
    # a draw of rounds none of which has a value: no interval rather than a made-up one
    blank: dict[str, list[dict[str, float | None]]] = {
        "guestinit": [{"ready_uptime_s": None}] * 3,
        "busybox": [{"ready_uptime_s": 2.0}] * 3,
    }
    assert benchstats.interval(blank, ("guestinit", "ready_uptime_s"), ("busybox", "ready_uptime_s")) is None


def test_a_verdict_the_noise_could_turn_says_so() -> None:
    spread = [0.9, 1.1, 1.0, 1.2, 0.8, 1.0, 1.05, 0.95, 1.0]
    rounds = _rounds(guestinit=[2.6 * d for d in spread], busybox=[2.0] * 9, systemd=[20.0] * 9)
    summaries = {name: benchstats.summarize(samples) for name, samples in rounds.items()}
    goals = {g.name: g for g in benchstats.goals(summaries, rounds)}
    near = goals["guestinit/floor"]
    assert near.ratio == pytest.approx(1.3) and near.met and near.interval is not None
    assert near.interval[0] < 1.3 < near.interval[1]
    assert near.text.startswith("guestinit/floor = 1.300 (95 % interval ") and near.text.endswith(
        "goal <= 1.3: met, within this run's noise)"
    )
    far = goals["systemd/guestinit"]
    assert far.met and far.interval is not None and far.interval[0] > 4.0
    assert "noise" not in far.text
    assert benchstats.goals(summaries)[0].interval is None  # medians alone: no interval


def test_the_init_share_says_what_the_interpreters_start_alone_gives(report: dict[str, object]) -> None:
    rounds = {
        str(i["name"]): [benchstats.sample(r) for r in i["runs"]]  # type: ignore[attr-defined]
        for i in _images(report)
    }
    runs = [r for r in _images(report)[0]["runs"]]  # type: ignore[attr-defined]
    # the interpreter's start over the uptime at the init's first line, run by run
    by_hand = sorted((r["start_s"] - r["exec_s"]) / r["start_s"] for r in runs)
    alone = benchstats.interpreter_share(rounds["guestinit"])
    assert alone == pytest.approx(by_hand[len(by_hand) // 2])
    summaries = {name: benchstats.summarize(samples) for name, samples in rounds.items()}
    share = {g.name: g for g in benchstats.goals(summaries, rounds)}["guestinit init share"]
    assert share.interpreter_alone == alone and share.ratio is not None and share.ratio > alone
    assert share.text.endswith(f"; the interpreter's start alone gives {alone:.3f})")
    # only that goal has one; an init that stamps no first line (busybox, systemd) has none
    others = [g for g in benchstats.goals(summaries, rounds) if g.name != share.name]
    assert len(others) == 2 and all(g.interpreter_alone is None for g in others)
    assert benchstats.interpreter_share(rounds["busybox"]) is None
    assert benchstats.goals(summaries)[2].interpreter_alone is None  # medians alone: no runs to take it from


def test_a_first_line_stamp_outside_exec_to_ready_is_dropped() -> None:
    boot = {"ready": True, "ready_host_s": 5.0, "uptime_at_ready_s": 3.0, "exec_s": 2.0}
    assert benchstats.sample(dict(boot, start_s=2.4))[benchstats.FIRST_LINE] == 2.4
    for bad in (1.5, 2.0, 3.5, "", None):
        assert benchstats.FIRST_LINE not in benchstats.sample(dict(boot, start_s=bad))
    assert benchstats.interpreter_share([benchstats.sample(dict(boot, start_s=2.5))]) == pytest.approx(0.2)


def test_schedule_interleaves_images_run_by_run() -> None:
    assert benchstats.schedule(["guestinit", "busybox", "systemd"], 2) == [
        (1, "guestinit"),
        (1, "busybox"),
        (1, "systemd"),
        (2, "guestinit"),
        (2, "busybox"),
        (2, "systemd"),
    ]


def test_representative_run_is_the_median_one() -> None:
    samples = [
        {"ready_uptime_s": 3.0},
        {"ready_uptime_s": 1.0},
        {"ready_uptime_s": None},
        {"ready_uptime_s": 2.0},
    ]
    assert benchstats.representative(samples) == 3
    assert benchstats.representative([{"ready_uptime_s": None}]) is None


def test_table_shows_every_image_metric_and_ratio(report: dict[str, object]) -> None:
    table = format_table(report)
    for image in _images(report):
        assert f"\n{image['name']:<15}" in table
    for metric in (*benchstats.METRICS, benchstats.MEMORY):
        assert table.count(f"  {metric.label} ") == 3
    assert "ratio guestinit/busybox (medians): " in table
    assert "ratio systemd/guestinit (medians): " in table
    assert "goal guestinit/floor = " in table and "goal systemd/guestinit = " in table


def test_floor_differences_are_median_minus_the_floors() -> None:
    mine = {"kernel_s": Stat(2.0, 1.0, 3.0, 3), "init_s": Stat(0.5, 0.4, 0.6, 3), "mem_used_mib": None}
    floor = {"kernel_s": Stat(1.5, 1.0, 3.0, 3), "init_s": None, "mem_used_mib": Stat(9.0, 9.0, 9.0, 3)}
    diffs = benchstats.floor_differences(mine, floor)
    assert diffs["kernel_s"] == pytest.approx(0.5)
    assert diffs["init_s"] is None and diffs["mem_used_mib"] is None and diffs["firmware_s"] is None


def test_init_phases_summarized_over_runs_in_boot_order() -> None:
    def run(imports_end: float, extra: list[dict[str, object]]) -> dict[str, object]:
        phases = [{"name": "mounts", "start_s": imports_end, "end_s": imports_end + 0.1}, *extra]
        return {"ready": True, "exec_s": 2.0, "start_s": 2.3, "phases": phases}

    service = {"name": "service fm-controller", "start_s": 3.0, "end_s": 3.5}
    runs = [run(2.6, []), run(2.8, [service]), run(2.7, []), {"ready": False, "phases": []}]
    summary = benchstats.summarize_phases(runs)
    assert list(summary) == ["python", "imports", "mounts", "service fm-controller"]
    assert summary["python"] == Stat(pytest.approx(0.3), pytest.approx(0.3), pytest.approx(0.3), 3)  # type: ignore[arg-type]
    assert summary["imports"].median == pytest.approx(0.4) and summary["imports"].n == 3
    assert summary["service fm-controller"] == Stat(0.5, 0.5, 0.5, 1)


def test_table_shows_each_images_difference_from_the_floor_and_the_inits_phases(
    report: dict[str, object],
) -> None:
    lines = format_table(report).splitlines()
    guestinit = _images(report)[0]
    summaries = {
        str(i["name"]): benchstats.summarize([benchstats.sample(r) for r in i["runs"]])  # type: ignore[attr-defined]
        for i in _images(report)
    }
    diff = summaries["guestinit"]["kernel_s"].median - summaries["busybox"]["kernel_s"].median  # type: ignore[union-attr]
    kernel_lines = [line for line in lines if "kernel start to init exec" in line]
    assert kernel_lines[0].endswith(f"{diff:+.3f}")  # guestinit's, first
    assert kernel_lines[1].split()[-1] == str(report["conditions"]["runs"])  # type: ignore[index]  # the floor: no difference
    phase_lines = [line.split() for line in lines if "init: " in line]
    names = [p[1] for p in phase_lines[: len(guestinit["runs"][0]["phases"]) + 2]]  # type: ignore[index]
    assert names[:4] == ["python", "imports", "mounts", "cmdline"]
    assert all(p[-1].endswith("%") for p in phase_lines)


def test_the_table_says_how_tcg_ran(report: dict[str, object]) -> None:
    cond = report["conditions"]
    assert isinstance(cond, dict)
    assert ", accel tcg, " in format_table(report)  # a report from before the choice: as it was
    cond.update(accel="tcg", tcg_threads="single")
    assert ", accel tcg single-threaded, " in format_table(report).splitlines()[0]
    cond.update(accel="kvm", tcg_threads="")
    assert ", accel kvm, " in format_table(report).splitlines()[0]
