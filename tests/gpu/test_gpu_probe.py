"""``guestinit probe`` against the real H200 capture, read-only."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from conftest import CAPTURE_ROOT, Tree

from guestinit.init import cli
from guestinit.init.gpu import probe
from guestinit.init.root import Root


def test_probe_json_reports_the_h200_bar(capsys: pytest.CaptureFixture[str]) -> None:
    assert probe.main(["--root", str(CAPTURE_ROOT), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["mode"]["mode"] == "gpu"
    assert report["mode"]["counts"] == {"nvswitch": 0, "gpu": 1, "sw_mng": 0}
    assert len(report["gpus"]) == 1
    gpu = report["gpus"][0]
    assert (gpu["address"], gpu["vendor"], gpu["device"]) == ("0000:00:06.0", "0x10de", "0x2335")
    assert gpu["driver"] == "nvidia"
    assert gpu["link"]["current_speed"] == "32.0 GT/s PCIe" and gpu["link"]["current_width"] == 16
    big = [b for b in gpu["bars"] if b["size"] == 256 << 30]
    assert len(big) == 1
    bar = big[0]
    assert bar["address"] == "0x100000000000" and bar["is_64bit"] and bar["prefetchable"]
    assert bar["largest_page"] == "1G"
    assert bar["entries"] == {"4K": 67_108_864, "2M": 131_072, "1G": 256}
    assert report["nvswitches"] == [] and report["sw_mng"] == [] and report["bridges"] == []
    assert len(report["other_devices"]) == 6
    assert report["bar_warnings"] == []
    assert report["hugepages"]["thp"] == {"enabled": "madvise", "defrag": "madvise"}
    assert report["driver"]["version"] == "580.159.04" and report["driver"]["params"]["NvLinkDisable"] == "1"
    assert "nvidia_smi" not in report  # a tree's GPUs are not this machine's: nvidia-smi is not asked


def test_probe_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert probe.main(["--root", str(CAPTURE_ROOT)]) == 0
    text = capsys.readouterr().out
    assert "mode gpu (detected: 0 NVSwitch, 1 GPU, 0 SW_MNG)" in text
    assert "0000:00:06.0  10de:2335  class 0x030200" in text
    lines = [line.split() for line in text.splitlines()]
    row = "2 256 GiB 0x100000000000 64-bit pref 1G 67,108,864 131,072 256"
    assert row.split() in lines
    assert "NVIDIA driver 580.159.04 (open)" in text
    assert "NvLinkDisable=1" in text and "DeviceFileMode=438 (0666)" in text


def test_probe_through_the_guestinit_tool(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.tool(["probe", "--root", str(CAPTURE_ROOT), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["gpus"][0]["address"] == "0000:00:06.0"


def _digest(top: Path) -> str:
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in sorted(os.walk(top)):
        dirnames.sort()
        for name in sorted(filenames + dirnames):
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            h.update(f"{p} {st.st_mode} {st.st_size} {st.st_mtime_ns}".encode())
            if os.path.isfile(p) and not os.path.islink(p):
                with open(p, "rb") as f:
                    h.update(f.read())
    return h.hexdigest()


def test_probe_is_read_only(capture_tree: Tree, capsys: pytest.CaptureFixture[str]) -> None:
    capture_tree.sw_mng("0000:00:1c.0")
    capture_tree.gpu("0000:00:07.0", extra={"resource2_resize": "00000000000c0000\n"})
    before = _digest(capture_tree.root)
    assert probe.main(["--root", str(capture_tree.root), "--json"]) == 0
    assert probe.main(["--root", str(capture_tree.root)]) == 0
    assert _digest(capture_tree.root) == before
    text = capsys.readouterr().out
    assert "resizable to 256 GiB, 512 GiB" in text
    assert "mode unknown (unexpected topology: 0 NVSwitch, 2 GPU, 1 SW_MNG); running as gpu" in text


def test_bad_root_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert probe.main(["--root", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a directory" in err


def test_empty_tree_is_cpu_mode(tmp_path: Path) -> None:
    report = probe.collect(Root(tmp_path))
    assert report["status"] == "mode cpu (detected: 0 NVSwitch, 0 GPU, 0 SW_MNG)"
    assert report["driver"] is None
    assert "NVIDIA driver: not loaded" in probe.render_text(report)


def test_nvidia_smi_query(fp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    # nvidia-smi cannot run here; the fake answers as the capture's nvidia-smi-csv.txt did.
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\nexit 99\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    cmd = [str(fake), f"--query-gpu={','.join(probe.SMI_FIELDS)}", "--format=csv,noheader,nounits"]
    fp.register(cmd, stdout="NVIDIA H200, 00000000:00:06.0, 143771, 580.159.04, Enabled\n")
    got = probe.smi_query()
    assert got == {
        "gpus": [
            {
                "name": "NVIDIA H200",
                "pci.bus_id": "00000000:00:06.0",
                "memory.total": "143771",
                "driver_version": "580.159.04",
                "persistence_mode": "Enabled",
            }
        ]
    }
    failed = "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."
    fp.register(cmd, returncode=9, stderr=failed + "\n")
    assert probe.smi_query() == {"error": f"nvidia-smi: {failed}"}
    report = probe.collect(Root(CAPTURE_ROOT))
    report["nvidia_smi"] = got
    assert "nvidia-smi: name NVIDIA H200, pci.bus_id 00000000:00:06.0" in probe.render_text(report)


def test_nvidia_smi_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert probe.smi_query() == {"error": "nvidia-smi not found"}
