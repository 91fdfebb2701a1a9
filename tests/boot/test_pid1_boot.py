"""guestinit as a complete PID 1 in QEMU: services added by an extra initrd (as an operator adds
them to a stock image), readiness, supervision, failing closed, the orphan storm, and the
ACPI power button (QMP system_powerdown) leading to an ordered shutdown.

Service programs are Python scripts (the image has python3 but no shell). Their stdout reaches
the console through /dev/kmsg (``loglevel=7``), which is how these tests read what a service
measured inside the guest."""

from __future__ import annotations

import json
import re
import subprocess
import textwrap
from pathlib import Path

import pytest

from guestinit.host.boot import BootOptions, boot
from guestinit.host.result import BootResult

pytestmark = pytest.mark.boot

SERVICES = "etc/guestinit/services.d"


def cpio(tmp_path: Path, files: dict[str, tuple[str, int]]) -> Path:
    """A newc archive of {guest path: (text, mode)}; guestctl boot compresses it to match."""
    tree = tmp_path / "extra"
    for rel, (text, mode) in files.items():
        path = tree / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
        path.chmod(mode)
    return pack(tree, tmp_path / "extra.cpio")


def pack(tree: Path, out: Path) -> Path:
    """A newc archive of a directory tree (files as they are, owned by root)."""
    names = sorted({str(p.relative_to(tree)) for p in tree.rglob("*")})
    with open(out, "wb") as f:
        subprocess.run(
            ["cpio", "-o", "-H", "newc", "--owner=0:0", "--quiet"],
            input="\n".join(names).encode(),
            cwd=tree,
            stdout=f,
            check=True,
        )
    return out


def service(text: str) -> tuple[str, int]:
    return (text, 0o644)


def program(code: str) -> tuple[str, int]:
    return ("#!/usr/bin/python3\n" + textwrap.dedent(code).lstrip(), 0o755)


def console_json(result: BootResult, tag: str) -> dict[str, object]:
    text = Path(result.console_log).read_text(errors="replace")
    match = re.search(rf"{tag} (\{{.*\}})\s*$", text, re.MULTILINE)
    assert match, f"no {tag} line on the console:\n{text[-4000:]}"
    loaded = json.loads(match.group(1))
    assert isinstance(loaded, dict)
    return loaded


def why(result: BootResult) -> str:
    return (
        f"{result.error}; status {result.status!r}; console:\n"
        + Path(result.console_log).read_text(errors="replace")[-4000:]
    )


# alpha (Unix socket) <- beta (TCP, runs as nobody, checks its own surroundings) <- gamma (log
# line; ignores SIGTERM, so stopping it needs SIGKILL).
ORDERED = {
    f"{SERVICES}/alpha.toml": service("""
        command = ["/usr/local/bin/svc", "alpha"]
        ready = { socket = "/run/alpha.sock" }
        """),
    f"{SERVICES}/beta.toml": service("""
        command = ["/usr/local/bin/svc", "beta"]
        after = ["alpha"]
        user = "nobody"
        environment = { ROLE = "beta" }
        oom_score_adj = 250
        rlimit_nofile = 4096
        ready = { tcp = "127.0.0.1:7070" }
        """),
    f"{SERVICES}/gamma.toml": service("""
        command = ["/usr/local/bin/svc", "gamma"]
        after = ["beta"]
        ready = { log = "gamma serving" }
        stop_timeout = 1
        """),
    "usr/local/bin/svc": program("""
        import json, os, resource, signal, socket, sys
        role = sys.argv[1]
        def bye(*_):
            print(f"{role} got SIGTERM", flush=True)
            sys.exit(0)
        signal.signal(signal.SIGTERM, signal.SIG_IGN if role == "gamma" else bye)
        if role == "alpha":
            s = socket.socket(socket.AF_UNIX)
            s.bind("/run/alpha.sock")
        elif role == "beta":
            status = dict(line.split(":\\t", 1) for line in open("/proc/self/status"))
            mounts = {f[1]: f[3].split(",") for f in (l.split() for l in open("/proc/self/mounts"))}
            facts = {
                "env": dict(os.environ),
                "uid": os.getuid(), "gid": os.getgid(),
                "sigblk": status["SigBlk"].strip(),
                "oom": int(open("/proc/self/oom_score_adj").read()),
                "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
                "modules_disabled": open("/proc/sys/kernel/modules_disabled").read().strip(),
                "mounts": {m: mounts.get(m) for m in ("/proc", "/sys", "/dev", "/run", "/tmp", "/dev/shm")},
            }
            print("CHECK " + json.dumps(facts), flush=True)
            s = socket.socket()
            s.bind(("127.0.0.1", 7070))
        else:
            print("gamma serving", flush=True)
            while True:
                signal.pause()
        s.listen()
        while True:
            s.accept()[0].close()
        """),
}


