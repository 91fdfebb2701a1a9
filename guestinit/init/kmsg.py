"""Logging to /dev/kmsg with syslog priorities, so the host sees init's words on the console.

The kernel rate-limits user writes to /dev/kmsg (10 lines / 5 s by default); PID 1 turns that
off through /proc/sys/kernel/printk_devkmsg once /proc is mounted, as NVRC does.
"""

from __future__ import annotations

import os
import sys

EMERG, ALERT, CRIT, ERR, WARNING, NOTICE, INFO, DEBUG = range(8)
LEVELS = {"off": -1, "error": ERR, "warn": WARNING, "info": INFO, "debug": DEBUG}


class Log:
    """A logger that writes ``<PRI>ident: message`` lines to /dev/kmsg (stderr when absent)."""

    def __init__(self, path: str = "/dev/kmsg", ident: str = "guestinit", level: int = INFO) -> None:
        self.ident = ident
        self.level = level
        self.fd = -1
        try:
            self.fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            self.fd = -1

    def reopen(self, path: str = "/dev/kmsg") -> None:
        if self.fd < 0:
            try:
                self.fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_NONBLOCK)
            except OSError:
                pass

    def log(self, priority: int, message: str, ident: str | None = None) -> None:
        if priority > self.level:
            return
        text = f"{ident or self.ident}: {message}"
        # one kmsg record per line; the kernel caps a record at ~1 KiB
        for line in text.splitlines() or [""]:
            record = f"<{priority}>{line[:976]}\n".encode(errors="replace")
            if self.fd >= 0:
                try:
                    os.write(self.fd, record)
                    continue
                except OSError:
                    pass
            try:
                sys.stderr.write(record.decode(errors="replace"))
                sys.stderr.flush()
            except (OSError, ValueError):
                pass

    def error(self, message: str) -> None:
        self.log(ERR, message)

    def warning(self, message: str) -> None:
        self.log(WARNING, message)

    def info(self, message: str) -> None:
        self.log(INFO, message)

    def debug(self, message: str) -> None:
        self.log(DEBUG, message)
