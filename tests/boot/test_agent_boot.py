"""The kata-agent's launch contract, end to end: the default Kata image booted in QEMU with the
static stand-in agent (tests/kata/standin) at /usr/bin/kata-agent, added by an extra initrd
as an operator would add a real one. The stand-in records what it was started with (its JSON
report on the console) and makes a container's cgroup where the real agent would
(agent.standin_cgroup=); every point of the contract (references §2b) is checked on that
record. Two more boots make it exit (agent.standin_exit=N:S): the VM must power itself off
with EXIT_STATUS= its status and STATUS= the reason, as the host's listener receives them.

Each boot is driven with guestctl boot's own pieces (as test_pid1_boot's Ctrl-Alt-Del test
does), because the report appears after READY (the agent is ready once started) and an exit
comes later still."""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from test_pid1_boot import pack

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kata"))  # the stand-in's harness
from standin_harness import EXIT_MARKER, REPORT_MARKER, Vm, build_standin, console_report

pytestmark = pytest.mark.boot

# What Kata's runtime puts on the command line (its kernel_params default and the systemd keys
# it adds for its images), the agent's own keys, and the stand-in's cgroup key: the
# container's cgroupsPath, as the shim would pass it.
KATA_CMDLINE = (
    "cgroup_no_v1=all systemd.unit=kata-containers.target systemd.mask=systemd-networkd.service "
    "systemd.mask=systemd-networkd.socket systemd.show_status=false agent.log=debug "
    "agent.hotplug_timeout=45"
)
CGROUPS_PATH = "/kubepods/besteffort/pod5e1f/ctr1"

# A service beside the agent that double-forks a grandchild which leaves its session and
# ignores SIGTERM (the daemon that used to escape to the root cgroup), with cgroup limits; its
# main process reports what it sees on its output (the console, with loglevel=7).
DAEMON_TOML = """\
command = ["/usr/local/bin/daemon"]
ready = { log = "^DAEMON " }
stop_timeout = 1
memory_max = "64M"
cpu_weight = 50
"""
DAEMON = """\
#!/usr/bin/python3
import json, os, signal, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        open("/run/grandchild.tmp", "w").write(str(os.getpid()))
        os.rename("/run/grandchild.tmp", "/run/grandchild")
        while True:
            time.sleep(60)
    os._exit(0)
os.wait()
while not os.path.exists("/run/grandchild"):
    time.sleep(0.01)
grandchild = int(open("/run/grandchild").read())
cgroup = "/sys/fs/cgroup/guestinit/daemon/"
print("DAEMON " + json.dumps({
    "grandchild_cgroup": open(f"/proc/{grandchild}/cgroup").read().strip(),
    "grandchild_sid": os.getsid(grandchild), "sid": os.getsid(0),
    "memory_max": open(cgroup + "memory.max").read().strip(),
    "cpu_weight": open(cgroup + "cpu.weight").read().strip(),
}), flush=True)
while True:
    time.sleep(60)
"""


