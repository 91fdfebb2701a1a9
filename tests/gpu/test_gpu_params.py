"""The GPU phase's keys are part of the one key table, and the CPU boot path stays light."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from guestinit.init import params, settings
from guestinit.init.gpu import params as gpu_params
from guestinit.init.gpu import pci, topology
from guestinit.init.root import Root

REPO = Path(__file__).resolve().parents[2]


def test_gpu_keys_are_in_the_one_table_once() -> None:
    names = [p.name for p in params.PARAMS]
    assert len(names) == len(set(names))
    for key in (
        "rebar",
        "hugepages",
        "thp",
        "nvidia.nvlink",
        "nvidia.node_timeout",
        "smi.lgc",
        "gpu.timeout",
    ):
        assert key in names
    assert {p.name for p in gpu_params.PARAMS} <= set(names)
    doc = params.reference_markdown()
    assert "| `guestinit.nvidia.device_file_mode` | octal | `0660` |" in doc
    assert "| `guestinit.hugepages` | SIZE:COUNT[@NODE],... | `` |" in doc


def test_gpu_keys_parse_on_the_command_line_not_unknown() -> None:
    config = params.parse_cmdline(
        "guestinit.hugepages=2M:512,1G:2@1 guestinit.thp=never guestinit.rebar=max "
        "guestinit.nvidia.nvlink=off guestinit.smi.lgc=1500,1980 guestinit.smi.pl=700 "
        "guestinit.smi.srs=1 guestinit.persistenced.uvm=off guestinit.gpu.timeout_per_gpu=4"
    )
    assert config.problems == []
    assert [str(r) for r in config["hugepages"]] == ["2M:512", "1G:2@1"]  # type: ignore[attr-defined]
    assert (config["thp"], config["rebar"], config["nvidia.nvlink"]) == ("never", "max", "off")
    assert (config["smi.lgc"], config["smi.pl"], config["smi.srs"]) == ("1500,1980", "700", "1")
    assert config["persistenced.uvm"] is False and config["gpu.timeout_per_gpu"] == 4.0


def test_bad_gpu_values_are_one_line_problems() -> None:
    config = params.parse_cmdline("guestinit.smi.lgc=1980,1500 guestinit.smi.pl=-3 guestinit.smi.srs=yes")
    assert config.problems == [
        "guestinit.smi.lgc=1980,1500: '1980,1500': the minimum is above the maximum; using the default ''",
        "guestinit.smi.pl=-3: '-3' is not a power limit in watts (e.g. 700); using the default ''",
        "guestinit.smi.srs=yes: 'yes' is not one of 0, 1; using the default ''",
    ]


def test_gpu_keys_in_the_image_settings_file() -> None:
    image = settings.from_table(
        {"hugepages": ["2M:8", "1G:1"], "smi.pl": 450, "gpu.timeout": 60, "nvidia.drm": True}
    )
    assert image.problems == []
    assert [str(r) for r in image.values["hugepages"]] == ["2M:8", "1G:1"]  # type: ignore[attr-defined]
    assert image.values["smi.pl"] == "450" and image.values["gpu.timeout"] == 60.0
    assert image.values["nvidia.drm"] is True


def test_topology_counts_the_vendors_pci_names() -> None:
    vendors = (f"0x{pci.VENDOR_NVIDIA:04x}", f"0x{pci.VENDOR_MELLANOX:04x}")
    assert vendors == topology.COUNTED_VENDORS
    assert topology.DEVICES_DIR == pci.DEVICES_DIR


def test_cpu_boot_path_imports_no_gpu_code(tmp_path: Path) -> None:
    """What the init imports before it knows the mode: no pci/nvidia/hugepages code, no dataclasses
    (inspect and more), no tomllib. A CPU guest's detect reads vendor files only."""
    for address, vendor in (("0000:00:01.0", "0x1af4"), ("0000:00:02.0", "0x8086")):  # virtio, a bridge
        (tmp_path / "sys/bus/pci/devices" / address).mkdir(parents=True)
        (tmp_path / "sys/bus/pci/devices" / address / "vendor").write_text(f"{vendor}\n")
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "import guestinit.init.pid1\n"
        "from guestinit.init.gpu import topology\n"
        "from guestinit.init.root import Root\n"
        "topo = topology.detect(Root(sys.argv[1]))\n"
        "heavy = ('dataclasses', 'inspect', 'typing', 'tomllib', 'guestinit.init.gpu.pci', "
        "'guestinit.init.gpu.nvidia', 'guestinit.init.gpu.hugepages', 'guestinit.init.gpu.services')\n"
        "print(topo.mode, sorted(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code, str(tmp_path)], capture_output=True, text=True, check=True
    )
    assert out.stdout.split("\n")[0] == "cpu []"


