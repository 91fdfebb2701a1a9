"""The SVG timeline rendered from a recorded bench: valid SVG, one row per image, one bar per phase
at the right place and length on the time axis, text escaped."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from guestinit.host.bench import plot as benchplot
from guestinit.host.bench.report import render_svg, stats_from_json
from guestinit.host.bench.stats import PHASES, Stat

RECORDED = Path(__file__).parent / "data" / "recorded-bench.json"
NS = {"svg": "http://www.w3.org/2000/svg"}


@pytest.fixture(scope="module")
def report() -> dict[str, object]:
    data: dict[str, object] = json.loads(RECORDED.read_text())
    return data


def _seconds_per_px(root: ET.Element) -> tuple[float, float]:
    """(x of 0 s, px per second) read back from the axis labels."""
    ticks = [
        (float(t.get("x", "0")), float(t.text.removesuffix("s")))
        for t in root.iterfind("svg:g[@class='axis']/svg:text", NS)
        if t.text
    ]
    (x0, s0), (x1, s1) = ticks[0], ticks[-1]
    assert s0 == 0
    return x0, (x1 - x0) / (s1 - s0)


def test_svg_has_one_row_per_image_with_a_bar_per_phase(report: dict[str, object]) -> None:
    root = ET.fromstring(render_svg(report))
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    x0, scale = _seconds_per_px(root)
    rows = root.findall("svg:g[@class='row']", NS)
    images = report["images"]
    assert isinstance(images, list)
    assert [r.get("data-image") for r in rows] == [i["name"] for i in images]
    for row, image in zip(rows, images, strict=True):
        stats = stats_from_json(image)
        bars = row.findall("svg:rect[@class='bar']", NS)
        main = [b for b in bars if float(b.get("height", "0")) == benchplot.ROW_H]
        assert len(main) == len(PHASES)
        start = 0.0
        for bar, key in zip(main, PHASES, strict=True):
            stat = stats[key]
            assert stat is not None
            assert float(bar.get("x", "0")) == pytest.approx(x0 + start * scale, abs=0.11)
            assert float(bar.get("width", "0")) == pytest.approx(stat.median * scale, abs=0.11)
            title = bar.find("svg:title", NS)
            assert title is not None and f"median {stat.median:.3f} s" in (title.text or "")
            start += stat.median
        ready = row.find("svg:line[@class='ready']", NS)
        host = stats["ready_host_s"]
        assert ready is not None and host is not None
        assert float(ready.get("x1", "0")) == pytest.approx(x0 + host.median * scale, abs=0.11)
        spread = row.find("svg:line[@class='spread']", NS)
        assert spread is not None
        assert float(spread.get("x1", "0")) == pytest.approx(x0 + host.min * scale, abs=0.11)
        assert float(spread.get("x2", "0")) == pytest.approx(x0 + host.max * scale, abs=0.11)


def test_guestinit_row_shows_its_own_phases(report: dict[str, object]) -> None:
    root = ET.fromstring(render_svg(report))
    row = root.find("svg:g[@data-image='guestinit']", NS)
    assert row is not None
    subs = [
        b for b in row.findall("svg:rect[@class='bar']", NS) if float(b.get("height", "0")) == benchplot.SUB_H
    ]
    matches = [re.search(r"phase (\S+):", b.findtext("svg:title", "", NS) or "") for b in subs]
    names = [m.group(1) for m in matches if m]
    images = report["images"]
    assert isinstance(images, list)
    rep = next(r for r in images[0]["runs"] if r["run"] == images[0]["representative_run"])
    if rep.get("start_s"):  # interpreter start and imports lead, from the init's start stamp
        assert names[:2] == ["python", "imports"]
        names = names[2:]
    assert names == [p["name"] for p in rep["phases"]]
    assert names[:3] == ["mounts", "cmdline", "modules"]


def test_init_phases_split_exec_to_ready() -> None:
    from guestinit.host.bench.stats import init_phases

    run = {"exec_s": 2.0, "start_s": 2.4, "phases": [{"name": "mounts", "start_s": 2.9, "end_s": 3.0}]}
    assert [(p["name"], p["start_s"], p["end_s"]) for p in init_phases(run)] == [
        ("python", 2.0, 2.4),
        ("imports", 2.4, 2.9),
        ("mounts", 2.9, 3.0),
    ]
    assert init_phases({"exec_s": 2.0, "start_s": None, "phases": []}) == []


def test_text_is_escaped() -> None:
    stat = Stat(1.0, 0.9, 1.1, 3)
    rows = [{"name": "a<b>&c", "caption": '"quoted"', "summary": dict.fromkeys(PHASES, stat), "phases": []}]
    svg = benchplot.render(benchplot.layout(rows, "t <&>", "s"))
    root = ET.fromstring(svg)
    texts = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert "a<b>&c" in texts and "t <&>" in texts


def test_ticks_cover_the_longest_row() -> None:
    stat = {k: Stat(v, v, v, 1) for k, v in zip(PHASES, (2.0, 9.0, 3.5), strict=True)}
    lay = benchplot.layout([{"name": "x", "caption": "", "summary": stat, "phases": []}], "t", "s")
    assert float(lay.ticks[-1].label.removesuffix("s")) >= 14.5
    assert len(lay.ticks) <= 17


def test_each_row_but_the_floors_says_its_difference_from_the_floor(report: dict[str, object]) -> None:
    root = ET.fromstring(render_svg(report))
    deltas = {
        r.get("data-image"): r.findtext("svg:text[@class='delta']", None, NS)
        for r in root.findall("svg:g[@class='row']", NS)
    }
    assert deltas["busybox"] is None
    images = report["images"]
    assert isinstance(images, list)
    guestinit, floor = stats_from_json(images[0]), stats_from_json(images[1])
    kernel = guestinit["kernel_s"].median - floor["kernel_s"].median  # type: ignore[union-attr]
    text = deltas["guestinit"]
    assert text is not None and text.startswith("vs floor: ") and f"kernel {kernel:+.2f} s" in text


def test_each_goal_has_a_subtitle_line_above_the_rows(report: dict[str, object]) -> None:
    """Goal texts carry an interval now: one line each, and the rows move down to make room."""
    goals = [f"goal {n} = 1.000 (95 % interval 0.900-1.100; goal <= 1.3: met)" for n in "abc"]
    root = ET.fromstring(render_svg(dict(report, goal_text=goals)))
    lines = [t for t in root.findall("svg:text", NS) if t.get("fill") == "#555"]
    assert [t.text for t in lines[1:]] == goals
    last_line_y = max(float(t.get("y", "0")) for t in lines)
    grid = root.find("svg:g[@class='grid']/svg:line", NS)
    assert grid is not None and float(grid.get("y1", "0")) > last_line_y
    first_row = root.find("svg:g[@class='row']/svg:rect[@class='bar']", NS)
    assert first_row is not None and float(first_row.get("y", "0")) > last_line_y
