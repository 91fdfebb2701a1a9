"""The GPU phase through the whole init: ``pid1.run`` on a temporary root built from the H200
capture, for each mode, from topology to READY, the GPU services and the shutdown.

What cannot exist here is stood in for, faithful to what it does in a guest:
- the NVIDIA modules are junk files in a fake module tree, so finit_module fails and the
  modprobe fallback runs; modprobe is faked with pytest-subprocess (in the init's process), and
  its fake "loads" the driver the way the real one shows it: /sys/module/NAME, the majors in
  /proc/devices, /proc/driver/nvidia/version and one gpus/BDF/information per GPU;
- nvidia-persistenced forks, its daemon writes the pid file, serves its RPC socket and only
  then lets the parent exit 0 (as the 550 driver's does: no --foreground there);
- nvidia-smi and nvidia-ctk record their arguments and exit 0 (nvidia-ctk writes its spec);
- nv-fabricmanager reads its -c file and listens on FM_CMD_BIND_INTERFACE:FM_CMD_PORT_NUMBER.
The init runs as a subreaper, as PID 1 is for every orphan.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import notify_inbox
import pytest
from conftest import Tree, guest_gpus

from guestinit.init import params
from guestinit.init.gpu import services as gpu_services
from guestinit.init.gpu import topology
from guestinit.init.root import Root

REPO = Path(__file__).resolve().parents[2]
KVER = os.uname().release
DRIVER_VERSION = "550.163.01"

DRIVER = """
import ctypes, json, os, sys, time
sys.path.insert(0, sys.argv[2])
from pytest_subprocess import FakeProcess
from guestinit.init.kmsg import Log
from guestinit.init.pid1 import run
from guestinit.init.root import Root

root = Root(sys.argv[1])
calls = root("/shared/modprobe.jsonl")
assert ctypes.CDLL(None).prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER: orphans come to us

def record(process):
    lockdown = root.read_text("/proc/sys/kernel/modules_disabled", "0").strip()
    with open(calls, "a") as f:
        f.write(json.dumps({"argv": [str(a) for a in process.args], "modules_disabled": lockdown}) + "\\n")

def load(process, name, majors, gpus):
    record(process)
    os.makedirs(root(f"/sys/module/{name}"), exist_ok=True)
    with open(root("/proc/devices"), "a") as f:
        f.writelines(f"{major} {dev}\\n" for major, dev in majors)
    if name == "nvidia":
        os.makedirs(root("/proc/driver/nvidia"), exist_ok=True)
        with open(root("/proc/driver/nvidia/version"), "w") as f:
            f.write("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  550.163.01  Release Build\\n")
        for minor, bdf in enumerate(gpus):
            os.makedirs(root(f"/proc/driver/nvidia/gpus/{bdf}"))
            with open(root(f"/proc/driver/nvidia/gpus/{bdf}/information"), "w") as f:
                f.write(f"Model: \\t\\t NVIDIA H200\\nBus Location: \\t {bdf}\\nDevice Minor: \\t {minor}\\n")

spec = json.loads(sys.argv[3])
with FakeProcess() as fp:
    base = ["modprobe", "-d", root.path, "-S", spec["kver"]]
    if spec["fail_nvidia"]:
        fp.register([*base, "nvidia", fp.any()], returncode=1,
                    stderr="modprobe: ERROR: could not insert 'nvidia'", callback=record)
    else:
        majors = [(195, "nvidia-frontend")]
        fp.register([*base, "nvidia", fp.any()], callback=load,
                    callback_kwargs={"name": "nvidia", "majors": majors, "gpus": spec["gpus"]})
    fp.register([*base, "nvidia_uvm", fp.any()], callback=load,
                callback_kwargs={"name": "nvidia_uvm", "majors": [(238, "nvidia-uvm")], "gpus": []})
    run(root, Log(root("/kmsg")), None, time.clock_gettime(time.CLOCK_BOOTTIME))
