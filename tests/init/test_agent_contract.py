"""The launch contract of a kata-agent that is not PID 1 (references §2b), init side: what
its own init mode would have done (mounts, /dev/ptmx, hostname, lo, PATH), an existing
/etc/resolv.conf, and the VM powering off with EXIT_STATUS= and STATUS= when it ends
(exit_action = "poweroff"), run through the whole ``pid1.run`` on a temporary root. The boot
test with the stand-in agent (tests/boot/test_agent_boot.py) checks the same in QEMU."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_pid1 import PY, REPO, Guest

from guestinit.init import mounts, net
from guestinit.init.root import Root
from guestinit.init.services import files

AGENT_TOML = REPO / "image/mkosi.extra/etc/guestinit/services.d/kata-agent.toml"


@pytest.fixture
def guest(tmp_path: Path) -> Iterator[Guest]:
    g = Guest(tmp_path)
    yield g
    g.close()


def agent(g: Guest, code: str, extra: str = "") -> None:
    """The image's kata-agent.toml with a Python stand-in as its command. Without its
    oom_score_adj and rlimit_nofile: lowering the one and raising the other need
    CAP_SYS_RESOURCE, which a test machine may lack (the boot test checks them in the guest)."""
    table = tomllib.loads(AGENT_TOML.read_text())
    table["command"] = [PY, "-c", code]
    for key in ("condition_path_exists", "oom_score_adj", "rlimit_nofile"):
        del table[key]
    lines = [f"{k} = {json.dumps(v)}" for k, v in table.items()]
    g.service("kata-agent", "\n".join(lines) + "\n" + extra)


def helper(g: Guest) -> None:
    g.service("helper", 'command = ["/bin/sleep", "60"]\nready = "none"\n')


def test_the_images_agent_file_asks_for_all_of_it() -> None:
    spec = files.from_table("kata-agent", str(AGENT_TOML), tomllib.loads(AGENT_TOML.read_text()))
    assert spec.error == "" and spec.problems == []
    assert spec.exit_action == "poweroff" and spec.critical
    assert (spec.oom_score_adj, spec.rlimit_nofile) == (-997, 1048576)
    assert spec.after == ("*",) and spec.kill_mode == "control-group"


def test_agent_exiting_with_a_status_after_ready_powers_off_with_it(guest: Guest) -> None:
    helper(guest)
    agent(guest, "import time; time.sleep(0.5); exit(3)")
    guest.start()
    guest.wait_for("READY")
    failed = guest.wait_for("EXIT_STATUS")
    assert failed["EXIT_STATUS"] == "3"
    assert failed["STATUS"] == "failed: kata-agent: exited with 3"
    assert guest.wait_for("X_SYSTEMD_SHUTDOWN")["X_SYSTEMD_SHUTDOWN"] == "poweroff"
    guest.finish()
    assert "helper: stopping" in guest.kmsg()


def test_agent_killed_reports_128_plus_the_signal(guest: Guest) -> None:
    agent(guest, "import os, time; time.sleep(0.3); os.kill(os.getpid(), 9)")
    guest.start()
    guest.wait_for("READY")
    failed = guest.wait_for("EXIT_STATUS")
    assert (failed["EXIT_STATUS"], failed["STATUS"]) == ("137", "failed: kata-agent: killed by SIGKILL")
    guest.finish()


def test_agent_clean_exit_is_a_clean_shutdown_with_exit_status_0(guest: Guest) -> None:
    """Exit 0 is the agent's answer to DestroySandbox: the sandbox ended normally. The other
    services are stopped in order and the host gets EXIT_STATUS=0."""
    helper(guest)
    agent(guest, "import time; time.sleep(0.5)")
    guest.start()
    guest.wait_for("READY")
    first = guest.wait_for("EXIT_STATUS")
    assert first == {"EXIT_STATUS": "0", "STATUS": "shutting down: kata-agent exited with 0"}
    final = guest.wait_for("X_SYSTEMD_SHUTDOWN")
    assert final["STATUS"] == "powering off (kata-agent exited with 0); stopped helper (SIGTERM)"
    assert [s["name"] for s in json.loads(final["X_GUESTINIT_STOPPED"])] == ["helper"]
    guest.finish()


def test_agent_ending_before_ready_powers_off_without_ready(guest: Guest) -> None:
    """Still in the services phase (here a readiness file that never comes): no READY."""
    agent(guest, "exit(4)", 'ready = { file = "/never" }\n')
    guest.start()
    failed = guest.wait_for("EXIT_STATUS")
    assert failed["EXIT_STATUS"] == "4"
    assert failed["STATUS"] == "failed: kata-agent: exited with 4 before it was ready"  # not critical: 2
    guest.finish()
    assert not any("READY" in m for m in guest.received)


def test_agent_that_cannot_start_powers_off_with_1(guest: Guest) -> None:
    agent(guest, "")
    table = (guest.path / "etc/guestinit/services.d/kata-agent.toml").read_text()
    (guest.path / "etc/guestinit/services.d/kata-agent.toml").write_text(
        table.replace(json.dumps([PY, "-c", ""]), '["/nonexistent/kata-agent"]')
    )
    guest.start()
    failed = guest.wait_for("EXIT_STATUS")
    assert failed["EXIT_STATUS"] == "1"
    assert failed["STATUS"].startswith("failed: kata-agent: exec /nonexistent/kata-agent: [Errno 2]")
    guest.finish()


def test_kata_systemd_keys_pass_without_complaint(tmp_path: Path) -> None:
    """Kata's runtime puts systemd's keys on the command line for its rootfs images; with the
    agent's own keys they are no business of guestinit's: READY's STATUS names no problem."""
    g = Guest(
        tmp_path,
        "systemd.unit=kata-containers.target systemd.mask=systemd-networkd.service "
        "systemd.show_status=false systemd.log_target=console systemd.unified_cgroup_hierarchy=1 "
        "cgroup_no_v1=all agent.log=debug agent.debug_console agent.hotplug_timeout=60",
    )
    try:
        g.start()
        ready = g.wait_for("READY")
        assert ready["STATUS"].startswith("guestinit ") and ";" not in ready["STATUS"], ready["STATUS"]
        assert "agent.log=debug" in (g.path / "proc/cmdline").read_text()  # left for the agent
    finally:
        g.close()


