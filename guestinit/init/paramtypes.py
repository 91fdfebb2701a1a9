"""What a ``guestinit.*`` key is made of: ``Param`` (name, type, parser, default, help), the
error a parser raises, and the value parsers the key tables share.

The tables themselves are params.PARAMS (the boot's keys) and gpu_params.PARAMS (the GPU
phase's keys, which params.PARAMS includes); both import from here, so neither imports the
other's code and the boot path stays light (stdlib only, no dataclasses).
"""

from __future__ import annotations

from guestinit.init.problems import MAX_DIGITS, excerpt

TYPE_CHECKING = False  # collections.abc is not imported on the boot path; mypy reads this as usual
if TYPE_CHECKING:
    from collections.abc import Callable


class ParamError(ValueError):
    """A bad value; the message names the value and what would be accepted."""


class Param:
    __slots__ = ("default", "help", "kind", "name", "parse")

    def __init__(self, name: str, kind: str, parse: Callable[[str], object], default: object, help: str):
        self.name = name
        self.kind = kind
        self.parse = parse
        self.default = default
        self.help = help


def boolean(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "yes", "y", "on", "true"):
        return True
    if low in ("0", "no", "n", "off", "false"):
        return False
    raise ParamError(f"{excerpt(text)} is not a boolean (use on/off, 1/0, yes/no, true/false)")


def seconds_between(low: float, high: float, zero_ok: bool = False) -> Callable[[str], float]:
    """A parser for seconds in (low, high] (or [low, high] with ``zero_ok``)."""

    def parse(text: str) -> float:
        if len(text) > MAX_DIGITS + 2:
            raise ParamError(f"{excerpt(text)} is not a number of seconds (too long)")
        try:
            value = float(text)
        except ValueError:
            raise ParamError(f"{excerpt(text)} is not a number of seconds") from None
        inside = low <= value <= high if zero_ok else low < value <= high
        if not inside:
            op = "<=" if zero_ok else "<"
            raise ParamError(f"{excerpt(text)} is out of range ({low:g} {op} seconds <= {high:g})")
        return value

    return parse


def choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise ParamError(f"{excerpt(text)} is not one of {', '.join(choices)}")
        return text

    parse.__doc__ = "|".join(choices)
    return parse


def string(text: str) -> str:
    return text


def csv(text: str) -> tuple[str, ...]:
    return tuple(item for item in (part.strip() for part in text.split(",")) if item)


def csv_of(item: Callable[[str], str], what: str) -> Callable[[str], tuple[str, ...]]:
    """A parser for a comma-separated list whose every item ``item`` accepts."""

    def parse(text: str) -> tuple[str, ...]:
        out = csv(text)
        for value in out:
            try:
                item(value)
            except ParamError as exc:
                raise ParamError(f"{excerpt(value)} is not {what} ({exc})") from None
        return out

    return parse


def digits(text: str, what: str, most: int = MAX_DIGITS) -> int:
    """A whole number written in ASCII digits, at most ``most`` of them (Python would take 4,300
    digits, or a Unicode digit, and a kernel interface neither)."""
    if not text.isascii() or not text.isdigit():
        raise ParamError(f"{what} {excerpt(text)} is not a whole number")
    if len(text) > most:
        raise ParamError(f"{what} {excerpt(text, 12)} has more than {most} digits")
    return int(text)


def whole_between(low: int, high: int, unit: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        body = text.strip()
        number = body[1:] if body[:1] in ("+", "-") else body
        if not (number.isascii() and number.isdigit()) or len(number) > MAX_DIGITS:
            raise ParamError(f"{excerpt(text)} is not a whole number of {unit}")
        value = int(body)
        if not low <= value <= high:
            raise ParamError(f"{excerpt(text)} is out of range ({low} <= {unit} <= {high})")
        return value

    return parse


def absolute_path(text: str) -> str:
    if (
        not text.startswith("/")
        or not text.isprintable()
        or any(c.isspace() for c in text)
        or len(text) > 4096
    ):
        raise ParamError(f"{excerpt(text)} is not an absolute path without spaces")
    return text
