"""Builds and runs the kata-agent stand-in (tests/kata/standin/*.c), the test double for the
real kata-agent, which cannot be had here.

Two builds, like the two kinds of real agent: ``static`` (gcc -static, as Kata <= 3.32's static
musl agent) and ``dynamic`` (linked against libdevmapper and libseccomp, as Kata >= 4.0's glibc
agent). On the host it always listens on a Unix socket: never on this machine's vsock."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from guestinit.host import qemu
from guestinit.host.boot import DEFAULT_APPEND, kernel_death
from guestinit.host.listen.listener import Listener
from guestinit.host.media import combine_initrd, resolve_kernel

SOURCE = Path(__file__).resolve().parent / "standin"
CFLAGS = ["-O2", "-Wall", "-Wextra", "-Werror"]
BUILDS = {
    "static": (["-static"], []),
    "dynamic": (["-DSTANDIN_DYNAMIC"], ["-ldevmapper", "-lseccomp"]),
}
VERSION = "3.99.0"
REPORT_MARKER = "KATA_STANDIN_REPORT "
EXIT_MARKER = "KATA_STANDIN_EXIT "


def build_standin(out: Path, kind: str) -> Path:
    """Compile one build into ``out/kata-agent-<kind>``."""
    flags, libs = BUILDS[kind]
    out.mkdir(parents=True, exist_ok=True)
    exe = out / f"kata-agent-{kind}"
    sources = sorted(str(p) for p in SOURCE.glob("*.c"))
    subprocess.run(["gcc", *CFLAGS, *flags, "-o", str(exe), *sources, *libs], check=True)
    return exe


@dataclass
class Run:
    """One run of the stand-in in a private directory: its fake cmdline, report and console."""

    exe: Path
    workdir: Path
    cmdline: str = ""

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.socket = self.workdir / "agent.sock"
        self.report_path = self.workdir / "kata-standin.json"
        self.console = self.workdir / "console.log"
        self.cmdline_path = self.workdir / "cmdline"
        self.cmdline_path.write_text(self.cmdline + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {
            "PATH": "/usr/bin:/bin",
            "KATA_STANDIN_SOCKET": str(self.socket),
            "KATA_STANDIN_CMDLINE": str(self.cmdline_path),
            "KATA_STANDIN_REPORT": str(self.report_path),
            "KATA_STANDIN_CONSOLE": str(self.console),
            **(extra or {}),
        }
        assert env["KATA_STANDIN_SOCKET"], "on the host the stand-in must listen on a Unix socket"
        return env

    def start(
        self, *args: str, env: dict[str, str] | None = None, preexec: Callable[[], None] | None = None
    ) -> Run:
        self.proc = subprocess.Popen(
            [str(self.exe), *args],
            env=self.env(env),
            cwd=self.workdir,
            preexec_fn=preexec,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        # The report is written once the socket listens: it is the readiness sign.
        while not self.report_path.exists():
            if self.proc.poll() is not None and not self.report_path.exists():
                assert self.proc.stderr is not None
                raise RuntimeError(f"stand-in exited {self.proc.returncode}: {self.proc.stderr.read()!r}")
            if time.monotonic() > deadline:
                raise RuntimeError("stand-in did not come up")
            time.sleep(0.01)
        return self

    def report(self) -> dict[str, Any]:
        return json.loads(self.report_path.read_text())

    def console_lines(self) -> list[str]:
        return self.console.read_text().splitlines() if self.console.exists() else []

    def wait(self, timeout: float = 20) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)
        for stream in (self.proc.stdout, self.proc.stderr) if self.proc else ():
            if stream is not None:
                stream.close()


def console_report(text: str) -> dict[str, Any]:
    """The stand-in's report from a console log (a QEMU serial log, say)."""
    for line in text.splitlines():
        at = line.find(REPORT_MARKER)
        if at >= 0:
            return json.loads(line[at + len(REPORT_MARKER) :])
    raise LookupError("no stand-in report in the console log")


def host_libraries(exe: Path) -> dict[str, Path]:
    """soname -> file on this host for every library ``exe`` loads (ldd), the loader included."""
    out = subprocess.run(["ldd", str(exe)], capture_output=True, text=True, check=True).stdout
    found: dict[str, Path] = {}
    for line in out.splitlines():
        parts = line.split()
        if "=>" in parts and len(parts) >= 3 and parts[2].startswith("/"):
            found[parts[0]] = Path(parts[2])
        elif parts and parts[0].startswith("/"):
            found[os.path.basename(parts[0])] = Path(parts[0])
    return found


class Vm:
    """One QEMU boot of the image with extra initrds, its notify messages as they arrive."""

    def __init__(self, image: Path, extras: list[Path], append: str, work: Path) -> None:
        work.mkdir(parents=True, exist_ok=True)
        self.work = work
        self.console_log = work / "console.log"
        self.messages: list[dict[str, str]] = []
        self.retries = 1  # a kernel that dies before init (a TCG rarity) is booted again, as boot() does
        self.cfg = qemu.QemuConfig(
            kernel=resolve_kernel(image, None),
            initrd=combine_initrd(image, extras, work / "initrd.img"),
            append=f"{DEFAULT_APPEND} {qemu.notify_append('serial')} {append}",
            accel="tcg",
            tcg_threads=qemu.tcg_threads("auto", 2)[0],  # as guestctl boot picks
            transport="serial",
            notify_socket=work / "n.sock",
            qmp_socket=work / "q.sock",
            console_log=self.console_log,
            binary=qemu.find_qemu(),
        )
        self._start()

    def _start(self) -> None:
        self.listener = Listener([f"serial:{self.work / 'n.sock'}"]).start()
        argv = qemu.qemu_argv(self.cfg)
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

    def _retry_a_dead_kernel(self) -> None:
        if self.retries <= 0 or self.messages or self.proc.poll() is None:
            return
        why = kernel_death(self.console())
        if why is None:
            return
        self.retries -= 1
        self.listener.close()
        self.console_log.rename(self.work / f"console-died-{self.retries}.log")
        print(f"the kernel died before init ({why}): booting again", flush=True)
        self._start()

    def until(self, done: Callable[[], object], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self.listener.get(timeout=0.1)
            if msg is not None:
                self.messages.append(msg.fields)
            self._retry_a_dead_kernel()
            if done():
                return True
        return False

    def first(self, key: str) -> dict[str, str] | None:
        return next((m for m in self.messages if key in m), None)

    def console(self) -> str:
        return self.console_log.read_text(errors="replace") if self.console_log.exists() else ""

    def exited(self) -> bool:
        return self.proc.poll() is not None

    def why(self) -> str:
        return f"messages {self.messages}; console:\n{self.console()[-4000:]}"

    def powerdown(self) -> None:
        q = qemu.QMP(self.work / "q.sock", timeout_s=5)
        q.command("system_powerdown")
        q.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.listener.close()