print("run returned", flush=True)
"""

PERSISTENCED = """#!{python}
# nvidia-persistenced 550 as it behaves: fork, the daemon serves its RPC socket, then the parent
# exits 0; SIGTERM removes the socket and the pid file.
import os, signal, socket, sys
run = {root!r} + "/var/run/nvidia-persistenced"
with open({root!r} + "/shared/calls.log", "a") as f:
    f.write("nvidia-persistenced " + " ".join(sys.argv[1:]) + "\\n")
r, w = os.pipe()
if os.fork():
    os.close(w)
    sys.exit(0 if os.read(r, 1) == b"1" else 1)
os.close(r)
os.setsid()
os.makedirs(run, exist_ok=True)
with open(run + "/nvidia-persistenced.pid", "w") as f:
    f.write(f"{{os.getpid()}}\\n")
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(run + "/socket")
server.listen()
def stop(*_):
    os.unlink(run + "/socket")
    os.unlink(run + "/nvidia-persistenced.pid")
    os._exit(0)
signal.signal(signal.SIGTERM, stop)
os.write(w, b"1")
os.close(w)
for fd in (0, 1, 2):
    os.close(fd)
while True:
    conn, _ = server.accept()
    conn.close()
"""

RECORDER = """#!{python}
import os, sys
with open({root!r} + "/shared/calls.log", "a") as f:
    f.write({name!r} + " " + " ".join(sys.argv[1:]) + "\\n")
for arg in sys.argv[1:]:
    if arg.startswith("--output="):
        spec = arg.split("=", 1)[1]
        os.makedirs(os.path.dirname(spec), exist_ok=True)
        with open(spec, "w") as f:
            f.write("cdiVersion: 0.5.0\\nkind: nvidia.com/gpu\\n")
