"""The few system calls Python's os module lacks: mount, umount2, reboot, finit_module, syslog.

ctypes over libc, loaded once on first use; every failure raises OSError with errno set.
"""

from __future__ import annotations

import ctypes
import os

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_RELATIME = 1 << 21
MNT_DETACH = 2

RB_POWER_OFF = 0x4321FEDC
RB_AUTOBOOT = 0x01234567
RB_DISABLE_CAD = 0
RB_ENABLE_CAD = 0x89ABCDEF

SYS_FINIT_MODULE = 313  # x86_64
SYSLOG_ACTION_READ_ALL = 3
SYSLOG_ACTION_SIZE_BUFFER = 10

_libc: ctypes.CDLL | None = None


def libc() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(source: str, target: str, fstype: str, flags: int = 0, data: str = "") -> None:
    result = libc().mount(
        source.encode(), target.encode(), fstype.encode(), ctypes.c_ulong(flags), data.encode() or None
    )
    _check(result, f"mount {fstype} on {target}")


def umount(target: str, flags: int = 0) -> None:
    _check(libc().umount2(target.encode(), flags), f"umount {target}")


def reboot(cmd: int) -> None:
    _check(libc().reboot(ctypes.c_int(cmd)), "reboot")


def finit_module(fd: int, params: str = "", flags: int = 0) -> None:
    result = libc().syscall(
        ctypes.c_long(SYS_FINIT_MODULE),
        ctypes.c_int(fd),
        ctypes.c_char_p(params.encode()),
        ctypes.c_int(flags),
    )
    _check(result, "finit_module")


def kernel_log(tail: int = 0) -> bytes:
    """The kernel's log buffer as text, one line per record ("<6>[    2.201000] Run /init ..."),
    in one syslog(2) call (SYSLOG_ACTION_READ_ALL: nothing is consumed); b"" when refused.
    /dev/kmsg gives one record per read(2): hundreds of system calls for a boot's log.
    With ``tail``, only the newest records that fit in that many bytes (the kernel leaves out
    the oldest ones that do not)."""
    size = libc().klogctl(SYSLOG_ACTION_SIZE_BUFFER, None, 0)
    if size <= 0:
        return b""
    if tail > 0:
        size = min(size, tail)
    buf = ctypes.create_string_buffer(size)
    length = libc().klogctl(SYSLOG_ACTION_READ_ALL, buf, size)
    return buf.raw[:length] if length > 0 else b""