def test_three_services_then_powerdown_stops_them_in_reverse_order(kata_image: Path, tmp_path: Path) -> None:
    extra = cpio(tmp_path, ORDERED)
    result = boot(
        BootOptions(
            image=kata_image,
            extra_initrd=[extra],
            append="loglevel=7 guestinit.lockdown=on",
            timeout_s=180,
            shutdown=True,
            shutdown_timeout_s=30,
            run_dir=tmp_path / "run",
        )
    )
    assert result.ready, why(result)
    services = {s["name"]: s for s in json.loads(result.notify["X_GUESTINIT_SERVICES"])}
    assert {n: s["state"] for n, s in services.items() if n != "kata-agent"} == dict.fromkeys(
        ("alpha", "beta", "gamma"), "ready"
    )
    assert services["kata-agent"]["state"] == "skipped"  # no binary in this image
    assert services["alpha"]["ready_s"] <= services["beta"]["start_s"]
    assert services["beta"]["ready_s"] <= services["gamma"]["start_s"]
    assert "X_GUESTINIT_DEGRADED" not in result.notify
    # secure defaults, as the service sees them
    facts = console_json(result, "CHECK")
    assert facts["env"] == {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/nonexistent",
        "USER": "nobody",
        "LOGNAME": "nobody",
        "LANG": "C.UTF-8",
        "ROLE": "beta",
    }
    assert (facts["uid"], facts["gid"]) == (65534, 65534)
    assert facts["sigblk"] == "0000000000000000"
    assert (facts["oom"], facts["nofile"]) == (250, 4096)
    assert facts["modules_disabled"] == "1"
    mounts = facts["mounts"]
    assert isinstance(mounts, dict)
    for target in ("/proc", "/sys"):
        assert {"nosuid", "nodev", "noexec"} <= set(mounts[target]), (target, mounts[target])
    for target in ("/run", "/tmp", "/dev/shm"):
        assert {"nosuid", "nodev"} <= set(mounts[target]), (target, mounts[target])
    assert {"nosuid", "noexec"} <= set(mounts["/dev"])
    # the ACPI power button: services stopped in reverse order, the last one killed
    assert result.error == "", why(result)
    assert result.shutdown_s is not None and result.shutdown_s < 10.0, why(result)
    assert result.qemu_exit == 0
    assert result.notify.get("X_SYSTEMD_SHUTDOWN") == "poweroff"
    assert "power button" in result.notify["STATUS"]
    stopped = json.loads(result.notify["X_GUESTINIT_STOPPED"])
    assert [s["name"] for s in stopped] == ["gamma", "beta", "alpha"]
    assert [s["how"] for s in stopped] == ["SIGKILL", "SIGTERM", "SIGTERM"]
    exec_s = float(result.notify["X_GUESTINIT_EXEC_S"])
    assert result.uptime_at_ready_s is not None
    print(
        f"\nthree services: exec->READY {result.uptime_at_ready_s - exec_s:.3f} s "
        f"(uptime at READY {result.uptime_at_ready_s:.3f} s); "
        f"system_powerdown -> QEMU exit {result.shutdown_s:.3f} s"
    )


