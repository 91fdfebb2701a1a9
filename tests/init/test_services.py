"""The supervisor against a temporary root: real processes (/bin/true, sleep, Python scripts),
the real loop, signalfd and reaper. Service programs run under /usr/bin/python3 so that they
can also run as ``nobody``."""

from __future__ import annotations

import itertools
import json
import os
import signal
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from guestinit.init.kmsg import Log
from guestinit.init.loop import Loop, SignalFd
from guestinit.init.reaper import Reaper
from guestinit.init.root import Root
from guestinit.init.services import files
from guestinit.init.services.supervisor import Supervisor
from guestinit.init.syslog import Ring

PY = "/usr/bin/python3"


class Rig:
    """A temporary guest root with a loop, a SIGCHLD signalfd, the reaper and a supervisor."""

    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path
        self.root = Root(tmp_path)
        (tmp_path / "etc/guestinit/services.d").mkdir(parents=True)
        (tmp_path / "etc/passwd").write_text(
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
        )
        (tmp_path / "etc/group").write_text("root:x:0:\nnogroup:x:65534:\nvideo:x:44:nobody\n")
        (tmp_path / "kmsg").write_text("")
        self.shared = tmp_path / "shared"  # /shared in the guest root
        self.shared.mkdir()
        self.loop = Loop()
        self.reaper = Reaper()
        self.signals = SignalFd({signal.SIGCHLD})
        self.loop.add_reader(self.signals.fd, self._sigchld)
        self.log = Log(str(tmp_path / "kmsg"))
        self.ring = Ring(str(tmp_path / "run/syslog.log"))
        self.sup: Supervisor | None = None
        if threading.active_count() > 1:
            # A thread an earlier test left running has SIGCHLD unblocked, so the kernel may
            # deliver it there (and drop it) instead of to the signalfd. PID 1 blocks its
            # signals before any thread exists (tests/init/test_pid1.py runs it that way);
            # here a periodic reap stands in for the lost signals.
            self._backstop()

    def _backstop(self) -> None:
        self.reaper.reap()
        self.loop.call_later(0.05, self._backstop)

    def _sigchld(self) -> None:
        self.signals.read()
        self.reaper.reap()

    def service(self, name: str, text: str) -> None:
        (self.path / f"etc/guestinit/services.d/{name}.toml").write_text(textwrap.dedent(text))

    def start(self, **kwargs: float) -> Supervisor:
        self.sup = Supervisor(self.root, self.loop, self.reaper, self.log, self.ring, **kwargs)  # type: ignore[arg-type]
        self.sup.add(files.load_all(self.root))
        self.sup.start()
        return self.sup

    def settle(self, timeout: float = 20.0) -> Supervisor:
        assert self.sup is not None
        assert self.loop.run_until(self.sup.settled, time.monotonic() + timeout), self.sup.summary()
        return self.sup

    def run_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        self.loop.run_until(lambda: False, deadline)

    def kmsg(self) -> str:
        return (self.path / "kmsg").read_text()

    def close(self) -> None:
        if self.sup is not None:
            self.sup.stop_all(time.monotonic() + 5)
        self.signals.close()
        self.loop.close()
        self.ring.close()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    r = Rig(tmp_path)
    try:
        yield r
    finally:
        r.close()
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        while True:  # collect anything a failed test left behind
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break


def script(code: str) -> str:
    """A TOML command line running Python code under the system interpreter."""
    return json.dumps([PY, "-c", textwrap.dedent(code)])


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except OSError:
        return False


def test_independent_services_start_in_parallel(rig: Rig) -> None:
    # Each one becomes ready only after seeing the other's marker: started one after the
    # other (waiting for readiness between), neither could ever be ready.
    for me, other in (("left", "right"), ("right", "left")):
        code = f"""
            import os, time
            open("{rig.shared}/{me}", "w").close()
            while not os.path.exists("{rig.shared}/{other}"):
                time.sleep(0.01)
            open("{rig.shared}/{me}.ready", "w").close()
            time.sleep(60)
        """
        rig.service(me, f'command = {script(code)}\nready = {{ file = "/shared/{me}.ready" }}\n')
    sup = rig.start(ready_timeout=10)
    rig.settle()
    assert {s.name: s.state for s in sup.services.values()} == {"left": "ready", "right": "ready"}


