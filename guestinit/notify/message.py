"""systemd's notify message format: newline-separated KEY=VALUE lines (references §3).

Pure functions shared by the guest (encoding) and the host (parsing). Parsing is defensive:
the sender is a tenant's guest and may be hostile, so sizes are bounded and malformed
lines are reported, never raised.
"""

from __future__ import annotations

# Limits the host enforces on what one message may hold. systemd's own notify socket
# accepts datagrams up to this size; a guest has no business sending more.
MAX_MESSAGE_BYTES = 64 * 1024
MAX_LINES = 256
MAX_KEY_BYTES = 64


def _valid_key(key: str) -> bool:
    return (
        0 < len(key) <= MAX_KEY_BYTES
        and key[0].isascii()
        and key[0].isupper()
        and all(c.isascii() and (c.isupper() or c.isdigit() or c == "_") for c in key)
    )


def encode(fields: dict[str, str] | list[tuple[str, str]]) -> bytes:
    """Encode KEY=VALUE pairs; values must not contain newlines (use JSON for structure)."""
    items = fields.items() if isinstance(fields, dict) else fields
    lines = []
    for key, value in items:
        if not _valid_key(key):
            raise ValueError(f"invalid notify key {key!r}: use A-Z, 0-9 and _")
        if "\n" in value or "\0" in value:
            raise ValueError(f"notify value for {key} contains a newline or NUL")
        lines.append(f"{key}={value}")
    data = ("\n".join(lines) + "\n").encode()
    if len(data) > MAX_MESSAGE_BYTES:
        raise ValueError(f"notify message is {len(data)} bytes, over the {MAX_MESSAGE_BYTES} limit")
    return data


class Parsed:
    """Result of parsing one message: the fields in order, and what was dropped and why."""

    __slots__ = ("dropped", "fields")

    def __init__(self) -> None:
        self.fields: dict[str, str] = {}
        self.dropped: list[str] = []

    def __repr__(self) -> str:
        return f"Parsed(fields={self.fields!r}, dropped={self.dropped!r})"


def parse(data: bytes) -> Parsed:
    """Parse one message. Never raises: bad lines land in ``dropped`` with the reason."""
    out = Parsed()
    if len(data) > MAX_MESSAGE_BYTES:
        out.dropped.append(f"message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
        return out
    raw_lines = data.split(b"\n")
    if len(raw_lines) > MAX_LINES + 1:
        out.dropped.append(f"message has {len(raw_lines)} lines, over {MAX_LINES}")
        return out
    for number, raw in enumerate(raw_lines, 1):
        if not raw:
            continue
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            out.dropped.append(f"line {number}: invalid UTF-8")
            continue
        key, sep, value = line.partition("=")
        if not sep:
            out.dropped.append(f"line {number}: no '='")
            continue
        if not _valid_key(key):
            out.dropped.append(f"line {number}: invalid key {key[:MAX_KEY_BYTES]!r}")
            continue
        if "\0" in value:
            out.dropped.append(f"line {number}: NUL in value of {key}")
            continue
        out.fields[key] = value
    return out