STORM = {
    f"{SERVICES}/crasher.toml": service("""
        command = ["/usr/local/bin/crash"]
        ready = { file = "/run/never" }
        restart = "on-failure"
        max_restarts = 2
        """),
    "usr/local/bin/crash": program("""
        import sys
        print("crashing on purpose", flush=True)
        sys.exit(3)
        """),
    f"{SERVICES}/storm.toml": service("""
        command = ["/usr/local/bin/storm"]
        ready = { log = "^storm done" }
        ready_timeout = 300
        """),
    # The orphan storm: a process forks 1,000 children that exit at once, does not wait for
    # them, and exits: the kernel re-parents 1,000 zombies to PID 1 in one go. It writes the
    # time just before its own exit (before the re-parenting); sampling init's list of
    # children (/proc/1/task/1/children, zombies included) tells when the last one was
    # reaped. The difference bounds every zombie's life as init's child from above.
    "usr/local/bin/storm": program("""
        import json, os, time
        N = 1000
        now = lambda: time.clock_gettime(time.CLOCK_BOOTTIME)
        r, w = os.pipe()
        start = now()
        if os.fork() == 0:
            os.close(r)
            pids = []
            for _ in range(N):
                pid = os.fork()
                if pid == 0:
                    os._exit(0)
                pids.append(pid)
            while True:  # every child a zombie before the handover
                try:
                    states = [open(f"/proc/{p}/stat").read().rsplit(") ", 1)[1][0] for p in pids]
                except OSError:
                    os._exit(3)  # nobody may reap them but their parent
                if all(s == "Z" for s in states):
                    break
                time.sleep(0.05)
            os.write(w, json.dumps({"pids": pids, "handover": now()}).encode())
            os._exit(0)
        os.close(w)
        data = b""
        while chunk := os.read(r, 1 << 20):
            data += chunk
        report = json.loads(data)
        pids, handover = set(report["pids"]), report["handover"]
        # a real-time monitor, so that its samples come on time: it measures init's delay
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
        samples, left, max_left = 0, pids, 0
        while left and now() < handover + 60:
            samples += 1
            t = now()
            left = pids & set(map(int, open("/proc/1/task/1/children").read().split()))
            max_left = max(max_left, len(left))
            if not left:
                break
            time.sleep(0.005)
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        os.wait()
        print("STORM " + json.dumps({
            "zombies": len(pids), "fork_s": round(handover - start, 3),
            "seen_under_init": max_left, "samples": samples, "left": len(left),
            "all_reaped_after_handover_s": round(t - handover, 3),
        }), flush=True)
        print("storm done", flush=True)
        while True:
            time.sleep(3600)
        """),
}


def test_crash_loop_gives_up_degraded_and_orphan_storm_reaped(kata_image: Path, tmp_path: Path) -> None:
    result = boot(
        BootOptions(
            image=kata_image,
            extra_initrd=[cpio(tmp_path, STORM)],
            append="loglevel=7",
            timeout_s=400,
            shutdown=True,
            shutdown_timeout_s=30,
            run_dir=tmp_path / "run",
        )
    )
    assert result.ready, why(result)
    assert result.notify["X_GUESTINIT_DEGRADED"] == "crasher"
    services = {s["name"]: s for s in json.loads(result.notify["X_GUESTINIT_SERVICES"])}
    assert services["crasher"]["state"] == "failed" and services["crasher"]["restarts"] == 2
    assert "exited with 3 before it was ready; gave up after 2 restarts" in services["crasher"]["error"]
    console = Path(result.console_log).read_text(errors="replace")
    assert console.count("crasher[") >= 3 and "crashing on purpose" in console
    storm = console_json(result, "STORM")
    assert storm["zombies"] == 1000 and storm["left"] == 0, storm
    assert isinstance(storm["all_reaped_after_handover_s"], float), storm
    assert storm["all_reaped_after_handover_s"] < 1.0, storm  # no zombie lasts a second
    assert int(result.notify["X_GUESTINIT_REAPED"]) >= 1000
    assert result.shutdown_s is not None, why(result)
    print(f"\norphan storm: {storm}; reaped by init {result.notify['X_GUESTINIT_REAPED']}")