"""

FABRICMANAGER = """#!{python}
# nv-fabricmanager in the foreground (DAEMONIZE=0): its command port from its -c file.
import signal, socket, sys
lines = [line.strip() for line in open(sys.argv[2]) if not line.startswith("#")]
cfg = dict(line.split("=", 1) for line in lines if "=" in line)
with open({root!r} + "/shared/calls.log", "a") as f:
    f.write("nv-fabricmanager " + " ".join(sys.argv[1:]) + f" FABRIC_MODE={{cfg['FABRIC_MODE']}}\\n")
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
server = socket.create_server((cfg["FM_CMD_BIND_INTERFACE"], int(cfg["FM_CMD_PORT_NUMBER"])))
while True:
    server.accept()[0].close()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class GpuGuest:
    """A guest root cloned from the H200 capture, with the image's pieces the GPU phase uses."""

    def __init__(self, tmp_path: Path, counts: tuple[int, int, int], cmdline: str = "") -> None:
        self.tmp = tmp_path
        self.tree = Tree.from_capture(tmp_path / "root")
        self.path = self.tree.root
        nvswitches, gpus, sw_mng = counts
        self.gpus = guest_gpus(self.tree, gpus)
        for j in range(nvswitches):
            self.tree.nvswitch(f"0000:00:{0x18 + j:02x}.0", start=0xE0000000 + j * (32 << 20))
        for k in range(sw_mng):
            self.tree.sw_mng(f"0000:00:{0x1C + k:02x}.0", start=0x3F000000000 + k * (32 << 20))
        for d in ("etc/guestinit/services.d", "etc/guestinit/gpu", "dev", "run", "proc/sys/kernel", "shared"):
            (self.path / d).mkdir(parents=True, exist_ok=True)
        (self.path / "var").mkdir(exist_ok=True)
        (self.path / "var/run").symlink_to("../run")  # as Debian's base-files has it
        (self.path / "proc/sys/kernel/modules_disabled").write_text("0\n")
        (self.path / "proc/devices").write_text("Character devices:\n  1 mem\n  5 /dev/console\n")
        for stale in ("proc/driver", "proc/modules"):  # the capture's loaded driver: not loaded yet
            subprocess.run(["rm", "-rf", str(self.path / stale)], check=True)
        (self.path / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
        (self.path / "etc/group").write_text("root:x:0:\n")
        (self.path / "kmsg").write_text("")
        self._module_tree()
        self._programs()
        self.port = _free_port()
        (self.path / "etc/guestinit/gpu/fabricmanager.cfg").write_text(
            "# test copy: the shipped one's keys, a free port\nFABRIC_MODE=0\nDAEMONIZE=0\n"
            f"FM_CMD_BIND_INTERFACE=127.0.0.1\nFM_CMD_PORT_NUMBER={self.port}\n"
        )
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(tmp_path / "notify.sock"))
        (self.path / "proc/cmdline").write_text(
            f"console=ttyS0 guestinit.notify=unix:{tmp_path / 'notify.sock'} guestinit.lockdown "
            f"guestinit.stop_timeout=2 {cmdline}\n"
        )
        self.proc: subprocess.Popen[str] | None = None
        self.received: list[dict[str, str]] = []

    def _module_tree(self) -> None:
        base = self.path / "usr/lib/modules" / KVER
        (base / "updates").mkdir(parents=True)
        (base / "modules.dep").write_text("updates/nvidia.ko:\nupdates/nvidia-uvm.ko: updates/nvidia.ko\n")
        for name in ("nvidia", "nvidia-uvm"):
            (base / "updates" / f"{name}.ko").write_bytes(b"not an ELF module")

    def _programs(self) -> None:
        bins = self.path / "usr/bin"
        bins.mkdir(parents=True, exist_ok=True)
        fill = {"python": sys.executable, "root": str(self.path)}
        scripts = {
            "nvidia-persistenced": PERSISTENCED.format(**fill),
            "nvidia-smi": RECORDER.format(name="nvidia-smi", **fill),
            "nvidia-ctk": RECORDER.format(name="nvidia-ctk", **fill),
            "nv-fabricmanager": FABRICMANAGER.format(**fill),
        }
        for name, text in scripts.items():
            (bins / name).write_text(text)
            (bins / name).chmod(0o755)

    def start(self, fail_nvidia: bool = False) -> None:
        if os.geteuid() != 0:  # no CAP_MKNOD: the nodes are there already, as devtmpfs would have them
            for node in ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", *(f"nvidia{i}" for i in range(8))):
                (self.path / "dev" / node).write_text("")
        spec = {"kver": KVER, "gpus": self.gpus, "fail_nvidia": fail_nvidia}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", DRIVER, str(self.path), str(REPO), json.dumps(spec)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def wait_for(self, key: str, timeout: float = 60.0) -> dict[str, str]:
        """The first message (received so far or next) that has ``key``."""
        return notify_inbox.wait_for(self.sock, self.received, key, timeout, lambda: self.kmsg()[-4000:])

    def shutdown(self) -> dict[str, str]:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGTERM)
        final = self.wait_for("X_SYSTEMD_SHUTDOWN")
        out, _ = self.proc.communicate(timeout=30)
        assert self.proc.returncode == 0 and "run returned" in out, out
        return final

    def kmsg(self) -> str:
        return (self.path / "kmsg").read_text()

    def calls(self) -> list[str]:
        log = self.path / "shared/calls.log"
        return log.read_text().splitlines() if log.exists() else []

    def modprobes(self) -> list[dict[str, object]]:
        log = self.path / "shared/modprobe.jsonl"
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()
        self.sock.close()
        # a stand-in daemon the init did not get to stop
        pid_file = self.path / "run/nvidia-persistenced/nvidia-persistenced.pid"
        try:
            pid = int(pid_file.read_text())
            if str(self.path).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():  # ours, not reused
                os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError):
            pass


@pytest.fixture
def make_guest(tmp_path: Path) -> Iterator[type[GpuGuest]]:
    made: list[GpuGuest] = []

    class Made(GpuGuest):
        def __init__(self, counts: tuple[int, int, int], cmdline: str = "") -> None:
            super().__init__(tmp_path, counts, cmdline)
            made.append(self)

    yield Made  # type: ignore[misc]
    for guest in made:
        guest.close()


def services(ready: dict[str, str]) -> dict[str, dict[str, object]]:
    return {s["name"]: s for s in json.loads(ready.get("X_GUESTINIT_SERVICES", "[]"))}


def modules_reported(ready: dict[str, str]) -> dict[str, dict[str, object]]:
    return {m["name"]: m for m in json.loads(ready["X_GUESTINIT_MODULES"])}