def test_hugepage_sizes_are_the_ones_x86_64_offers() -> None:
    assert gpu_params.parse_size_kb("2M") == 2048 and gpu_params.parse_size_kb("1GiB") == 1 << 20
    assert gpu_params.parse_size_kb("2048kB") == 2048
    for text, why in (
        ("4K", "(4K is the base page size)"),
        ("3K", "is not a hugepage size of x86-64"),
        ("0M", "is not a hugepage size of x86-64"),
        ("16G", "is not a hugepage size of x86-64"),
        ("2", "is not a page size"),
        ("9" * 5000 + "M", "is not a page size"),
    ):
        with pytest.raises(params.ParamError, match=re.escape(why)):
            gpu_params.parse_size_kb(text)


def test_hugepage_counts_and_nodes_are_bounded() -> None:
    assert [str(r) for r in gpu_params.parse_requests("2M:0,1G:4294967295@1023")] == [
        "2M:0",
        "1G:4294967295@1023",
    ]
    for text, why in (
        ("2M:4294967296", "count 4294967296 is above 4294967295"),
        ("2M:" + "1" * 4400, "has more than 10 digits"),
        ("2M:-1", "count '-1' is not a whole number"),
        ("2M:²", "count '²' is not a whole number"),
        ("2M:1@1024", "NUMA node 1024 is above 1023"),
        ("2M:1@x", "NUMA node 'x' is not a whole number"),
    ):
        with pytest.raises(params.ParamError, match=re.escape(why)):
            gpu_params.parse_requests(text)


def test_offered_sizes_come_from_the_roots_sysfs(tmp_path: Path) -> None:
    root = Root(tmp_path)
    assert gpu_params.offered_sizes(root) == ()  # an image tree: no list, nothing refused
    requests = gpu_params.parse_requests("2M:8,1G:2")
    assert gpu_params.unoffered(requests, ()) == ()
    for entry in ("hugepages-2048kB", "hugepages-1048576kB", "hugepages-xkB", "other"):
        (tmp_path / "sys/kernel/mm/hugepages" / entry).mkdir(parents=True)
    assert gpu_params.offered_sizes(root) == (2048, 1 << 20)
    assert gpu_params.unoffered(requests, (2048,)) == (requests[1],)


@pytest.mark.parametrize(
    ("word", "why"),
    [
        ("guestinit.nvidia.device_file_uid=4294967295", "4294967295 is not a numeric uid/gid"),
        ("guestinit.nvidia.device_file_gid=" + "9" * 4400, "has more than 10 digits"),
        ("guestinit.smi.lgc=100000", "is not MHz or MIN,MAX in MHz (1..99999"),
        ("guestinit.smi.lgc=" + "1" * 4400, "is not MHz or MIN,MAX in MHz"),
        ("guestinit.nvidia.extra=nvidia.NVreg_X=" + "a" * 2000, "is not MODULE.PARAM=VALUE"),
        ("guestinit.nvidia.registry_dwords=" + "a" * 2000, "must be one word without quotes"),
        ("guestinit.fabricmanager.config=/etc/" + "x" * 5000, "is not an absolute path without spaces"),
    ],
)
def test_gpu_values_out_of_range_are_bounded_problems(word: str, why: str) -> None:
    (problem,) = params.parse_cmdline(word).problems
    assert why in problem and len(problem) <= 400 and "\n" not in problem
