"""fmctl against the real fm-controller and the fake fabricmanager."""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from fabric_harness import ControllerProcess, FakeFabricManager

from guestinit.fabric import controller as fm_controller
from guestinit.fabric import fmctl

# The seed document's `fmctl list`, verbatim (partitions 7-14 active).
SEED_LIST = """\
PARTITION ID  STATUS    GPUs  NVLINKS  GPU PHYSICAL IDs
------------  ------    ----  -------  ----------------
0             Inactive  8     144      1,2,3,4,5,6,7,8
1             Inactive  4     72       1,2,3,4
2             Inactive  4     72       5,6,7,8
3             Inactive  2     36       1,3
4             Inactive  2     36       2,4
5             Inactive  2     36       5,7
6             Inactive  2     36       6,8
7             Active    1     0        1
8             Active    1     0        2
9             Active    1     0        3
10            Active    1     0        4
11            Active    1     0        5
12            Active    1     0        6
13            Active    1     0        7
14            Active    1     0        8
"""


def run(address: str, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = fmctl.main(["--address", address, *argv], out, err)
    return code, out.getvalue(), err.getvalue()


def test_list_prints_the_seed_table(controller: ControllerProcess) -> None:
    for pid in range(7, 15):
        assert run(controller.address, "activate", str(pid))[0] == 0
    code, out, err = run(controller.address, "list")
    assert (code, err) == (0, "")
    assert out == SEED_LIST


def test_commands_and_exit_codes(controller: ControllerProcess, fm: FakeFabricManager) -> None:
    a = controller.address
    assert run(a, "activate", "1") == (0, "partition 1 activated\n", "")
    assert run(a, "activate", "1") == (0, "partition 1 is already active\n", "")
    code, out, err = run(a, "activate", "3")
    assert code == fmctl.EXIT_CODES["FAILED_PRECONDITION"] == 5
    assert err == (
        "fmctl: partition 3 overlaps active partition 1 (GPUs 1,3); "
        "deactivate partition 1 first (FM_ST_IN_USE)\n"
    )
    code, _, err = run(a, "info", "42")
    assert code == 4 and "partition 42 does not exist" in err
    code, _, err = run(a, "info", "77")
    assert (
        code == fmctl.EXIT_CODES["INVALID_ARGUMENT"] == 6
        and "partition id 77 out of range: partition ids are 0-63" in err
    )
    code, out, _ = run(a, "info", "1")
    assert code == 0 and out.startswith(
        "PARTITION ID  1\nSTATUS        Active\nGPUs          4\nNVLINKS       72\n"
    )
    assert "GPU PHYSICAL ID  NVLINKS  MAX NVLINKS" in out
    code, out, _ = run(a, "status")
    assert code == 0 and "health             SERVING" in out and "active partitions  1\n" in out
    assert run(a, "deactivate", "2") == (0, "partition 2 is not active\n", "")
    assert run(a, "deactivate", "1") == (0, "partition 1 deactivated\n", "")
    code, _, err = run(a, "set-activated", "1")
    assert code == 5 and "not waiting for the activated set" in err
    assert run(a, "failed-devices") == (0, "no GPU or NVSwitch has failed NVLinks\n", "")
    assert run(a, "unsupported") == (0, "no unsupported partitions\n", "")
    assert fm.active() == []


def test_json_output(controller: ControllerProcess) -> None:
    a = controller.address
    code, out, _ = run(a, "--json", "activate", "2")
    data = json.loads(out)
    assert code == 0 and data["changed"] and data["active_ids"] == [2]
    assert data["partition"]["gpu_physical_ids"] == [5, 6, 7, 8] and data["partition"]["nvlinks"] == 72
    code, out, _ = run(a, "--json", "list")
    parts = json.loads(out)["partitions"]
    assert [p["id"] for p in parts if p["active"]] == [2]
    assert parts[0]["gpus"][0] == {
        "physical_id": 1,
        "uuid": "",
        "pci_bus_id": "",
        "nvlinks_available": 18,
        "max_nvlinks": 18,
        "nvlink_line_rate_mbps": 26562,
    }
    code, out, _ = run(a, "--json", "status")
    assert json.loads(out)["serving"] is True


def test_unreachable_and_bad_addresses(tmp_path: Path) -> None:
    code, out, err = run(f"unix:{tmp_path}/nobody.sock", "list")
    assert code == fmctl.EXIT_CODES["UNAVAILABLE"] == 3 and out == ""
    assert err.startswith(f"fmctl: cannot reach fm-controller at unix:{tmp_path}/nobody.sock")
    code, _, err = run("gopher:x", "list")
    assert code == 2 and "use vsock:CID:PORT, unix:PATH, tcp:HOST:PORT or HOST:PORT" in err


def test_status_exit_code_when_fabricmanager_is_absent(fakes: tuple[Path, Path], tmp_path: Path) -> None:
    ctl = ControllerProcess(fakes[0], tmp_path / "ctl", f"unix:{tmp_path}/no-fm.sock").start()
    try:
        code, out, _ = run(ctl.address, "status")
        assert code == 3 and "health             NOT_SERVING" in out
    finally:
        ctl.stop()


def test_the_installed_command(controller: ControllerProcess) -> None:
    argv = [sys.executable, "-c", "import sys; from guestinit.fabric.fmctl import main; sys.exit(main())"]
    r = subprocess.run(
        [*argv, "--address", controller.address, "list"], capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 0 and r.stdout.splitlines()[0] == SEED_LIST.splitlines()[0]
    r = subprocess.run([*argv, "activate", "x"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "is not a partition id" in r.stderr


def _parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    found = [("fm-controller", fm_controller.parser()), ("fmctl", fmctl.parser())]
    for action in fmctl.parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            found += [(f"fmctl {name}", sub) for name, sub in action.choices.items()]
    return found


@pytest.mark.parametrize(("name", "p"), _parsers(), ids=lambda v: v if isinstance(v, str) else "")
def test_help_reads_as_whole_sentences(name: str, p: argparse.ArgumentParser) -> None:
    """Descriptions are sentences, not a docstring's first line cut short or its markup."""
    assert p.description, name
    for text in (p.description, p.epilog or "Fine."):
        assert text[0].isupper() and text.endswith("."), text
        assert "``" not in text and ":mod:" not in text and "\n" not in text
    assert "``" not in p.format_help()


def test_every_command_is_in_the_table() -> None:
    names = {name.removeprefix("fmctl ") for name, _ in _parsers()[2:]}
    assert names == {c.name for c in fmctl.COMMANDS}