def phases(ready: dict[str, str]) -> list[str]:
    return [p["name"] for p in json.loads(ready["X_GUESTINIT_PHASES"])]


def test_cpu_mode_runs_nothing_gpu(make_guest: type[GpuGuest]) -> None:
    guest = make_guest((0, 0, 0))
    guest.start()
    ready = guest.wait_for("READY")
    assert ready["X_GUESTINIT_MODE"] == "cpu"
    assert ready["X_GUESTINIT_TOPOLOGY"] == "nvswitch=0,gpu=0,sw_mng=0"
    assert "X_GUESTINIT_GPUS" not in ready and "X_GUESTINIT_DEGRADED" not in ready
    assert "mode" not in ready["STATUS"]
    assert "nvidia" not in modules_reported(ready) and guest.modprobes() == []
    assert services(ready) == {}
    assert "topology" in phases(ready) and "gpu modules" not in phases(ready)
    assert (guest.path / "proc/sys/kernel/modules_disabled").read_text() == "1\n"
    guest.shutdown()
    assert guest.calls() == []


def _check_nodes(guest: GpuGuest, gpus: int) -> None:
    nodes = {"nvidiactl": (195, 255), "nvidia-uvm": (238, 0), "nvidia-uvm-tools": (238, 1)}
    nodes.update({f"nvidia{i}": (195, i) for i in range(gpus)})
    for name, (major, minor) in nodes.items():
        st = os.stat(guest.path / "dev" / name)
        if os.geteuid() == 0:  # made by the init with the configured mode
            assert stat.S_ISCHR(st.st_mode), name
            assert (os.major(st.st_rdev), os.minor(st.st_rdev), st.st_mode & 0o777) == (major, minor, 0o660)


def test_one_gpu_mode_from_topology_to_ready(make_guest: type[GpuGuest]) -> None:
    guest = make_guest((0, 1, 0), "guestinit.smi.lgc=1500,1980 guestinit.smi.pl=700 guestinit.smi.srs=1")
    guest.start()
    ready = guest.wait_for("READY")
    assert ready["X_GUESTINIT_MODE"] == "gpu"
    assert ready["X_GUESTINIT_TOPOLOGY"] == "nvswitch=0,gpu=1,sw_mng=0"
    assert json.loads(ready["X_GUESTINIT_GPUS"]) == {
        "count": 1, "ids": ["10de:2335@0000:00:06.0"], "driver": DRIVER_VERSION,
    }  # fmt: skip
    assert "mode gpu (detected: 0 NVSwitch, 1 GPU, 0 SW_MNG)" in ready["STATUS"]
    assert "X_GUESTINIT_DEGRADED" not in ready and "X_GUESTINIT_BAR_WARNINGS" not in ready
    # modules: finit_module refused the junk, modprobe (faked) loaded them, before the lockdown,
    # with one GPU's parameters; each load is timed in X_GUESTINIT_MODULES
    loads = guest.modprobes()
    assert [c["argv"][5:] for c in loads] == [
        ["nvidia", "NVreg_NvLinkDisable=1", "NVreg_DeviceFileMode=0660"], ["nvidia_uvm"],
    ]  # fmt: skip
    assert {c["modules_disabled"] for c in loads} == {"0"}
    assert (guest.path / "proc/sys/kernel/modules_disabled").read_text() == "1\n"
    assert ready["X_GUESTINIT_LOCKDOWN"] == "1"
    reported = modules_reported(ready)
    assert reported["nvidia"]["how"] == "modprobe" and isinstance(reported["nvidia"]["ms"], float)
    assert "finit_module" in str(reported["nvidia"]["error"])  # why the fallback ran
    order = phases(ready)
    assert order.index("topology") < order.index("gpu modules") < order.index("gpu nodes")
    _check_nodes(guest, 1)
    # services: persistenced (forking, ready on its socket), the settings after it, srs last
    svc = services(ready)
    assert {n: s["state"] for n, s in svc.items()} == {
        "nvidia-persistenced": "ready", "nvidia-smi-lgc": "exited", "nvidia-smi-pl": "exited",
        "nvidia-cdi": "exited", "nvidia-smi-srs": "exited",
    }  # fmt: skip
    daemon = int((guest.path / "run/nvidia-persistenced/nvidia-persistenced.pid").read_text())
    assert svc["nvidia-persistenced"]["pid"] == daemon
    calls = guest.calls()
    assert calls[0] == "nvidia-persistenced --verbose --uvm-persistence-mode"
    assert set(calls[1:4]) == {
        "nvidia-smi -lgc 1500,1980", "nvidia-smi -pl 700",
        f"nvidia-ctk cdi generate --output={guest.path}/var/run/cdi/nvidia.yaml",
    }  # fmt: skip
    assert calls[4:] == ["nvidia-smi conf-compute -srs 1"]
    assert (guest.path / "run/cdi/nvidia.yaml").read_text().startswith("cdiVersion:")
    for name in ("nvidia-smi-lgc", "nvidia-smi-srs"):
        assert svc[name]["start_s"] >= svc["nvidia-persistenced"]["ready_s"]  # type: ignore[operator]
    final = guest.shutdown()
    stopped = {s["name"]: s["how"] for s in json.loads(final["X_GUESTINIT_STOPPED"])}
    assert stopped == {"nvidia-persistenced": "SIGTERM"}
    assert not (guest.path / "run/nvidia-persistenced/socket").exists()  # the daemon got the SIGTERM


