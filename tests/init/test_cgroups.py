"""Per-service cgroups (guestinit/init/cgroups.py and the supervisor's use of them).

Two kinds of test, as psutil does it: the file-level work against a fake cgroupfs (a plain
directory tree, through the injectable mount path), and the supervisor against the real
cgroup2 hierarchy of this machine, in a cgroup of the test's own, where the kernel allows it
(root, cgroup2 mounted and writable, cgroup.kill): elsewhere those tests are skipped with the
reason."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cgroup2_host import cgroup_of, make_test_cgroup, remove_test_cgroup
from test_services import Rig, alive, rig, script

from guestinit.init import cgroups
from guestinit.init.cgroups import CgroupTree
from guestinit.init.root import Root
from guestinit.init.services import files, spawn
from guestinit.init.services.supervisor import Supervisor, exit_code

# -- a fake cgroupfs ----------------------------------------------------------------------


INTERFACE = ("cgroup.procs", "cgroup.subtree_control", "cgroup.events", "cgroup.controllers")


def fake_cgroup(path: Path) -> Path:
    """A directory with the interface files the kernel gives a new cgroup (empty: the tests
    write what they need)."""
    path.mkdir(parents=True, exist_ok=True)
    for name in INTERFACE:
        (path / name).write_text("")
    return path


def fake_mount(tmp_path: Path, controllers: str = "cpuset cpu io memory hugetlb pids rdma misc") -> Path:
    mount = fake_cgroup(tmp_path / "cgroup")
    (mount / "cgroup.controllers").write_text(controllers + "\n")
    fake_cgroup(mount / "guestinit")
    return mount


def test_setup_enables_the_services_controllers_in_the_root_and_in_guestinit(tmp_path: Path) -> None:
    mount = fake_mount(tmp_path)
    tree, problems = cgroups.setup(str(mount))
    assert tree is not None
    assert (mount / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    assert (mount / "guestinit/cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    assert tree.controllers == ("cpu", "memory", "pids")
    # a plain directory has no cgroup.kill: said once, and the supervisor signals each pid
    assert problems == ["no cgroup.kill (Linux < 5.14): a stopped service's processes are killed one by one"]
    assert tree.can_kill is False


def test_setup_names_missing_controllers_and_degrades_without_cgroup2(tmp_path: Path) -> None:
    mount = fake_mount(tmp_path, "cpu pids")
    (mount / "guestinit/cgroup.kill").write_text("")
    tree, problems = cgroups.setup(str(mount))
    assert tree is not None and tree.controllers == ("cpu", "pids") and tree.can_kill
    assert problems == ["cgroup controllers not available to services: memory"]
    assert tree.limit("svc", 64 << 20, None) == ["memory.max not set: no memory controller for services"]
    assert cgroups.setup(str(tmp_path / "nothing")) == (
        None,
        [f"no cgroup2 at {tmp_path}/nothing: services run without cgroups (stopped by their process tree)"],
    )


def test_tree_reads_stats_events_and_writes_limits(tmp_path: Path) -> None:
    tree = CgroupTree(str(fake_mount(tmp_path)))
    tree.controllers = ("cpu", "memory", "pids")
    tree.create("svc")
    svc = fake_cgroup(Path(tree.path("svc")))
    assert tree.stats("svc") == {} and tree.pids("svc") == [] and not tree.populated("svc")
    (svc / "memory.current").write_text("1323008\n")
    (svc / "cpu.stat").write_text("usage_usec 48211\nuser_usec 40000\nsystem_usec 8211\n")
    (svc / "cgroup.procs").write_text("12\n34\n")
    (svc / "cgroup.events").write_text("populated 1\nfrozen 0\n")
    assert tree.stats("svc") == {"memory_current": 1323008, "cpu_usec": 48211}
    assert tree.pids("svc") == [12, 34] and tree.populated("svc")
    (svc / "cgroup.events").write_text("populated 0\nfrozen 0\n")
    assert not tree.populated("svc")
    (svc / "memory.max").write_text("")  # the kernel's files take the value written; a plain
    (svc / "cpu.weight").write_text("")  # file keeps a longer old text's tail: start empty
    assert tree.limit("svc", 512 << 20, 50) == []
    assert (svc / "memory.max").read_text() == str(512 << 20)
    assert (svc / "cpu.weight").read_text() == "50"
    assert tree.kill("svc") is False  # no cgroup.kill


def test_the_child_enters_its_cgroup_before_exec(tmp_path: Path) -> None:
    """spawn writes the child's own pid to the cgroup.procs it was given, before exec: on a
    fake tree the file keeps what was written."""
    tree = CgroupTree(str(fake_mount(tmp_path)))
    tree.create("svc")
    fake_cgroup(Path(tree.path("svc")))
    fd = tree.open_procs("svc")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    creds = spawn.resolve(Root(tmp_path), "root")
    out = os.open(os.devnull, os.O_WRONLY)
    try:
        pid = spawn.spawn(("/bin/true",), {}, creds, out, out, cgroup_fd=fd)
    finally:
        os.close(fd)
        os.close(out)
    os.waitpid(pid, 0)
    assert Path(tree.path("svc", "cgroup.procs")).read_text() == str(pid)


def test_exit_codes_as_a_shell_reports_them() -> None:
    assert exit_code(3 << 8) == 3
    assert exit_code(0) == 0
    assert exit_code(signal.SIGKILL) == 137
    assert exit_code(signal.SIGTERM) == 143


# -- the real cgroup2 hierarchy --------------------------------------------------------------


class Real:
    """The supervisor rig with a real cgroup tree, in a fresh cgroup under this process's own
    that stands in for the root of the cgroup2 mount."""

    def __init__(self, rig: Rig, mount: Path) -> None:
        self.rig = rig
        self.mount = mount
        tree, problems = cgroups.setup(str(mount))
        assert tree is not None and tree.can_kill, problems
        self.tree = tree

    def start(self, **kwargs: float) -> Supervisor:
        rig = self.rig
        rig.sup = Supervisor(rig.root, rig.loop, rig.reaper, rig.log, rig.ring, cgroups=self.tree, **kwargs)  # type: ignore[arg-type]
        rig.sup.add(files.load_all(rig.root))
        rig.sup.start()
        return rig.sup


__all__ = ["rig"]  # the supervisor rig of test_services.py, as a fixture here too


@pytest.fixture
def real(rig: Rig) -> Iterator[Real]:
    mount, why = make_test_cgroup()
    if mount is None:
        pytest.skip(f"no real cgroup test here: {why}")
    r = Real(rig, mount)
    try:
        yield r
    finally:
        if rig.sup is not None:
            rig.sup.stop_all(time.monotonic() + 5)
        remove_test_cgroup(mount, rig.reaper.reap)


def wait_for_lines(real: Real, path: Path, count: int) -> list[int]:
    deadline = time.monotonic() + 10
    while not path.exists() or len(path.read_text().split()) < count:
        assert time.monotonic() < deadline, f"{path}: {path.read_text() if path.exists() else 'missing'}"
        real.rig.loop.run_once(0.05)
    return [int(p) for p in path.read_text().split()]


# A daemon that double-forks and leaves its session, as the report found one escaping: the
# main process exits at once, its grandchild (optionally deaf to SIGTERM) goes on.
DAEMON = """
    import os, signal, sys, time
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            if "{deaf}" == "deaf":
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            with open("{pids}.tmp", "w") as f:
                f.write(f"{{os.getpid()}}\\n")
            os.rename("{pids}.tmp", "{pids}")
            time.sleep(120)
        os._exit(0)
    os.wait()
    while not os.path.exists("{pids}"):  # the grandchild is set up
        time.sleep(0.01)
    print("forked", flush=True)
    time.sleep({main_s})
