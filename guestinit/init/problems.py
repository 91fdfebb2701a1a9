"""A configuration problem as one bounded line, and the bounds every reader of configuration
shares (guestinit.toml, services.d/*.toml, the kernel command line).

A ``Problem`` is the one-line message itself (a ``str``, so every list of problems stays a
list of strings) that also carries where it was found, the key and whether the input is
unusable (``error``) or merely ignored (``warning``), for ``guestinit check --json``. No
message ever echoes a hostile value whole: ``excerpt`` shows a prefix and the length.
"""

from __future__ import annotations

ERROR = "error"  # something written is not used as written (a bad value, file or service)
WARNING = "warning"  # something written is ignored (an unknown key or name)

MAX_FILE_BYTES = 64 * 1024  # a configuration file larger than this is refused unread
MAX_NESTING = 32  # arrays and tables inside a value
MAX_DIGITS = 20  # digits of a number written as text; TOML integers are 64-bit (19 digits)
MAX_LINE = 400  # a problem's message is cut to this many characters
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1


def excerpt(value: object, limit: int = 40) -> str:
    """A short, safe rendering of any value: long strings show a prefix and their length,
    huge numbers their digit count, containers their kind and size (never a deep repr)."""
    if isinstance(value, str):
        if len(value) <= limit:
            return repr(value)
        return f"{value[:limit]!r}… ({len(value)} characters)"
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return repr(value)
    if isinstance(value, int):
        if INT64_MIN <= value <= INT64_MAX:
            return repr(value)
        if value.bit_length() < 14000:  # str() takes up to 4,300 digits
            return f"a number of {len(str(abs(value)))} digits"
        return f"a number of about {int(value.bit_length() * 0.30103) + 1} digits"
    if isinstance(value, list | tuple):
        if len(value) <= 4 and all(
            isinstance(v, str | int | float) and len(excerpt(v, 16)) <= 24 for v in value
        ):
            return "[" + ", ".join(excerpt(v, 16) for v in value) + "]"
        return f"a list of {len(value)} item(s)"
    if isinstance(value, dict):
        return f"a table of {len(value)} key(s)"
    return f"a {type(value).__name__}"


def one_line(text: str, limit: int = MAX_LINE) -> str:
    """``text`` on one line, at most ``limit`` characters."""
    if "\n" in text or "\r" in text:
        text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Problem(str):
    """One problem: the bounded one-line message (this string) naming the place, the key and
    the fix; ``where`` (a file or "kernel command line"), ``key`` and ``level`` repeat the
    first two and say whether the input is unusable (error) or ignored (warning)."""

    where: str
    key: str
    level: str

    def __new__(cls, text: str, where: str = "", key: str = "", level: str = ERROR) -> Problem:
        self = super().__new__(cls, one_line(text))
        self.where = where
        self.key = key
        self.level = level
        return self

    def as_dict(self) -> dict[str, str]:
        return {"level": self.level, "file": self.where, "key": self.key, "message": str(self)}


def is_error(problem: str) -> bool:
    """A plain string (from code that predates Problem) counts as a warning."""
    return isinstance(problem, Problem) and problem.level == ERROR