def test_eight_gpus_keep_nvlink_and_report_all(make_guest: type[GpuGuest]) -> None:
    guest = make_guest(
        (0, 8, 0), "guestinit.persistenced.uvm=off guestinit.hugepages=2M:64 guestinit.thp=madvise"
    )
    guest.tree.hugepages({2048: (0, 0), 1048576: (0, 0)})
    guest.tree.thp("always")
    # one GPU's 256 GiB BAR placed 2 MiB past a 1 GiB boundary: no 1 GiB mappings for it
    bar_file = guest.tree.device_dir("0000:00:07.0") / "resource"
    lines = bar_file.read_text().splitlines()
    start, end, flags = (int(x, 16) for x in lines[2].split())
    lines[2] = f"0x{start + (2 << 20):016x} 0x{end + (2 << 20):016x} 0x{flags:016x}"
    bar_file.write_text("\n".join(lines) + "\n")
    guest.start()
    ready = guest.wait_for("READY")
    assert ready["X_GUESTINIT_MODE"] == "gpu"
    summary = json.loads(ready["X_GUESTINIT_GPUS"])
    assert summary["count"] == 8 and summary["driver"] == DRIVER_VERSION
    assert summary["ids"] == [f"10de:2335@0000:00:{6 + i:02x}.0" for i in range(8)]
    nvidia_load = guest.modprobes()[0]["argv"]
    assert nvidia_load[5:] == ["nvidia", "NVreg_DeviceFileMode=0660"]  # NVLink stays on
    _check_nodes(guest, 8)
    assert guest.calls()[0] == "nvidia-persistenced --verbose"  # guestinit.persistenced.uvm=off
    svc = services(ready)
    assert set(svc) == {"nvidia-persistenced", "nvidia-cdi"}  # no nvidia-smi settings asked for
    (warning,) = json.loads(ready["X_GUESTINIT_BAR_WARNINGS"])
    assert warning == (
        "0000:00:07.0 BAR2 256 GiB at 0x108000200000 is not 1 GiB aligned: largest page 2 MiB, "
        "767 entries instead of 256"
    )
    assert json.loads(ready["X_GUESTINIT_TUNING"]) == ["hugepages 2M:64: ok", "thp madvise"]
    assert (guest.path / "sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages").read_text() == "64\n"
    assert (guest.path / "sys/kernel/mm/transparent_hugepage/enabled").read_text() == "madvise\n"
    guest.shutdown()


