"""The system calls the os module lacks, called through _ctypes: each failure is an OSError
naming the call and carrying libc's errno, and the boot path never imports the ctypes package."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from guestinit.host.bench.importtime import HEAVY
from guestinit.init import syscalls

REPO = Path(__file__).resolve().parents[2]


def test_failures_carry_errno_and_name_the_call(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(FileNotFoundError, match=f"umount {missing}: "):
        syscalls.umount(os.fspath(missing))
    with pytest.raises(OSError, match=f"mount tmpfs on {missing}: ") as caught:
        syscalls.mount("none", os.fspath(missing), "tmpfs")
    assert caught.value.errno in (errno.ENOENT, errno.EPERM)  # EPERM without CAP_SYS_ADMIN
    not_a_module = tmp_path / "x.ko"
    not_a_module.write_bytes(b"not an ELF file")
    with open(not_a_module, "rb") as f, pytest.raises(OSError, match="finit_module: ") as caught:
        syscalls.finit_module(f.fileno())
    assert caught.value.errno not in (None, 0)
    with pytest.raises(OSError, match="init_module: ") as caught:
        syscalls.init_module(b"not an ELF file")
    assert caught.value.errno not in (None, 0)


def test_sigset_is_glibcs_bit_layout() -> None:
    mask = syscalls.sigset([1, 64, 65, 10])
    assert len(mask) == syscalls.SIGSET_WORDS
    assert mask[0] == 1 | 1 << 9 | 1 << 63
    assert mask[1] == 1
    assert all(word == 0 for word in mask[2:])


def test_signalfd_reads_a_blocked_signal() -> None:
    code = (
        "import os, signal, struct, sys\n"
        f"sys.path.insert(0, {os.fspath(REPO)!r})\n"
        "from guestinit.init import syscalls\n"
        "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})\n"
        "fd = syscalls.signalfd({signal.SIGUSR2}, os.O_NONBLOCK | os.O_CLOEXEC)\n"
        "try:\n"
        "    os.read(fd, 128)\n"
        "except BlockingIOError:\n"
        "    print('empty')\n"
        "os.kill(os.getpid(), signal.SIGUSR2)\n"
        "signo, _errno, _code, pid = struct.unpack_from('<IiiI', os.read(fd, 128))\n"
        "print(signo == signal.SIGUSR2, pid == os.getpid(), os.get_inheritable(fd))\n"
    )
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["empty", "True", "True", "False"]


def test_kernel_log_refused_or_read_is_bytes() -> None:
    text = syscalls.kernel_log(tail=512)
    assert isinstance(text, bytes) and len(text) <= 512  # b"" where dmesg_restrict refuses us


def test_boot_path_imports_no_heavy_module() -> None:
    """The init's whole path to READY as PID 1 imports it (the head start, then boot and
    the PID 1 duties), and none of importtime.HEAVY: ctypes among them."""
    code = (
        "import sys\n"
        f"sys.path.insert(0, {os.fspath(REPO)!r})\n"
        "import guestinit.init.headstart, guestinit.init.boot, guestinit.init.pid1, guestinit.init.cli\n"
        "print(' '.join(sorted({m.partition('.')[0] for m in sys.modules})))\n"
    )
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, check=True)
    loaded = set(out.stdout.split())
    assert "ctypes" in HEAVY and "guestinit" in loaded and "_ctypes" in loaded
    assert sorted(loaded & HEAVY) == []