"""


def test_a_double_forked_daemon_is_in_its_service_cgroup_and_dies_with_it(real: Real) -> None:
    pids = real.rig.shared / "pids"
    code = DAEMON.format(deaf="deaf", pids=pids, main_s=120)
    real.rig.service(
        "daemon", f'command = {script(code)}\nready = {{ log = "forked" }}\nstop_timeout = 0.3\n'
    )
    sup = real.start()
    real.rig.settle()
    main = sup.services["daemon"].pid
    (grandchild,) = wait_for_lines(real, pids, 1)
    tree = real.tree
    assert cgroup_of(grandchild) == cgroup_of(main) and cgroup_of(main).endswith("/guestinit/daemon")
    assert sorted(tree.pids("daemon")) == sorted([main, grandchild])
    summary = sup.summary()[0]
    assert isinstance(summary["cpu_usec"], int) and summary["cpu_usec"] > 0
    if "memory" in tree.controllers:
        assert isinstance(summary["memory_current"], int) and summary["memory_current"] > 0
    records = sup.stop_all(time.monotonic() + 10)
    assert [(r["name"], r["how"]) for r in records] == [("daemon", "SIGKILL")]  # deaf: cgroup.kill
    assert not alive(grandchild) and not tree.populated("daemon")
    assert "daemon: still running after SIGTERM: cgroup.kill" in real.rig.kmsg()


def test_what_an_exited_main_process_leaves_behind_is_stopped(real: Real) -> None:
    """The report's case: the main process exits 0 after double-forking; the grandchild used
    to live on in the root cgroup until the final kill(-1)."""
    pids = real.rig.shared / "pids"
    real.rig.service("polite", f"command = {script(DAEMON.format(deaf='', pids=pids, main_s=0))}\n")
    deaf_pids = real.rig.shared / "deaf-pids"
    real.rig.service(
        "deaf",
        f"command = {script(DAEMON.format(deaf='deaf', pids=deaf_pids, main_s=0))}\nstop_timeout = 0.3\n",
    )
    sup = real.start()
    real.rig.settle()
    (polite,) = wait_for_lines(real, pids, 1)
    (deaf,) = wait_for_lines(real, deaf_pids, 1)
    deadline = time.monotonic() + 10
    while alive(polite) or alive(deaf):
        assert time.monotonic() < deadline, (alive(polite), alive(deaf))
        real.rig.loop.run_once(0.05)
    assert {s.name: s.state for s in sup.services.values()} == {"polite": "exited", "deaf": "exited"}
    kmsg = real.rig.kmsg()
    assert "polite: 1 left behind: SIGTERM, cgroup.kill after 3 s" in kmsg
    assert "deaf: processes left behind still running after SIGTERM: cgroup.kill" in kmsg


def test_kill_mode_process_leaves_the_rest_running(real: Real) -> None:
    pids = real.rig.shared / "pids"
    code = DAEMON.format(deaf="", pids=pids, main_s=120)
    real.rig.service(
        "loose", f'command = {script(code)}\nready = {{ log = "forked" }}\nkill_mode = "process"\n'
    )
    sup = real.start()
    real.rig.settle()
    (grandchild,) = wait_for_lines(real, pids, 1)
    records = sup.stop_all(time.monotonic() + 10)
    assert [(r["name"], r["how"]) for r in records] == [("loose", "SIGTERM")]
    assert alive(grandchild)  # as the service file asked; still counted in its cgroup
    tree = real.tree
    assert tree.pids("loose") == [grandchild]


def test_without_cgroup_kill_each_process_is_killed(real: Real) -> None:
    pids = real.rig.shared / "pids"
    code = DAEMON.format(deaf="deaf", pids=pids, main_s=120)
    real.rig.service("old", f'command = {script(code)}\nready = {{ log = "forked" }}\nstop_timeout = 0.2\n')
    real.tree.can_kill = False
    sup = real.start()
    real.rig.settle()
    (grandchild,) = wait_for_lines(real, pids, 1)
    records = sup.stop_all(time.monotonic() + 10)
    assert [(r["name"], r["how"]) for r in records] == [("old", "SIGKILL")]
    assert not alive(grandchild)


def test_probes_run_in_the_services_cgroup_and_restarts_reuse_it(real: Real) -> None:
    seen = real.rig.shared / "probe-cgroup"
    probe = script(f'open("{seen}", "w").write(open("/proc/self/cgroup").read())')
    count = real.rig.shared / "count"
    code = f"""
        import sys
        n = len(open("{count}").read()) if __import__("os").path.exists("{count}") else 0
        open("{count}", "a").write("x")
        sys.exit(0 if n else 4)
    """
    real.rig.service("twice", f'command = {script(code)}\nready = "exit"\nrestart = "on-failure"\n')
    real.rig.service("probed", f'command = ["/bin/sleep", "60"]\nready = {{ command = {probe} }}\n')
    sup = real.start()
    real.rig.settle()
    assert sup.services["twice"].state == "exited" and sup.services["twice"].starts == 2
    assert seen.read_text().strip().endswith("/guestinit/probed")
    sup.stop_all(time.monotonic() + 10)


# -- the service-file keys ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "field", "value"),
    [
        ({"memory_max": "512M"}, "memory_max", 512 << 20),
        ({"memory_max": "4g"}, "memory_max", 4 << 30),
        ({"memory_max": 1 << 30}, "memory_max", 1 << 30),
        ({"cpu_weight": 10000}, "cpu_weight", 10000),
        ({"kill_mode": "process"}, "kill_mode", "process"),
        ({"exit_action": "poweroff"}, "exit_action", "poweroff"),
        ({}, "kill_mode", "control-group"),
        ({}, "exit_action", "none"),
        ({}, "memory_max", None),
    ],
)
def test_cgroup_and_exit_keys(table: dict[str, object], field: str, value: object) -> None:
    spec = files.from_table("svc", "/etc/guestinit/services.d/svc.toml", {"command": ["/bin/true"], **table})
    assert spec.error == "" and getattr(spec, field) == value


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"memory_max": "1K"}, "memory_max: must be a size of at least 1M: bytes, or a string such as"),
        ({"memory_max": "lots"}, "memory_max: must be a size of at least 1M"),
        ({"memory_max": True}, "memory_max: must be a size of at least 1M"),
        ({"cpu_weight": 0}, "cpu_weight: must be a whole number from 1 to 10000 (the default weight is 100)"),
        ({"kill_mode": "mixed"}, "kill_mode: must be one of 'control-group', 'process'"),
        ({"exit_action": "reboot"}, "exit_action: must be one of 'none', 'poweroff'"),
    ],
)
def test_bad_cgroup_and_exit_keys_name_the_key_and_the_fix(table: dict[str, object], message: str) -> None:
    spec = files.from_table("svc", "/x/svc.toml", {"command": ["/bin/true"], **table})
    assert spec.error.startswith(f"/x/svc.toml: {message}"), spec.error
