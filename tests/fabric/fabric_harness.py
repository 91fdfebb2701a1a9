"""Test harness for the fabric tests and the latency benchmark: builds the C test doubles (fake
libnvfm.so.1 and fake-nv-fabricmanager) with gcc, runs the fake fabricmanager from a rendered
fabricmanager.cfg, and runs the real fm-controller as a subprocess."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from guestinit.fabric import render

FAKE_SRC = Path(__file__).resolve().parent / "fake"
REPO = Path(__file__).resolve().parents[2]
CFLAGS = ["-O2", "-Wall", "-Wextra", "-Werror", "-pthread"]


def build_fakes(out: Path) -> tuple[Path, Path]:
    """Compile the test doubles into ``out``; returns (libnvfm.so.1, fake-nv-fabricmanager)."""
    out.mkdir(parents=True, exist_ok=True)
    lib = out / "libnvfm.so.1"
    daemon = out / "fake-nv-fabricmanager"
    subprocess.run(
        ["gcc", *CFLAGS, "-shared", "-fPIC", "-fvisibility=hidden", "-o", lib, FAKE_SRC / "libnvfm.c"],
        check=True,
    )
    subprocess.run(["gcc", *CFLAGS, "-o", daemon, FAKE_SRC / "fabricmanager.c"], check=True)
    return lib, daemon


class FakeFabricManager:
    """The fake nv-fabricmanager on a unix socket, configured through the real cfg template."""

    def __init__(self, daemon: Path, workdir: Path, **env: str) -> None:
        self.daemon = daemon
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.socket = self.dir / "fm.sock"
        self.state_file = self.dir / "fabricmanager.state"
        self.log_file = self.dir / "fabricmanager.log"
        self.cfg = self.dir / "fabricmanager.cfg"
        self.env = {"FAKE_FM_INIT_MS": "100", **env}
        self.proc: subprocess.Popen[bytes] | None = None
        self.overrides = {
            "FM_CMD_UNIX_SOCKET_PATH": str(self.socket),
            "STATE_FILE_NAME": str(self.state_file),
            "LOG_FILE_NAME": str(self.log_file),
        }

    @property
    def address(self) -> str:
        return f"unix:{self.socket}"

    def start(self, restart: bool = False, **env: str) -> FakeFabricManager:
        render.write_atomically(self.cfg, render.fabricmanager_cfg(self.overrides))
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        argv = [str(self.daemon), "-c", str(self.cfg), *(["--restart"] if restart else [])]
        self.proc = subprocess.Popen(
            argv, env={**os.environ, **self.env, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 5
        while not self._accepts():  # the socket file appears at bind(), before listen()
            if self.proc.poll() is not None:
                raise RuntimeError(f"fake fabricmanager exited {self.proc.returncode}: {self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError("fake fabricmanager does not accept connections on its socket")
            time.sleep(0.01)
        return self

    def _accepts(self) -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(self.socket))
            except OSError:
                return False
            return True

    def kill(self) -> None:
        """A crash: SIGKILL, nothing cleaned up."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)

    def active(self) -> list[int]:
        """The active set as the fake itself persisted it."""
        lines = self.state_file.read_text().splitlines()
        return sorted(int(line.split()[1]) for line in lines if line.startswith("active "))

    def log(self) -> str:
        return self.log_file.read_text() if self.log_file.exists() else ""