def test_after_orders_start_and_stop_reverses_it(rig: Rig) -> None:
    events = rig.shared / "events"
    for name, after in (("a", []), ("b", ["a"]), ("c", ["b"]), ("d", [])):
        code = f"""
            import os, signal, sys
            def log(what):
                with open("{events}", "a") as f:
                    f.write(what + "\\n")
            def stop(*_):
                log("stop {name}")
                sys.exit(0)
            signal.signal(signal.SIGTERM, stop)
            log("start {name}")
            print("up", flush=True)
            while True:
                signal.pause()
        """
        ready = 'ready = { log = "^up$" }'
        rig.service(name, f"command = {script(code)}\nafter = {json.dumps(after)}\n{ready}\n")
    sup = rig.start()
    rig.settle()
    lines = events.read_text().split()
    starts = [lines[i + 1] for i in range(0, len(lines), 2) if lines[i] == "start"]
    assert starts.index("a") < starts.index("b") < starts.index("c")
    records = sup.stop_all(time.monotonic() + 10)
    stopped = [r["name"] for r in records]
    assert stopped.index("c") < stopped.index("b") < stopped.index("a")
    assert all(r["how"] == "SIGTERM" for r in records)
    stops = [w for w in events.read_text().split("\n") if w.startswith("stop")]
    assert stops.index("stop c") < stops.index("stop b") < stops.index("stop a")


def test_every_readiness_kind(rig: Rig, tmp_path: Path) -> None:
    sock = tmp_path / "daemon.sock"
    rig.service(
        "unix",
        f"""
        command = {
            script(f'''
            import socket, time
            time.sleep(0.2)
            s = socket.socket(socket.AF_UNIX)
            s.bind("{sock}")
            s.listen()
            while True:
                s.accept()[0].close()
        ''')
        }
        ready = {{ socket = "/daemon.sock" }}
        """,
    )
    rig.service(
        "tcp",
        f"""
        command = {
            script('''
            import socket, time
            time.sleep(0.2)
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", 47613))
            s.listen()
            while True:
                s.accept()[0].close()
        ''')
        }
        ready = {{ tcp = "127.0.0.1:47613" }}
        """,
    )
    rig.service(
        "file",
        f"""
        command = {
            script(f'''
            import os, time
            time.sleep(0.2)
            os.makedirs("{rig.shared}/deep/er")
            open("{rig.shared}/deep/er/ready", "w").close()
            time.sleep(60)
        ''')
        }
        ready = {{ file = "/shared/deep/er/ready" }}
        """,
    )
    rig.service(
        "log",
        f"""
        command = {
            script('''
            import sys, time
            print("warming up", flush=True)
            time.sleep(0.2)
            print("Local RPC services initialized", file=sys.stderr, flush=True)
            time.sleep(60)
        ''')
        }
        ready = {{ log = "RPC services initialized" }}
        """,
    )
    counter = rig.shared / "probe-count"
    rig.service(
        "command",
        f"""
        command = ["/bin/sleep", "60"]
        ready = {{ command = {
            script(f'''
            import sys
            p = "{counter}"
            try:
                n = int(open(p).read())
            except OSError:
                n = 0
            open(p, "w").write(str(n + 1))
            sys.exit(0 if n >= 2 else 1)
        ''')
        } }}
        """,
    )
    rig.service("none", 'command = ["/bin/sleep", "60"]\nready = "none"\n')
    sup = rig.start(ready_timeout=15)
    rig.settle()
    assert {s.name: s.state for s in sup.services.values()} == dict.fromkeys(
        ("command", "file", "log", "none", "tcp", "unix"), "ready"
    )
    assert counter.read_text() == "3"  # failed twice, retried, then exited 0
    details = {s.name: s.ready_detail for s in sup.services.values()}
    assert "Local RPC services initialized" in details["log"]
    assert details["file"].endswith("/deep/er/ready exists")


def test_crash_is_restarted_with_backoff_then_given_up(rig: Rig) -> None:
    starts = rig.shared / "starts"
    code = f"""
        import sys, time
        open("{starts}", "a").write(f"{{time.monotonic()}}\\n")
        print("crashing", flush=True)
        sys.exit(3)
    """
    rig.service(
        "crasher",
        f'command = {script(code)}\nready = {{ file = "/never" }}\nrestart = "on-failure"\n'
        "max_restarts = 3\n",
    )
    rig.service("fine", 'command = ["/bin/sleep", "60"]\n')
    sup = rig.start()
    rig.settle()
    svc = sup.services["crasher"]
    assert svc.state == "failed"
    assert "exited with 3 before it was ready; gave up after 3 restarts" in svc.error
    assert sup.degraded() == ["crasher"]
    assert sup.critical_failure() is None
    times = [float(t) for t in starts.read_text().split()]
    assert len(times) == 4  # the first start and three restarts
    gaps = [b - a for a, b in itertools.pairwise(times)]
    for gap, backoff in zip(gaps, (0.1, 0.2, 0.4), strict=True):
        assert gap >= backoff  # exponential back-off: each wait at least doubles
    assert rig.kmsg().count("crasher[") == 4  # each run's output reached kmsg with its name