def test_critical_failure_reaches_host_and_the_vm_powers_off(kata_image: Path, tmp_path: Path) -> None:
    files = {
        f"{SERVICES}/agent.toml": service("""
            command = ["/usr/local/bin/agent"]
            after = ["*"]
            critical = true
            ready = { file = "/run/agent.ready" }
            """),
        "usr/local/bin/agent": program("""
            import sys
            print("agent: cannot start", flush=True)
            sys.exit(1)
            """),
    }
    result = boot(
        BootOptions(
            image=kata_image,
            extra_initrd=[cpio(tmp_path, files)],
            timeout_s=180,
            shutdown_timeout_s=30,
            run_dir=tmp_path / "run",
        )
    )
    assert not result.ready
    assert result.exit_status == 2, why(result)
    assert result.status == "failed: critical service agent failed: exited with 1 before it was ready"
    assert result.failed_exit_s is not None and result.failed_exit_s < 5.0, why(result)  # powered itself off
    assert result.qemu_exit == 0
    assert result.notify.get("X_SYSTEMD_SHUTDOWN") == "poweroff"
    print(f"\ncritical failure: EXIT_STATUS -> QEMU exit {result.failed_exit_s:.3f} s")


def test_ctrl_alt_del_is_the_same_clean_shutdown(kata_image: Path, tmp_path: Path) -> None:
    """QMP send-key ctrl-alt-delete: the kernel (CAD disabled by init) sends SIGINT to PID 1.
    guestctl boot has no key option, so this drives QEMU with the same pieces it uses."""
    import subprocess as sp
    import time

    from guestinit.host import qemu
    from guestinit.host.boot import DEFAULT_APPEND
    from guestinit.host.listen.listener import Listener
    from guestinit.host.media import combine_initrd, resolve_kernel

    initrd = combine_initrd(kata_image, [cpio(tmp_path, ORDERED)], tmp_path / "initrd.img")
    cfg = qemu.QemuConfig(
        kernel=resolve_kernel(kata_image, None),
        initrd=initrd,
        append=f"{DEFAULT_APPEND} {qemu.notify_append('serial')}",
        accel="tcg",
        tcg_threads=qemu.tcg_threads("auto", 2)[0],
        memory_mb=2048,
        cpus=2,
        transport="serial",
        notify_socket=tmp_path / "n.sock",
        vsock_cid=3,
        qmp_socket=tmp_path / "q.sock",
        console_log=tmp_path / "console.log",
        binary=qemu.find_qemu(),
    )
    listener = Listener([f"serial:{tmp_path / 'n.sock'}"]).start()
    proc = sp.Popen(qemu.qemu_argv(cfg), stdout=sp.DEVNULL, stderr=sp.STDOUT)
    messages: list[dict[str, str]] = []

    def until(done: object, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = listener.get(timeout=0.1)
            if msg is not None:
                messages.append(msg.fields)
            if callable(done) and done():
                return True
        return False

    try:
        assert until(lambda: any(m.get("READY") == "1" for m in messages), 180), messages
        q = qemu.QMP(tmp_path / "q.sock", timeout_s=5)
        q.command("send-key", keys=[{"type": "qcode", "data": k} for k in ("ctrl", "alt", "delete")])
        q.close()
        start = time.monotonic()
        assert until(lambda: proc.poll() is not None, 30), messages
        took = time.monotonic() - start
        until(lambda: False, 0.3)  # what arrived just before the exit
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        listener.close()
    assert proc.returncode == 0
    final = next(m for m in messages if "X_SYSTEMD_SHUTDOWN" in m)
    assert final["X_SYSTEMD_SHUTDOWN"] == "poweroff"
    assert "signal SIGINT from pid 0" in final["STATUS"]  # pid 0: the kernel
    assert [s["name"] for s in json.loads(final["X_GUESTINIT_STOPPED"])] == ["gamma", "beta", "alpha"]
    print(f"\nctrl-alt-delete -> QEMU exit {took:.3f} s")