class ControllerProcess:
    """The real fm-controller, as a subprocess of the test."""

    def __init__(self, lib: Path, workdir: Path, fm_address: str, *extra: str) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.socket = self.dir / "ctl.sock"
        self.state = self.dir / "controller-state.json"
        self.ready = self.dir / "ready"
        self.log_path = self.dir / "controller.log"
        self.argv = [
            sys.executable,
            "-m",
            "guestinit.fabric.controller",
            "--listen",
            f"unix:{self.socket}",
            "--libnvfm",
            str(lib),
            "--fm-address",
            fm_address,
            "--state",
            str(self.state),
            "--ready-file",
            str(self.ready),
            "--poll-interval",
            "0.2",
            *extra,
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"unix:{self.socket}"

    def start(self, wait: bool = True) -> ControllerProcess:
        with contextlib.suppress(FileNotFoundError):
            self.ready.unlink()
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(self.argv, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT)
        if wait:
            deadline = time.monotonic() + 15
            while not self.ready.exists():
                if self.proc.poll() is not None:
                    raise RuntimeError(f"fm-controller exited {self.proc.returncode}: {self.log()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"fm-controller not ready: {self.log()}")
                time.sleep(0.02)
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> int | None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        with contextlib.suppress(AttributeError):
            self._log.close()
        return self.proc.returncode if self.proc is not None else None

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""


@contextlib.contextmanager
def stub(address: str) -> Iterator[tuple[Any, Any]]:
    """(stub, messages module) on a fresh channel with its own connection."""
    import grpc

    from guestinit.fabric import api

    target = address.removeprefix("tcp:")
    with grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        yield api.services().FabricControllerStub(channel), api.messages()


def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.02) -> bool:
    """Poll until true; errors while polling count as false (the last try lets them through)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except Exception:
            pass
        time.sleep(interval)
    return bool(predicate())


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def concurrent_workload(address: str, clients: int = 50, rounds: int = 10, seed: int = 1) -> dict[str, Any]:
    """``clients`` threads, each with its own connection, each doing ``rounds`` of ListPartitions
    plus an activate or deactivate of a random partition (all partitions overlap somewhere).
    Returns latencies (seconds) per call and the outcome counts."""
    import random
    import threading

    import grpc

    lat: dict[str, list[float]] = {"ListPartitions": [], "ActivatePartition": [], "DeactivatePartition": []}
    outcomes: dict[str, int] = {}
    lock = threading.Lock()
    start = threading.Barrier(clients)
    errors: list[str] = []

    def client(n: int) -> None:
        rng = random.Random(seed * 1000 + n)
        try:
            with stub(address) as (s, pb):
                s.ListPartitions(pb.ListPartitionsRequest(), timeout=30)  # connect before the clock starts
                start.wait()
                for _ in range(rounds):
                    t0 = time.perf_counter()
                    s.ListPartitions(pb.ListPartitionsRequest(), timeout=30)
                    t1 = time.perf_counter()
                    pid = rng.randrange(15)
                    name = "ActivatePartition" if rng.random() < 0.6 else "DeactivatePartition"
                    call = s.ActivatePartition if name == "ActivatePartition" else s.DeactivatePartition
                    try:
                        r = call(pb.PartitionRequest(id=pid), timeout=30)
                        outcome = f"{name}:{'changed' if r.changed else 'unchanged'}"
                    except grpc.RpcError as exc:
                        outcome = f"{name}:{exc.code().name}"
                        if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
                            errors.append(f"{name} {pid}: {exc.code().name} {exc.details()}")
                    t2 = time.perf_counter()
                    with lock:
                        lat["ListPartitions"].append(t1 - t0)
                        lat[name].append(t2 - t1)
                        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        except Exception as exc:  # reported, and fails the caller's checks
            errors.append(f"client {n}: {exc!r}")

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    summary = {
        name: {
            "calls": len(v),
            "p50_ms": round(percentile(v, 50) * 1000, 2),
            "p99_ms": round(percentile(v, 99) * 1000, 2),
            "max_ms": round(max(v) * 1000, 2) if v else None,
        }
        for name, v in lat.items()
    }
    return {
        "clients": clients,
        "rounds": rounds,
        "wall_s": round(wall, 2),
        "latency": summary,
        "outcomes": outcomes,
        "errors": errors,
    }


def replay_fake_log(log: str, groups: dict[int, tuple[int, ...]]) -> tuple[list[int], int]:
    """Replay the fake fabricmanager's activation log; returns the final active set and the largest
    number of overlapping active pairs seen at any moment (0 means never)."""
    active: set[int] = set()
    worst = 0
    for line in log.splitlines():
        words = line.split()
        if len(words) == 3 and words[0] == "partition" and words[2] in ("activated", "deactivated"):
            pid = int(words[1])
            if words[2] == "activated":
                active.add(pid)
            else:
                active.discard(pid)
            pairs = sum(1 for a in active for b in active if a < b and set(groups[a]) & set(groups[b]))
            worst = max(worst, pairs)
    return sorted(active), worst
