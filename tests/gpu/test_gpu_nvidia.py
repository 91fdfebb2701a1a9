"""NVIDIA module parameters and order, the driver's own report, device nodes."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import CAPTURE_ROOT

from guestinit.init import modules, params
from guestinit.init.gpu import nvidia, topology
from guestinit.init.root import Root

KVER = "6.12.0-gpu"


def _values(cmdline: str = "") -> dict[str, object]:
    config = params.parse_cmdline(cmdline)
    assert config.problems == []
    return config.values


def test_one_gpu_disables_nvlink_and_sets_the_file_mode() -> None:
    plan = nvidia.module_plan(topology.SPECS["gpu"].modules, 1, _values())
    assert [str(m) for m in plan] == ["nvidia NVreg_NvLinkDisable=1 NVreg_DeviceFileMode=0660", "nvidia_uvm"]


def test_eight_gpus_keep_nvlink() -> None:
    plan = nvidia.module_plan(topology.SPECS["gpu-nvl4"].modules, 8, _values())
    assert [str(m) for m in plan] == ["nvidia NVreg_DeviceFileMode=0660", "nvidia_uvm"]


def test_keys_in_table_order_then_extra() -> None:
    values = _values(
        "guestinit.nvidia.nvlink=on guestinit.nvidia.device_file_mode=666 "
        "guestinit.nvidia.device_file_gid=44 guestinit.nvidia.gsp=off "
        "guestinit.nvidia.uvm_disable_hmm=1 guestinit.nvidia.drm=on "
        "guestinit.nvidia.extra=nvidia.NVreg_RmMsg=x,nvidia-uvm.uvm_perf_prefetch_enable=0"
    )
    plan = nvidia.module_plan(topology.SPECS["gpu"].modules, 1, values)
    assert [str(m) for m in plan] == [
        "nvidia NVreg_DeviceFileMode=0666 NVreg_DeviceFileGID=44 NVreg_EnableGpuFirmware=0 NVreg_RmMsg=x",
        "nvidia_uvm uvm_disable_hmm=1 uvm_perf_prefetch_enable=0",
        "nvidia_modeset",
        "nvidia_drm modeset=1",
    ]


def test_nvlink_off_forces_it_off_with_many_gpus() -> None:
    plan = nvidia.module_plan(("nvidia",), 8, _values("guestinit.nvidia.nvlink=off"))
    assert plan[0].params == "NVreg_NvLinkDisable=1 NVreg_DeviceFileMode=0660"


def test_service_vm_nvl5_loads_no_nvidia_module() -> None:
    plan = nvidia.module_plan(topology.SPECS["servicevm-nvl5"].modules, 0, _values("guestinit.nvidia.drm=on"))
    assert [m.name for m in plan] == ["ib_umad", "mlx5_ib"]


@pytest.mark.parametrize(
    ("word", "problem"),
    [
        ("guestinit.nvidia.device_file_mode=rw", "'rw' is not an octal file mode (e.g. 0660)"),
        ("guestinit.nvidia.nvlink=maybe", "'maybe' is not one of auto, on, off"),
        ("guestinit.nvidia.extra=NVreg_X=1", "'NVreg_X=1' is not MODULE.PARAM=VALUE"),
        ("guestinit.nvidia.node_timeout=-1", "'-1' is out of range"),
    ],
)
def test_bad_keys_are_problems_and_defaults_stay(word: str, problem: str) -> None:
    config = params.parse_cmdline(word)
    assert len(config.problems) == 1 and problem in config.problems[0]
    plan = nvidia.module_plan(("nvidia",), 1, config.values)
    assert plan[0].params == "NVreg_NvLinkDisable=1 NVreg_DeviceFileMode=0660"


def _fake_module_tree(tmp_path: Path) -> modules.ModuleTree:
    base = tmp_path / "usr/lib/modules" / KVER
    base.mkdir(parents=True)
    (base / "modules.dep").write_text(
        "kernel/drivers/gpu/drm/drm.ko.xz:\n"
        "kernel/drivers/gpu/drm/drm_kms_helper.ko.xz: kernel/drivers/gpu/drm/drm.ko.xz\n"
        "updates/dkms/nvidia.ko:\n"
        "updates/dkms/nvidia-uvm.ko: updates/dkms/nvidia.ko\n"
        "updates/dkms/nvidia-modeset.ko: updates/dkms/nvidia.ko\n"
        "updates/dkms/nvidia-drm.ko: updates/dkms/nvidia-modeset.ko updates/dkms/nvidia.ko "
        "kernel/drivers/gpu/drm/drm_kms_helper.ko.xz kernel/drivers/gpu/drm/drm.ko.xz\n"
        "kernel/drivers/infiniband/core/ib_core.ko.xz:\n"
        "kernel/drivers/infiniband/core/ib_umad.ko.xz: kernel/drivers/infiniband/core/ib_core.ko.xz\n"
        "kernel/drivers/net/ethernet/mellanox/mlx5/core/mlx5_core.ko.xz:\n"
        "kernel/drivers/infiniband/hw/mlx5/mlx5_ib.ko.xz: "
        "kernel/drivers/net/ethernet/mellanox/mlx5/core/mlx5_core.ko.xz "
        "kernel/drivers/infiniband/core/ib_core.ko.xz\n"
    )
    (tmp_path / "etc/modprobe.d").mkdir(parents=True)
    (tmp_path / "etc/modprobe.d/nvidia.conf").write_text("options nvidia NVreg_DeviceFileMode=0600\n")
    return modules.ModuleTree(Root(tmp_path), KVER)


def test_load_order_against_a_module_tree(tmp_path: Path) -> None:
    tree = _fake_module_tree(tmp_path)
    plan = nvidia.module_plan(topology.SPECS["gpu"].modules, 1, _values("guestinit.nvidia.drm=on"))
    assert tree.order([m.name for m in plan]) == [
        "nvidia", "nvidia_uvm", "nvidia_modeset", "drm", "drm_kms_helper", "nvidia_drm",
    ]  # fmt: skip
    plan5 = nvidia.module_plan(topology.SPECS["gpu-nvl5"].modules, 8, _values())
    assert tree.order([m.name for m in plan5]) == [
        "nvidia", "nvidia_uvm", "ib_core", "ib_umad", "mlx5_core", "mlx5_ib",
    ]  # fmt: skip
    # modprobe.d options come first on the module's command line, ours after: ours win
    assert tree.options["nvidia"] == "NVreg_DeviceFileMode=0600"
    assert plan[0].params.split()[-1] == "NVreg_DeviceFileMode=0660"


def test_driver_report_from_the_capture() -> None:
    root = Root(CAPTURE_ROOT)
    info = nvidia.read_version(root)
    assert info is not None
    assert (info.version, info.flavour) == ("580.159.04", "open")
    prm = nvidia.read_params(root)
    assert prm["NvLinkDisable"] == "1"  # one GPU in a VM: NVLink off, as our rule does
    assert prm["DeviceFileMode"] == "438" and prm["RmMsg"] == ""
    assert len(prm) == 42
    assert nvidia.read_version(Root("/nonexistent")) is None


def _driver_proc(tmp_path: Path) -> Root:
    proc = tmp_path / "proc"
    (proc / "driver/nvidia/gpus/0000:00:06.0").mkdir(parents=True)
    (proc / "driver/nvidia/gpus/0000:00:07.0").mkdir(parents=True)
    (proc / "driver/nvidia/gpus/0000:00:06.0/information").write_text(
        "Model: \t\t NVIDIA H200\nBus Location: \t 0000:00:06.0\nDevice Minor: \t 0\n"
    )
    (proc / "driver/nvidia/gpus/0000:00:07.0/information").write_text("Device Minor: \t 1\n")
    # majors as the capture's devnodes.txt shows them: 195 nvidia, 238 nvidia-uvm
    (proc / "devices").write_text(
        "Character devices:\n  1 mem\n195 nvidia-frontend\n238 nvidia-uvm\n241 nvidia-caps\n\n"
        "Block devices:\n  8 sd\n195 notthisone\n"
    )
    (tmp_path / "dev").mkdir()
    return Root(tmp_path)


def test_expected_nodes(tmp_path: Path) -> None:
    root = _driver_proc(tmp_path)
    nodes = [(n.path, n.major, n.minor) for n in nvidia.expected_nodes(root)]
    assert nodes == [
        ("/dev/nvidiactl", 195, 255),
        ("/dev/nvidia0", 195, 0),
        ("/dev/nvidia1", 195, 1),
        ("/dev/nvidia-uvm", 238, 0),
        ("/dev/nvidia-uvm-tools", 238, 1),
    ]


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod of character devices needs CAP_MKNOD")
def test_make_nodes(tmp_path: Path) -> None:
    root = _driver_proc(tmp_path)
    (tmp_path / "dev/nvidiactl").write_text("")  # present already: left alone
    created, problems = nvidia.make_nodes(root, _values())
    assert problems == []
    assert created == ["/dev/nvidia0", "/dev/nvidia1", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"]
    st = os.stat(tmp_path / "dev/nvidia-uvm")
    assert (os.major(st.st_rdev), os.minor(st.st_rdev), st.st_mode & 0o7777) == (238, 0, 0o660)
    assert nvidia.await_nodes(root, _values()) == []


def test_await_paths_sees_a_node_appear(tmp_path: Path) -> None:
    target = tmp_path / "dev/nvidia-caps/nvidia-cap1"
    (tmp_path / "dev").mkdir()

    def create() -> None:
        time.sleep(0.1)
        target.parent.mkdir()
        target.write_text("")

    t = threading.Thread(target=create)
    t.start()
    missing = nvidia.await_paths([str(target)], 20.0)
    t.join()
    assert missing == []


def test_await_paths_is_bounded(tmp_path: Path) -> None:
    wanted = [str(tmp_path / "nvidia0"), str(tmp_path / "present")]
    (tmp_path / "present").write_text("")
    assert nvidia.await_paths(wanted, 0.2) == [wanted[0]]


def test_guest_modules_import_no_third_party_libraries(tmp_path: Path) -> None:
    (tmp_path / "present").write_text("")
    code = (
        "import sys\n"
        "from guestinit.init.gpu import nvidia, pci, topology, hugepages, probe\n"
        f"assert nvidia.await_paths([{str(tmp_path / 'present')!r}], 5.0) == []\n"
        "print(sorted(m for m in ('pyinotify', 'psutil', 'jinja2') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_typed_values_as_a_config_file_gives_them() -> None:
    # guestinit.toml values arrive typed (true/false, numbers), not as command-line text
    values = {"nvidia.drm": True, "nvidia.gsp": False, "nvidia.node_timeout": 2.5}
    plan = nvidia.module_plan(("nvidia", "nvidia_uvm"), 2, values)
    assert [str(m) for m in plan] == [
        "nvidia NVreg_DeviceFileMode=0660 NVreg_EnableGpuFirmware=0",
        "nvidia_uvm",
        "nvidia_modeset",
        "nvidia_drm modeset=1",
    ]
