"""What one guest may cost the listener: one table for the defaults, the ``guestctl listen``
options and the reference in docs/notify.md."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from guestinit.notify.message import MAX_LINES, MAX_MESSAGE_BYTES


@dataclass(frozen=True)
class Limits:
    """Bounds on every read; the metadata of each field is its ``guestctl listen`` option."""

    max_message_bytes: int = field(
        default=MAX_MESSAGE_BYTES,
        metadata={
            "flag": "--max-message-bytes",
            "help": "largest message (datagram, connection, serial message, console line); larger is dropped",
        },
    )
    read_timeout_s: float = field(
        default=5.0,
        metadata={
            "flag": "--read-timeout",
            "help": "seconds a stream connection has to deliver its whole message (slow-drip is dropped)",
        },
    )
    max_connections: int = field(
        default=64,
        metadata={
            "flag": "--max-connections",
            "help": "open connections per endpoint; the oldest is closed to admit a new one",
        },
    )
    max_queued: int = field(
        default=1024,
        metadata={
            "flag": "--max-queued",
            "help": "parsed messages waiting to be reported; beyond it the oldest one without READY "
            "or EXIT_STATUS is dropped and counted",
        },
    )
    log_per_second: int = field(
        default=20,
        metadata={
            "flag": "--log-rate",
            "help": "log lines per second about dropped input; the rest are counted and summarised",
        },
    )

    @staticmethod
    def table() -> list[tuple[str, str, object, str]]:
        """(field, option, default, help) for each limit."""
        return [(f.name, f.metadata["flag"], f.default, f.metadata["help"]) for f in fields(Limits)]


LIMIT_FACTS = (
    f"lines per message: {MAX_LINES}",
    "keys: A-Z, 0-9 and _, starting with a letter, at most 64 bytes",
    "values: UTF-8 without NUL",
    "EXIT_STATUS: decimal 0..255 (ASCII digits, no sign, spaces or leading zeros)",
)