def test_exit_before_ready_fails_at_once(rig: Rig) -> None:
    rig.service("quitter", 'command = ["/bin/false"]\nready = { file = "/never" }\nready_timeout = 600\n')
    sup = rig.start()
    rig.settle(timeout=20)  # far below the 600 s ready_timeout: the exit itself ended the wait
    assert sup.services["quitter"].error == "exited with 1 before it was ready"


def test_ready_timeout_stops_the_service(rig: Rig) -> None:
    rig.service("slow", 'command = ["/bin/sleep", "60"]\nready = { file = "/never" }\nready_timeout = 0.3\n')
    sup = rig.start()
    pid = sup.services["slow"].pid
    rig.settle()
    assert sup.services["slow"].error == "not ready (file) within 0.3 s"
    assert not alive(pid)


def test_critical_failure_and_bad_files(rig: Rig) -> None:
    rig.service("agent", 'command = ["/bin/false"]\ncritical = true\nready = { file = "/never" }\n')
    rig.service("typo", 'command = "/bin/true"\n')
    rig.service("broken", "command = [\n")
    sup = rig.start()
    rig.settle()
    failure = sup.critical_failure()
    assert failure is not None and failure.startswith("critical service agent failed: exited with 1")
    assert sup.services["typo"].error.endswith(
        'typo.toml: command: must be a non-empty list of strings, e.g. ["/usr/bin/daemon", "--flag"]'
    )
    assert "broken.toml: not valid TOML" in sup.services["broken"].error
    assert sorted(sup.degraded()) == ["broken", "typo"]


