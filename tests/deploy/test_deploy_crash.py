"""Crash safety: the real `python -m guestinit.host.kata.deploy` SIGKILLed at random moments, 100 times.

After every kill, before anything repairs the prefix, what Kata and containerd would read through
the public names must be exactly one complete version: the one before the command or the one it
was asked for (deploy A, deploy B, rollback; every fourth trial starts again from a fresh
kata-deploy install, so half the runs copy, take over and switch everything), never a mix;
and the files its configuration names must be there with the right bytes. The next command then
starts from whatever the kill left. Kill moments are drawn uniformly from "the interpreter has
imported deploy" to "an uninterrupted run has finished", both measured here first, the latter
then following the runs' real lengths.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

from deploy_harness import digest_state, make_build, make_upstream, observe, sha, tree

KILLS = 100


def _command(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "guestinit.host.kata.deploy", *args]


def _timed(args: list[str]) -> float:
    start = time.monotonic()
    done = subprocess.run(_command(args), capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return time.monotonic() - start


def test_sigkill_at_random_moments_leaves_old_or_new_version(tmp_path: Path) -> None:
    rng = random.Random(20261126)
    builds = {
        "A": make_build(tmp_path / "a", "0.1.0-20261126160000", initrd_size=8 << 20, kernel_size=2 << 20),
        "B": make_build(tmp_path / "b", "0.1.0-20261126170000", initrd_size=8 << 20, kernel_size=2 << 20),
    }
    artifacts = {}
    for name, manifest in builds.items():
        artifacts[name] = {sha((manifest.parent / n).read_bytes()) for n in os.listdir(manifest.parent)}
    prefix = tmp_path / "opt-kata"
    deploy = {
        name: ["deploy", "--manifest", os.fspath(m), "--prefix", os.fspath(prefix)]
        for name, m in builds.items()
    }
    rollback = ["rollback", "--prefix", os.fspath(prefix)]

    # The three complete states, made by uninterrupted runs on this very prefix path.
    golden = {"0": make_upstream(prefix)}
    durations = [_timed(deploy["A"])]
    golden["A"] = observe(prefix)
    durations.append(_timed(deploy["B"]))
    golden["B"] = observe(prefix)
    durations.append(_timed(rollback))
    assert observe(prefix) == golden["A"]
    shutil.rmtree(prefix)  # a fresh takeover, timed: the longest run
    make_upstream(prefix)
    durations.append(_timed(deploy["B"]))
    imports = []
    for _ in range(3):
        start = time.monotonic()
        subprocess.run([sys.executable, "-c", "import guestinit.host.kata.deploy"], check=True)
        imports.append(time.monotonic() - start)
    imported = sorted(imports)[1]
    window = (0.8 * imported, 1.1 * sorted(durations)[-2])

    def reset() -> None:
        shutil.rmtree(prefix)
        assert make_upstream(prefix) == golden["0"]

    def which(state: dict[str, bytes | None]) -> str | None:
        return next((name for name, want in golden.items() if state == want), None)

    def check_config_targets(name: str) -> None:
        if name == "0":
            return  # kata-deploy's configuration names /opt/kata, not this prefix
        qemu = tomllib.loads(golden[name]["config"].decode())["hypervisor"]["qemu"]  # type: ignore[union-attr]
        for key in ("kernel", "initrd"):
            assert sha(Path(qemu[key]).read_bytes()) in artifacts[name], (key, qemu[key])

    state, previous = "0", None
    low, high = window
    counts = {"finished first": 0, "killed, old version": 0, "killed, new version": 0, "killed mid-write": 0}
    started = time.monotonic()
    for trial in range(KILLS):
        if trial % 4 == 0:  # a fresh kata-deploy install: the next two runs copy and switch everything
            reset()
            state, previous = "0", None
        choices = [n for n in ("A", "B") if n != state]
        if previous is not None and previous != state:
            choices.append("rollback")
        op = rng.choice(choices)
        expected = previous if op == "rollback" else op
        before_tree = tree(prefix)
        proc = subprocess.Popen(
            _command(rollback if op == "rollback" else deploy[op]),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        launched = time.monotonic()
        try:
            proc.wait(timeout=rng.uniform(low, high))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
        ran = time.monotonic() - launched
        _, stderr = proc.communicate()
        assert proc.returncode in (0, -signal.SIGKILL), stderr.decode()

        seen = which(observe(prefix))
        assert seen in (state, expected), (
            f"trial {trial}: {op} from {state} left a mix: {digest_state(observe(prefix))}, "
            f"tree {tree(prefix)}"
        )
        assert seen is not None
        check_config_targets(seen)
        # The other helpers on this machine change how long a run takes: follow it, so that the
        # kills keep landing inside runs (a run that finished shrinks the window towards its
        # length; a kill before anything was written widens it a little).
        if proc.returncode == 0:
            counts["finished first"] += 1
            assert seen == expected
            high = max(low * 1.2, 0.5 * high + 0.55 * ran)
        elif seen == expected:
            counts["killed, new version"] += 1
        else:
            counts["killed, old version"] += 1
            if tree(prefix) != before_tree:
                counts["killed mid-write"] += 1
            else:
                high *= 1.03
        if seen != state:
            state, previous = seen, state

    elapsed = time.monotonic() - started
    # A last, uninterrupted run from whatever the last kill left: it completes and tidies up.
    target = "B" if state != "B" else "A"
    _timed(deploy[target])
    assert observe(prefix) == golden[target]
    assert not any(".gi-tmp." in name for name in tree(prefix))
    runs = ", ".join(f"{d * 1000:.0f}" for d in durations)
    print(
        f"\n{KILLS} SIGKILLs in {elapsed:.1f} s (kill {low * 1000:.0f}-{window[1] * 1000:.0f} ms "
        f"after start, {high * 1000:.0f} at the end; import {imported * 1000:.0f} ms, full runs {runs} ms): "
        + ", ".join(f"{k} {v}" for k, v in counts.items())
        + "; every check passed"
    )
    # Not vacuous: kills landed in the middle of the work, on both sides of the switch.
    assert counts["killed, new version"] >= 3
    assert counts["killed mid-write"] >= 3