def test_nvl4_runs_fabricmanager_in_full_mode(make_guest: type[GpuGuest]) -> None:
    guest = make_guest((4, 8, 0))
    guest.start()
    ready = guest.wait_for("READY")
    assert ready["X_GUESTINIT_MODE"] == "gpu-nvl4"
    assert ready["X_GUESTINIT_TOPOLOGY"] == "nvswitch=4,gpu=8,sw_mng=0"
    svc = services(ready)
    assert svc["fabricmanager"]["state"] == "ready"
    assert "nvlsm" not in svc
    cfg = guest.path / "etc/guestinit/gpu/fabricmanager.cfg"
    assert f"nv-fabricmanager -c {cfg} FABRIC_MODE=0" in guest.calls()
    assert "connected to 127.0.0.1:" + str(guest.port) in guest.kmsg()
    final = guest.shutdown()
    assert {s["name"] for s in json.loads(final["X_GUESTINIT_STOPPED"])} == {
        "fabricmanager",
        "nvidia-persistenced",
    }


def test_unknown_topology_is_reported_and_runs_as_gpu(make_guest: type[GpuGuest]) -> None:
    guest = make_guest((2, 8, 0))
    guest.start()
    ready = guest.wait_for("READY")
    assert ready["X_GUESTINIT_MODE"] == "unknown"
    assert ready["X_GUESTINIT_TOPOLOGY"] == "nvswitch=2,gpu=8,sw_mng=0"
    assert (
        "mode unknown (unexpected topology: 2 NVSwitch, 8 GPU, 0 SW_MNG); running as gpu" in ready["STATUS"]
    )
    assert json.loads(ready["X_GUESTINIT_GPUS"])["count"] == 8
    svc = services(ready)
    assert svc["nvidia-persistenced"]["state"] == "ready" and "fabricmanager" not in svc  # the fallback
    guest.shutdown()


def test_module_failure_is_degraded_not_fatal(make_guest: type[GpuGuest]) -> None:
    guest = make_guest((0, 1, 0))
    guest.start(fail_nvidia=True)
    ready = guest.wait_for("READY")
    assert ready["X_GUESTINIT_MODE"] == "gpu"
    assert ready["X_GUESTINIT_DEGRADED"] == "nvidia"
    assert "degraded: nvidia" in ready["STATUS"] and "module nvidia failed" in ready["STATUS"]
    reported = modules_reported(ready)
    assert reported["nvidia"]["how"] == "failed"
    assert reported["nvidia_uvm"] == {"name": "nvidia_uvm", "how": "failed", "ms": 0.0,
                                      "error": "dependency nvidia failed"}  # fmt: skip
    assert json.loads(ready["X_GUESTINIT_GPUS"])["driver"] is None
    assert services(ready) == {}  # no GPU daemons without a driver
    guest.shutdown()
    assert guest.calls() == []


# ---------------------------------------------------------------- the services table alone


def _topo(gpus: int, mode: str = "gpu") -> topology.Topology:
    return topology.Topology(mode, [object()] * gpus, [], [], "test")  # type: ignore[list-item]


def test_ready_bounds_scale_with_the_gpu_count() -> None:
    config = params.parse_cmdline("")
    one = gpu_services.tables(config, _topo(1), Root("/"))
    eight = gpu_services.tables(config, _topo(8, "gpu-nvl4"), Root("/"))
    assert {t["ready_timeout"] for t in one.values()} == {40.0}
    assert {t["ready_timeout"] for t in eight.values()} == {110.0}
    tuned = params.parse_cmdline("guestinit.gpu.timeout=60 guestinit.gpu.timeout_per_gpu=4")
    assert gpu_services.tables(tuned, _topo(8), Root("/"))["nvidia-persistenced"]["ready_timeout"] == 92.0
    assert list(eight) == ["nvidia-persistenced", "nvidia-cdi", "fabricmanager"]


def test_services_only_in_gpu_modes() -> None:
    config = params.parse_cmdline("guestinit.smi.srs=1")
    for mode in ("cpu", "servicevm-nvl4", "servicevm-nvl5"):
        assert gpu_services.tables(config, _topo(0, mode), Root("/")) == {}
    nvl5 = gpu_services.tables(config, _topo(8, "gpu-nvl5"), Root("/"))
    assert list(nvl5) == ["nvidia-persistenced", "nvidia-cdi", "nvlsm", "fabricmanager", "nvidia-smi-srs"]
    assert nvl5["fabricmanager"]["after"] == ["nvlsm"]
    assert nvl5["nvidia-smi-srs"]["after"] == ["nvidia-persistenced", "nvidia-cdi", "nvlsm", "fabricmanager"]
    specs = gpu_services.specs(config, _topo(8, "gpu-nvl5"), Root("/"))
    assert [s.error for s in specs] == [""] * 5  # every generated table passes the services.d checks