# -- the pieces ---------------------------------------------------------------------------


def test_mounts_are_the_agents_init_mode_ones_plus_tmp() -> None:
    table = {target: (fstype, data) for _src, target, fstype, _flags, data, _req in mounts.MOUNTS}
    assert table == {
        "/proc": ("proc", ""),
        "/sys": ("sysfs", ""),
        "/dev": ("devtmpfs", "mode=0755"),
        "/dev/pts": ("devpts", "gid=5,mode=0620,ptmxmode=0666"),
        "/dev/shm": ("tmpfs", "mode=1777"),
        "/run": ("tmpfs", "mode=0755"),
        "/tmp": ("tmpfs", "mode=1777"),
        "/sys/fs/cgroup": ("cgroup2", "nsdelegate"),
    }


def test_ptmx_becomes_a_link_to_the_devpts_one(tmp_path: Path) -> None:
    (tmp_path / "dev/pts").mkdir(parents=True)
    (tmp_path / "dev/ptmx").write_text("")  # standing in for devtmpfs's c 5:2 node
    assert mounts.link_ptmx(Root(tmp_path)) is True
    assert os.readlink(tmp_path / "dev/ptmx") == "pts/ptmx"
    assert mounts.link_ptmx(Root(tmp_path)) is False  # already a link: left alone


def test_hostname_from_etc_hostname_else_localhost(tmp_path: Path) -> None:
    root = Root(tmp_path)
    assert net.hostname_from(root) == "localhost"
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/hostname").write_text("\n")
    assert net.hostname_from(root) == "localhost"
    (tmp_path / "etc/hostname").write_text("sandbox-7 # the agent takes the first word\n")
    assert net.set_hostname(root) == "sandbox-7"  # not the real root: read, not set
    (tmp_path / "etc/hostname").write_text("x" * 65)
    with pytest.raises(ValueError, match="is over 64 bytes: shorten it"):
        net.set_hostname(root)


def test_hostname_is_set_for_real_in_a_uts_namespace(tmp_path: Path) -> None:
    """The real sethostname, in a UTS namespace of its own (unshare -u) so the machine's name
    is untouched."""
    unshare = shutil.which("unshare")
    if unshare is None or os.geteuid() != 0:
        pytest.skip("needs unshare(1) and root for a UTS namespace")
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import socket\n"
        "from guestinit.init import net; from guestinit.init.root import Root\n"
        "socket.sethostname('before')\n"
        "print(net.set_hostname(Root('/')), socket.gethostname())\n"
    )
    out = subprocess.run(
        [unshare, "-u", sys.executable, "-c", code, str(REPO)], capture_output=True, text=True, check=False
    )
    if out.returncode != 0 and "unshare failed" in out.stderr:
        pytest.skip(f"no UTS namespace here: {out.stderr.strip()}")
    assert out.returncode == 0, out.stderr
    expected = (Path("/etc/hostname").read_text().split() or ["localhost"])[0]
    assert out.stdout.split() == [expected, expected]


def test_resolv_conf_created_empty_when_missing(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    root = Root(tmp_path)
    assert net.ensure_resolv_conf(root) is True
    assert (tmp_path / "etc/resolv.conf").read_text() == ""
    (tmp_path / "etc/resolv.conf").write_text("nameserver 10.0.0.2\n")
    assert net.ensure_resolv_conf(root) is False
    assert (tmp_path / "etc/resolv.conf").read_text() == "nameserver 10.0.0.2\n"  # never touched


def test_the_image_ships_resolv_conf() -> None:
    """The erofs form's root is read-only: the file the agent binds over must be in the image
    (no /etc/hostname is needed: without one the name is localhost, as the agent makes it)."""
    assert (REPO / "image/mkosi.extra/etc/resolv.conf").is_file()
    keep = (REPO / "image/keep.list").read_text().split()
    assert "etc/resolv.conf" in keep