@pytest.fixture(scope="module")
def agent_initrd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A newc archive with the static stand-in at /usr/bin/kata-agent."""
    work = tmp_path_factory.mktemp("agent")
    exe = build_standin(work / "build", "static")
    tree = work / "tree"
    (tree / "usr/bin").mkdir(parents=True)
    shutil.copy2(exe, tree / "usr/bin/kata-agent")
    return pack(tree, work / "agent.cpio")


@pytest.fixture
def vm_factory(kata_image: Path, agent_initrd: Path, tmp_path: Path) -> Iterator[Callable[..., Vm]]:
    vms: list[Vm] = []

    def make(append: str, extras: tuple[Path, ...] = ()) -> Vm:
        vm = Vm(kata_image, [agent_initrd, *extras], append, tmp_path / f"vm{len(vms)}")
        vms.append(vm)
        return vm

    yield make
    for vm in vms:
        vm.close()


def test_the_standin_agent_finds_everything_its_own_init_mode_would_give_it(
    vm_factory: Callable[..., Vm], tmp_path: Path
) -> None:
    tree = tmp_path / "hostname"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/hostname").write_text("kata-sandbox\n")
    (tree / "etc/guestinit/services.d").mkdir(parents=True)
    (tree / "etc/guestinit/services.d/daemon.toml").write_text(DAEMON_TOML)
    (tree / "usr/local/bin").mkdir(parents=True)
    (tree / "usr/local/bin/daemon").write_text(DAEMON)
    (tree / "usr/local/bin/daemon").chmod(0o755)
    extra = pack(tree, tmp_path / "extra.cpio")
    vm = vm_factory(f"loglevel=7 {KATA_CMDLINE} agent.standin_cgroup={CGROUPS_PATH}", (extra,))
    assert vm.until(lambda: vm.first("READY") or vm.exited(), 240), vm.why()
    ready = vm.first("READY")
    assert ready is not None, vm.why()
    assert vm.until(lambda: REPORT_MARKER in vm.console(), 60), vm.why()
    report = console_report(vm.console())
    vm.powerdown()
    assert vm.until(vm.exited, 60), vm.why()
    vm.until(lambda: False, 0.5)  # what arrived just before QEMU exited
    print("\nstand-in report: " + json.dumps(report, indent=1, sort_keys=True))

    # started by init as a service, in its own session, with NVRC's limits
    assert report["ppid"] == 1 and report["sid"] == report["pid"] == report["pgid"]
    assert report["oom_score_adj"] == -997
    assert report["rlimit_nofile"] == {"soft": 1048576, "hard": 1048576}
    assert report["uid"] == 0 and report["sig_blocked"] == "0000000000000000"
    assert report["child_subreaper"] is True
    assert report["stdio"][0] == "/dev/null"
    assert "/usr/bin" in report["path"].split(":") and "/bin" in report["path"].split(":")
    # what the agent's init mode mounts, /tmp, and cgroup2
    mounts = {m["target"]: m["type"] for m in report["mounts"]}
    expected = {
        "/proc": "proc",
        "/sys": "sysfs",
        "/dev": "devtmpfs",
        "/dev/shm": "tmpfs",
        "/dev/pts": "devpts",
        "/run": "tmpfs",
        "/tmp": "tmpfs",
        "/sys/fs/cgroup": "cgroup2",
    }
    assert {t: mounts.get(t) for t in expected} == expected
    assert report["ptmx"] == "-> pts/ptmx"
    assert report["hostname"] == "kata-sandbox"
    assert report["lo_up"] is True
    assert report["resolv_conf"] is True
    # the agent's keys left for it; Kata's systemd keys troubled nobody
    assert report["agent_cmdline"]["agent.log"] == "debug"
    assert report["agent_cmdline"]["agent.hotplug_timeout"] == "45"
    status = ready["STATUS"]
    assert "systemd" not in status and "unknown" not in status and "cgroup" not in status, status
    # its own cgroup, and a container's cgroup made where the real agent makes it
    assert report["cgroup"] == "0::/guestinit/kata-agent"
    probe = report["cgroup_probe"]
    assert probe["path"] == f"/sys/fs/cgroup{CGROUPS_PATH}" and probe["unified"] is True
    assert (probe["mkdir"], probe["move"], probe["moved_to"]) == ("ok", "ok", CGROUPS_PATH), probe
    assert {"cpu", "memory", "pids"} <= set(probe["controllers"].split()), probe
    assert (probe["memory_max"], probe["pids_max"], probe["enable_refused"]) == ("ok", "ok", []), probe
    assert probe["removed"] is True
    # init's report: the phase, the agent's cgroup figures, the ordered stop
    phases = [p["name"] for p in json.loads(ready["X_GUESTINIT_PHASES"])]
    assert phases.index("system") < phases.index("services")
    agent = next(s for s in json.loads(ready["X_GUESTINIT_SERVICES"]) if s["name"] == "kata-agent")
    assert agent["state"] == "ready" and agent["pid"] == report["pid"]
    assert isinstance(agent["memory_current"], int) and isinstance(agent["cpu_usec"], int)
    # the double-forked daemon: in its service's cgroup, limited, and killed with it
    console = vm.console()
    daemon = json.loads(console.split("DAEMON ", 1)[1].splitlines()[0])
    assert daemon["grandchild_cgroup"] == "0::/guestinit/daemon", daemon
    assert daemon["grandchild_sid"] != daemon["sid"]  # out of the session: a tree walk missed it
    assert (daemon["memory_max"], daemon["cpu_weight"]) == (str(64 << 20), "50")
    final = vm.first("X_SYSTEMD_SHUTDOWN")
    assert final is not None and final["X_SYSTEMD_SHUTDOWN"] == "poweroff", vm.why()
    stopped = [(s["name"], s["how"]) for s in json.loads(final["X_GUESTINIT_STOPPED"])]
    assert stopped == [("kata-agent", "SIGTERM"), ("daemon", "SIGKILL")]  # the agent first: after *
    assert "daemon: still running after SIGTERM: cgroup.kill" in console
    assert vm.proc.returncode == 0


@pytest.mark.parametrize(("status", "after_s"), [(3, 2), (0, 2)])
def test_the_agent_exiting_powers_the_vm_off_with_its_status(
    vm_factory: Callable[..., Vm], status: int, after_s: int
) -> None:
    vm = vm_factory(f"{KATA_CMDLINE} agent.standin_exit={status}:{after_s}")
    assert vm.until(lambda: vm.first("READY") or vm.exited(), 240), vm.why()
    assert vm.first("READY") is not None, vm.why()
    assert vm.until(lambda: vm.first("EXIT_STATUS"), 60), vm.why()
    reported = time.monotonic()
    assert vm.until(vm.exited, 60), vm.why()  # it powered itself off
    took = time.monotonic() - reported
    vm.until(lambda: False, 0.5)
    report = console_report(vm.console())
    assert report["hostname"] == "localhost"  # no /etc/hostname in the image
    assert f"{EXIT_MARKER}status={status} after={after_s}" in vm.console()
    first = vm.first("EXIT_STATUS")
    assert first is not None and first["EXIT_STATUS"] == str(status)
    if status:
        assert first["STATUS"] == f"failed: kata-agent: exited with {status}"
    else:
        assert first["STATUS"] == "shutting down: kata-agent exited with 0"
    final = vm.first("X_SYSTEMD_SHUTDOWN")
    assert final is not None and final["X_SYSTEMD_SHUTDOWN"] == "poweroff", vm.why()
    assert vm.proc.returncode == 0
    print(f"\nagent exit {status}: EXIT_STATUS -> QEMU exit {took:.3f} s; messages {vm.messages[1:]}")