def test_shipped_fabricmanager_config_is_full_mode_in_the_foreground() -> None:
    default = params.BY_NAME["fabricmanager.config"].default
    assert isinstance(default, str)
    shipped = REPO / "image/gpu/mkosi.extra" / default.lstrip("/")
    from guestinit.fabric import render

    header = (
        "# The GPU image copy (guestinit.fabricmanager.config, NVLink GPU modes): FABRIC_MODE=0, "
        "log to syslog.\n"
    )
    rendered = header + render.fabricmanager_cfg({"FABRIC_MODE": "0", "LOG_FILE_NAME": ""})
    assert shipped.read_text() == rendered, f"{shipped} is stale: run `make docs`"
    cfg = gpu_services.read_fm_config(Root("/"), str(shipped))
    assert cfg["FABRIC_MODE"] == "0" and cfg["DAEMONIZE"] == "0" and cfg["LOG_USE_SYSLOG"] == "1"
    config = params.parse_cmdline(f"guestinit.fabricmanager.config={shipped}")
    table = gpu_services.tables(config, _topo(8, "gpu-nvl4"), Root("/"))["fabricmanager"]
    assert table["ready"] == {"tcp": f"{cfg['FM_CMD_BIND_INTERFACE']}:{cfg['FM_CMD_PORT_NUMBER']}"}


def test_persistenced_failing_is_degraded_and_the_rest_runs(make_guest: type[GpuGuest]) -> None:
    """A daemon that cannot start (here: the parent reports a failed initialisation, as the real
    one does without usable /dev/nvidia*) is restarted, then given up on: READY still comes,
    with the service in X_GUESTINIT_DEGRADED; the settings after it still run."""
    guest = make_guest((0, 1, 0), "guestinit.smi.pl=500")
    failing = guest.path / "usr/bin/nvidia-persistenced"
    failing.write_text(
        f"#!{sys.executable}\nimport sys\n"
        "print('nvidia-persistenced failed to initialize. Check syslog for more details.', file=sys.stderr)\n"
        "sys.exit(1)\n"
    )
    guest.start()
    ready = guest.wait_for("READY")
    assert ready["X_GUESTINIT_DEGRADED"] == "nvidia-persistenced"
    svc = services(ready)
    assert svc["nvidia-persistenced"]["state"] == "failed" and svc["nvidia-persistenced"]["restarts"] == 3
    assert "exited with 1 before it was ready" in str(svc["nvidia-persistenced"]["error"])
    assert svc["nvidia-smi-pl"]["state"] == "exited"
    assert "nvidia-persistenced failed to initialize" in guest.kmsg()
    guest.shutdown()


def test_forking_daemon_gone_before_it_is_adopted_is_a_failure(make_guest: type[GpuGuest]) -> None:
    """The program exits 0 but the pid its file names is gone (here its own): not ready, not
    silently 'exited' — a failure, reported."""
    guest = make_guest((0, 1, 0))
    (guest.path / "usr/bin/nvidia-persistenced").write_text(
        f"#!{sys.executable}\nimport os\n"
        f"os.makedirs({str(guest.path / 'run/nvidia-persistenced')!r}, exist_ok=True)\n"
        f"open({str(guest.path / 'run/nvidia-persistenced/nvidia-persistenced.pid')!r}, 'w')"
        ".write(f'{os.getpid()}\\n')\n"
    )
    guest.start()
    ready = guest.wait_for("READY")
    svc = services(ready)["nvidia-persistenced"]
    assert svc["state"] == "failed"
    assert str(svc["error"]).startswith(
        "exited with 0 but /var/run/nvidia-persistenced/nvidia-persistenced.pid names no running process"
    )
    assert ready["X_GUESTINIT_DEGRADED"] == "nvidia-persistenced"
    guest.shutdown()
