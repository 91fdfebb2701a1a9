"""`guestctl bench` under the real QEMU: a one-run bench of the guestinit image against the busybox
floor, and one boot of the systemd baseline (built by mkosi, cached). Speed goals are not
asserted here: the bench prints them."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from boot_phases import FIRST_PHASES

from guestinit.host.bench import baselines
from guestinit.host.bench import run as bench
from guestinit.host.bench.stats import METRIC_KEYS
from guestinit.host.boot import BootOptions, boot
from guestinit.host.media import resolve_kernel

pytestmark = pytest.mark.boot


def test_tiny_bench_reports_every_phase_for_guestinit_and_the_floor(
    kata_image: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_json, out_svg = tmp_path / "bench.json", tmp_path / "bench.svg"
    argv = ["--runs", "1", "--image", f"guestinit={kata_image}", "--image", "busybox"]
    argv += ["--json", str(out_json), "--svg", str(out_svg), "--runs-dir", str(tmp_path / "runs")]
    assert bench.main(argv) == 0
    report = json.loads(out_json.read_text())
    assert json.loads((tmp_path / "runs" / "bench.json").read_text()) == report  # kept beside the logs
    assert [i["name"] for i in report["images"]] == ["guestinit", "busybox"]
    assert report["conditions"]["kernel"] == str(resolve_kernel(kata_image, None))
    for image in report["images"]:
        (run,) = image["runs"]
        assert run["ready"], run["error"]
        for key in METRIC_KEYS:
            assert run["metrics"][key] > 0, (image["name"], key)
    guestinit = report["images"][0]["runs"][0]
    names = [p["name"] for p in guestinit["phases"]]
    assert names[: len(FIRST_PHASES)] == FIRST_PHASES
    assert report["ratios"]["guestinit/busybox"]["ready_uptime_s"] > 0
    assert report["goals"][0]["name"] == "guestinit/floor"
    # no systemd in this run: the init share comes next, with the interpreter's start alone
    share = report["goals"][1]
    assert share["name"] == "guestinit init share" and 0 < share["interpreter_alone"] < share["ratio"]
    table = capsys.readouterr().out
    assert "ratio guestinit/busybox (medians)" in table and "goal guestinit/floor = " in table
    rows = ET.parse(out_svg).getroot().findall("{http://www.w3.org/2000/svg}g[@class='row']")
    assert [r.get("data-image") for r in rows] == ["guestinit", "busybox"]


def test_systemd_baseline_reports_ready_after_multi_user(kata_image: Path, tmp_path: Path) -> None:
    image = baselines.systemd_baseline()
    assert baselines.kernel_version_of(image) == baselines.kernel_version_of(kata_image)
    result = boot(
        BootOptions(
            image=image,
            kernel=resolve_kernel(kata_image, None),
            append=baselines.SYSTEMD_APPEND,
            timeout_s=180,
            run_dir=tmp_path,
        )
    )
    assert result.ready, f"{result.error}; console: {Path(result.console_log).read_text()[-2000:]}"
    assert result.notify["X_BENCH_INIT"] == "systemd"
    exec_s = float(result.notify["X_GUESTINIT_EXEC_S"])
    assert result.uptime_at_ready_s is not None and 0 < exec_s < result.uptime_at_ready_s