def test_condition_missing_binary_and_disabled(rig: Rig) -> None:
    rig.service("agent", 'command = ["/usr/bin/kata-agent"]\ncondition_path_exists = "/usr/bin/kata-agent"\n')
    rig.service("missing", 'command = ["/nonexistent/daemon"]\n')
    rig.service("off", 'command = ["/bin/sleep", "60"]\n')
    rig.sup = Supervisor(rig.root, rig.loop, rig.reaper, rig.log, rig.ring)
    rig.sup.add(files.load_all(rig.root), disabled=("off",))
    rig.sup.start()
    sup = rig.settle()
    states = {s.name: s.state for s in sup.services.values()}
    assert states == {"agent": "skipped", "missing": "failed", "off": "disabled"}
    assert "exec /nonexistent/daemon: [Errno 2] No such file or directory" in sup.services["missing"].error


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory ``nobody`` can write to (pytest's tmp_path is private to root)."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="guestinit-test-"))
    path.chmod(0o1777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_clean_environment_signal_mask_user_and_limits(rig: Rig, open_dir: Path) -> None:
    out = open_dir / "facts.json"
    code = f"""
        import json, os, resource
        status = dict(line.split(":", 1) for line in open("/proc/self/status"))
        facts = {{
            "env": dict(os.environ),
            "sigblk": int(status["SigBlk"], 16),
            "uid": os.getresuid(), "gid": os.getresgid(), "groups": sorted(os.getgroups()),
            "oom": int(open("/proc/self/oom_score_adj").read()),
            "nofile": resource.getrlimit(resource.RLIMIT_NOFILE),
            "session_leader": os.getsid(0) == os.getpid(),
            "stdin": os.readlink("/proc/self/fd/0"),
            "cwd": os.getcwd(),
        }}
        json.dump(facts, open("{out}", "w"))
    """
    rig.service(
        "facts",
        f"""
        command = {script(code)}
        user = "nobody"
        environment = {{ LANG = "C.UTF-8", FABRIC_MODE = "1" }}
        oom_score_adj = 500
        rlimit_nofile = 4096
        """,
    )
    # Python itself ignores SIGPIPE and SIGXFSZ, so a non-Python program reports what a
    # service inherits: nothing blocked, nothing ignored.
    rig.service("mask", 'command = ["/bin/grep", "-E", "^Sig(Blk|Ign)", "/proc/self/status"]\n')
    os.environ["GUESTINIT_TEST_LEAK"] = "must not reach services"
    try:
        rig.start()
        rig.settle()
        rig.run_for(0.1)
        deadline = time.monotonic() + 10
        while not out.exists() or not out.read_text():
            assert time.monotonic() < deadline
            rig.loop.run_once(0.05)
    finally:
        del os.environ["GUESTINIT_TEST_LEAK"]
    facts = json.loads(out.read_text())
    assert facts["env"] == {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/nonexistent",
        "USER": "nobody",
        "LOGNAME": "nobody",
        "LANG": "C.UTF-8",
        "FABRIC_MODE": "1",
    }
    assert facts["sigblk"] == 0  # init blocks SIGCHLD here; the service must not inherit it
    assert facts["uid"] == [65534, 65534, 65534]
    assert facts["gid"] == [65534, 65534, 65534]
    assert facts["groups"] == [44, 65534]  # nogroup and video, which lists nobody
    assert facts["oom"] == 500
    assert facts["nofile"] == [4096, 4096]
    assert facts["session_leader"] is True
    assert facts["stdin"] == "/dev/null"
    assert facts["cwd"] == "/"
    kmsg = rig.kmsg()
    assert "]: SigBlk:\t0000000000000000\n" in kmsg
    # Every signal a process can set is back to its default. glibc reserves 32 and 33 for
    # itself (no API resets them); a CI runner may start us with one of those ignored.
    ignored = int(kmsg.split("]: SigIgn:\t", 1)[1].split("\n", 1)[0], 16)
    settable = sum(1 << (int(sig) - 1) for sig in signal.valid_signals() if int(sig) <= 64)
    assert ignored & settable == 0, f"SigIgn {ignored:016x}"


def test_stop_kills_the_whole_tree_after_stop_timeout(rig: Rig) -> None:
    pids = rig.shared / "pids"
    code = f"""
        import os, signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if os.fork() == 0:          # a child that ignores SIGTERM too
            if os.fork() == 0:      # and a grandchild that leaves the session
                os.setsid()
                open("{pids}", "a").write(f"{{os.getpid()}}\\n")
                time.sleep(60)
                os._exit(0)
            open("{pids}", "a").write(f"{{os.getpid()}}\\n")
            time.sleep(60)
            os._exit(0)
        open("{pids}", "a").write(f"{{os.getpid()}}\\n")
        time.sleep(60)
    """
    rig.service("stubborn", f"command = {script(code)}\nstop_timeout = 0.3\n")
    sup = rig.start()
    rig.settle()
    deadline = time.monotonic() + 10
    while not pids.exists() or len(pids.read_text().split()) < 3:
        assert time.monotonic() < deadline
        rig.loop.run_once(0.05)
    tree = [int(p) for p in pids.read_text().split()]
    assert all(alive(p) for p in tree)
    records = sup.stop_all(time.monotonic() + 10)
    assert records == [{"name": "stubborn", "how": "SIGKILL", "s": records[0]["s"]}]
    assert isinstance(records[0]["s"], float) and records[0]["s"] >= 0.3
    rig.run_for(0.2)  # the re-parented ones are reaped on SIGCHLD
    assert not [p for p in tree if alive(p)]


def test_output_reaches_kmsg_and_ring_with_the_name(rig: Rig) -> None:
    code = """
        import sys
        print("to stdout", flush=True)
        print("to stderr", file=sys.stderr, flush=True)
        sys.stdout.write("no newline at the end")
    """
    rig.service("talker", f'command = {script(code)}\nready = {{ log = "no newline" }}\n')
    sup = rig.start()
    rig.settle()
    pid = sup.services["talker"].out_pid
    kmsg = rig.kmsg()
    for text in ("to stdout", "to stderr", "no newline at the end"):
        assert f"<6>talker[{pid}]: {text}\n" in kmsg
    ring = (rig.path / "run/syslog.log").read_text()
    assert f"talker[{pid}]: to stderr\n" in ring


def test_syslog_line_of_a_service_makes_it_ready(rig: Rig) -> None:
    """NVRC's way for fabricmanager: ready when its syslog says so. The line reaches /dev/log
    from the daemon's child; another service logging the same words does not count."""
    from guestinit.init.syslog import Syslog

    (rig.path / "dev").mkdir()
    syslog = Syslog(
        rig.root, rig.loop, rig.log, rig.ring, lambda pid, ident: rig.sup and rig.sup.owner(pid, ident)
    )
    syslog.open()
    dev_log = str(rig.path / "dev/log")
    send = f"""
        import os, socket, time
        time.sleep({{delay}})
        if os.fork() == 0:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            s.sendto(b"<30>Nov 26 16:15:36 nv-fabricmanager[1]: FM starting NvLink Inband", {dev_log!r})
            os._exit(0)
        time.sleep(60)
    """
    rig.service(
        "fm", f'command = {script(send.format(delay=0.5))}\nready = {{ log = "FM starting NvLink Inband" }}\n'
    )
    rig.service("other", f"command = {script(send.format(delay=0))}\nready_timeout = 60\n")
    sup = rig.start()
    rig.settle()
    assert sup.services["fm"].state == "ready"
    lines = [line for line in rig.ring.since(0) if "NvLink" in line.text]
    assert sorted(line.service or "" for line in lines) == ["fm", "other"]
    assert "FM starting NvLink Inband" in (rig.path / "run/syslog.log").read_text()
    syslog.close()
