"""A service's stdout and stderr: the read end of its pipe, split into lines (each at most
MAX_LINE bytes) for the log and the ring."""

from __future__ import annotations

import os

from guestinit.init.loop import Loop

TYPE_CHECKING = False  # typing is not imported on the boot path; mypy reads this as usual
if TYPE_CHECKING:
    from collections.abc import Callable

MAX_LINE = 4096


class Pipe:
    """The read end of a process's stdout/stderr: complete lines go to ``on_line``."""

    def __init__(self, loop: Loop, fd: int, on_line: Callable[[str], None]) -> None:
        self.loop = loop
        self.fd = fd
        self.on_line = on_line
        self.buf = b""
        os.set_blocking(fd, False)
        loop.add_reader(fd, self._readable)

    def _readable(self) -> None:
        self.read()

    def read(self) -> bool:
        """One read; False at end of file (the pipe is then closed)."""
        if self.fd < 0:
            return False
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return True
        except OSError:
            data = b""
        if not data:
            self._emit(self.buf, final=True)
            self.close()
            return False
        self._emit(self.buf + data)
        return True

    def drain(self) -> None:
        """Read everything written so far (before an exit is handled, so lines stay in order)."""
        while self.fd >= 0:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._emit(self.buf, final=True)
                self.close()
                return
            self._emit(self.buf + data)

    def _emit(self, data: bytes, final: bool = False) -> None:
        lines = data.split(b"\n")
        rest = lines.pop()
        while len(rest) > MAX_LINE:
            lines.append(rest[:MAX_LINE])
            rest = rest[MAX_LINE:]
        if final and rest:
            lines.append(rest)
            rest = b""
        self.buf = rest
        for raw in lines:
            self.on_line(raw.decode("utf-8", errors="replace").rstrip("\r"))

    def close(self) -> None:
        if self.fd >= 0:
            self.loop.remove_reader(self.fd)
            os.close(self.fd)
            self.fd = -1
