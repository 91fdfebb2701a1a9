"""systemd's notify message format: newline-separated KEY=VALUE lines (references §3).

Pure functions shared by the guest (encoding) and the host (parsing). Parsing is defensive:
the sender is a tenant's guest and may be hostile, so sizes are bounded and malformed
lines are reported, never raised.
"""

from __future__ import annotations

from guestinit.notify import jsonenc

# Limits the host enforces on what one message may hold. systemd's own notify socket
# accepts datagrams up to this size; a guest has no business sending more.
MAX_MESSAGE_BYTES = 64 * 1024
MAX_LINES = 256
MAX_KEY_BYTES = 64
# The console transport: one line, this mark, then the fields as one JSON object (ASCII only,
# so a terminal or serial line cannot mangle it). A console line is bounded like a message.
CONSOLE_MARK = "GUESTINIT-NOTIFY "
MAX_CONSOLE_LINE_BYTES = MAX_MESSAGE_BYTES
# Keys systemd's protocol uses for itself; a message of only these is not news for a reader.
PROTOCOL_ONLY_KEYS = frozenset({"BARRIER"})


# How much of a rejected value a report quotes.
SHOWN_CHARS = 40


def decimal(text: str, maximum: int) -> int | None:
    """``text`` as a plain decimal number 0..``maximum``, or None. Only ASCII digits, at most as
    many as ``maximum`` has, and no leading zero: no sign, space, underscore or other script's
    digit (``int()`` takes all of those), and nothing a reader could take for octal (systemd's
    ``safe_atou`` reads ``010`` as 8)."""
    if not 0 < len(text) <= len(str(maximum)) or not (text.isascii() and text.isdigit()):
        return None
    if text[0] == "0" and len(text) > 1:
        return None
    value = int(text)
    return value if value <= maximum else None


def shown(value: str) -> str:
    """``value`` quoted for a one-line report: escaped to ASCII (control, bidi and non-ASCII
    characters as ``\\x..``/``\\u....``) and cut to ``SHOWN_CHARS`` characters."""
    if len(value) <= SHOWN_CHARS:
        return ascii(value)
    return f"{value[:SHOWN_CHARS]!a}... ({len(value)} characters)"


def exit_status(value: str) -> int:
    """The number in ``EXIT_STATUS=``: plain decimal 0..255. ValueError naming what was received
    (escaped, bounded) for anything else."""
    status = decimal(value, 255)
    if status is None:
        raise ValueError(f"EXIT_STATUS={shown(value)} is not a decimal number 0..255")
    return status


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


def parse(data: bytes, max_bytes: int = MAX_MESSAGE_BYTES) -> Parsed:
    """Parse one message. Never raises: bad lines land in ``dropped`` with the reason."""
    out = Parsed()
    if len(data) > max_bytes:
        out.dropped.append(f"message of {len(data)} bytes exceeds {max_bytes}")
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


def clean_value(value: str) -> str:
    """A value that ``encode`` accepts: line breaks become spaces, NULs are removed. Used for text
    the sender does not control (exception messages), so reporting never fails on content."""
    return value.replace("\r\n", " ").replace("\n", " ").replace("\r", " ").replace("\0", "")


def fit(fields: dict[str, str], limit: int = MAX_MESSAGE_BYTES) -> dict[str, str]:
    """``fields`` with values cleaned and, when the encoded message would exceed ``limit``, the
    longest values cut (marked with "...") until it fits. Keys are never dropped."""
    out = {key: clean_value(value) for key, value in fields.items()}
    while True:
        size = sum(len(k.encode()) + len(v.encode()) + 2 for k, v in out.items())
        if size <= limit:
            return out
        key = max(out, key=lambda k: len(out[k].encode()))
        value = out[key]
        if not value:
            return out  # only keys left; encode() will say what is wrong
        excess = size - limit
        keep = max(0, len(value) - max(excess, len(value) // 2) - 3)
        out[key] = value[:keep] + "..." if keep else ""


def encode_console_line(fields: dict[str, str]) -> bytes:
    """The console transport's one marked line (``CONSOLE_MARK`` + JSON object + newline)."""
    for key, value in fields.items():
        if not _valid_key(key):
            raise ValueError(f"invalid notify key {key!r}: use A-Z, 0-9 and _")
        if "\n" in value or "\0" in value:
            raise ValueError(f"notify value for {key} contains a newline or NUL")
    line = (CONSOLE_MARK + jsonenc.dumps(fields, ascii=True) + "\n").encode()
    if len(line) > MAX_CONSOLE_LINE_BYTES:
        raise ValueError(f"console line is {len(line)} bytes, over the {MAX_CONSOLE_LINE_BYTES} limit")
    return line


def _utf8(text: str) -> bool:
    """False for a str UTF-8 cannot carry: JSON's \\uD800-\\uDFFF escapes make lone surrogates."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def parse_console_line(line: bytes) -> Parsed | None:
    """The message in one console line, or None when the line carries no mark. Kernel output
    may precede the mark on the same line; what follows it must be one JSON object of strings.
    Never raises."""
    mark = CONSOLE_MARK.encode()
    at = line.find(mark)
    if at < 0:
        return None
    out = Parsed()
    body = line[at + len(mark) :].rstrip(b"\r\n")
    if len(body) > MAX_CONSOLE_LINE_BYTES:
        out.dropped.append(f"console line of {len(body)} bytes exceeds {MAX_CONSOLE_LINE_BYTES}")
        return out
    try:
        loaded = jsonenc.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        out.dropped.append("console line: not a JSON object")
        return out
    if not isinstance(loaded, dict):
        out.dropped.append("console line: not a JSON object")
        return out
    if len(loaded) > MAX_LINES:
        out.dropped.append(f"console line has {len(loaded)} keys, over {MAX_LINES}")
        return out
    for number, (key, value) in enumerate(loaded.items(), 1):
        if not isinstance(value, str):
            out.dropped.append(f"console key {number}: value is not a string")
        elif not _valid_key(key):
            out.dropped.append(f"console key {number}: invalid key {key[:MAX_KEY_BYTES]!r}")
        elif "\n" in value or "\0" in value:
            out.dropped.append(f"console key {number}: newline or NUL in value of {key}")
        elif not _utf8(value):
            out.dropped.append(f"console key {number}: value of {key} is not UTF-8 (a lone surrogate)")
        else:
            out.fields[key] = value
    return out
