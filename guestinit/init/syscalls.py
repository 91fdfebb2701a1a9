"""The few system calls Python's os module lacks: mount, umount2, reboot, finit_module,
init_module, syslog and signalfd. Every failure raises OSError with errno set.

They go through ``_ctypes``, the C half of ctypes, with the four C types they take. The ctypes
package on top of it also imports struct, types and ctypes._endian and builds some sixty
classes. In the guest under TCG, a first ``import ctypes`` and one libc call took 80 ms, and
the same call through ``_ctypes`` 36 ms (medians of 7 boots each): time on PID 1's path to
READY, for six libc functions. The service VM's SDK binding (fabric/nvfm) uses ctypes itself.
"""

from __future__ import annotations

import _ctypes
import os

TYPE_CHECKING = False  # collections.abc is not imported on the boot path; mypy reads this as usual
if TYPE_CHECKING:
    from collections.abc import Iterable

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

SYS_INIT_MODULE = 175  # x86_64
SYS_FINIT_MODULE = 313  # x86_64
SYSLOG_ACTION_READ_ALL = 3
SYSLOG_ACTION_SIZE_BUFFER = 10

LIBC = "libc.so.6"
SIGSET_WORDS = 16  # glibc's sigset_t: 1024 bits in unsigned longs


if TYPE_CHECKING:  # the same C types as typeshed knows them; ctypes itself is never imported
    from ctypes import CDLL as _LibraryBase
    from ctypes import c_char as CChar
    from ctypes import c_int as CInt
    from ctypes import c_long as CLong
    from ctypes import c_ulong as CULong
else:
    _LibraryBase = object

    class CInt(_ctypes._SimpleCData):
        _type_ = "i"

    class CLong(_ctypes._SimpleCData):
        _type_ = "l"

    class CULong(_ctypes._SimpleCData):
        _type_ = "L"

    class CChar(_ctypes._SimpleCData):
        _type_ = "c"


class _Function(_ctypes.CFuncPtr):
    """A libc function returning int, with errno saved for get_errno() (ctypes' use_errno)."""

    _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
    _restype_ = CInt


class _Libc(_LibraryBase):
    """What ctypes.CDLL is to _ctypes: a library's handle, and its functions by name."""

    def __init__(self) -> None:
        self._handle = _ctypes.dlopen(LIBC, os.RTLD_NOW | os.RTLD_LOCAL)
        self._functions: dict[str, _Function] = {}

    def function(self, name: str) -> _Function:
        fn = self._functions.get(name)
        if fn is None:
            fn = self._functions[name] = _Function((name, self))
        return fn


_libc: _Libc | None = None


def _call(name: str, *args: object) -> int:
    global _libc
    if _libc is None:
        _libc = _Libc()
    result: int = _libc.function(name)(*args)
    return result


def _check(result: int, what: str) -> int:
    """``result``, unless it is libc's -1 for a failure."""
    if result < 0:
        err = _ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def mount(source: str, target: str, fstype: str, flags: int = 0, data: str = "") -> None:
    result = _call(
        "mount", source.encode(), target.encode(), fstype.encode(), CULong(flags), data.encode() or None
    )
    _check(result, f"mount {fstype} on {target}")


def umount(target: str, flags: int = 0) -> None:
    _check(_call("umount2", target.encode(), CInt(flags)), f"umount {target}")


def reboot(cmd: int) -> None:
    _check(_call("reboot", CInt(cmd)), "reboot")


def finit_module(fd: int, params: str = "", flags: int = 0) -> None:
    result = _call("syscall", CLong(SYS_FINIT_MODULE), CInt(fd), params.encode(), CInt(flags))
    _check(result, "finit_module")


def init_module(image: bytes, params: str = "") -> None:
    """init_module(2) from memory, for a compressed module the kernel cannot decompress."""
    result = _call("syscall", CLong(SYS_INIT_MODULE), image, CULong(len(image)), params.encode())
    _check(result, "init_module")


def sigset(signals: Iterable[int]) -> _ctypes.Array[CULong]:
    mask = (CULong * SIGSET_WORDS)()
    for sig in signals:
        mask[(sig - 1) // 64] |= 1 << ((sig - 1) % 64)
    return mask


def signalfd(signals: Iterable[int], flags: int) -> int:
    """A new signalfd(2) for ``signals`` (which the caller blocks in every thread)."""
    return _check(_call("signalfd", CInt(-1), sigset(signals), CInt(flags)), "signalfd")


def kernel_log(tail: int = 0) -> bytes:
    """The kernel's log buffer as text, one line per record ("<6>[    2.201000] Run /init ..."),
    in one syslog(2) call (SYSLOG_ACTION_READ_ALL: nothing is consumed); b"" when refused.
    /dev/kmsg gives one record per read(2): hundreds of system calls for a boot's log.
    With ``tail``, only the newest records that fit in that many bytes (the kernel leaves out
    the oldest ones that do not)."""
    size = _call("klogctl", CInt(SYSLOG_ACTION_SIZE_BUFFER), None, CInt(0))
    if size <= 0:
        return b""
    if tail > 0:
        size = min(size, tail)
    buf = (CChar * size)()
    length = _call("klogctl", CInt(SYSLOG_ACTION_READ_ALL), buf, CInt(size))
    return buf.raw[:length] if length > 0 else b""
