"""Compact JSON for the boot path without importing :mod:`json`.

``import json`` pulls in ``re`` and the pure-Python decoder, about a tenth of the init's
import time under TCG. The init only writes small documents of dicts, lists, strings,
numbers, booleans and None (phase timings, module results) and reads one cache file; this
module does exactly that. ``loads`` uses CPython's C scanner (``_json``, the same one
``json.loads`` uses) and falls back to :mod:`json` where it is missing. The output of
``dumps`` is what ``json.dumps(obj, separators=(",", ":"), ensure_ascii=ascii)`` gives
(tests check both against :mod:`json`).
"""

from __future__ import annotations

_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}


def _string(text: str, ascii: bool) -> str:
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif code < 0x20 or (ascii and code > 0x7E):
            if code > 0xFFFF:
                code -= 0x10000
                out.append(f"\\u{0xD800 | (code >> 10):04x}\\u{0xDC00 | (code & 0x3FF):04x}")
            else:
                out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _float(value: float) -> str:
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "Infinity" if value > 0 else "-Infinity"
    return float.__repr__(value)


def dumps(obj: object, ascii: bool = False) -> str:
    """Serialize obj compactly; raises TypeError for types JSON has no form for."""
    if obj is None:
        return "null"
    if obj is True:
        return "true"
    if obj is False:
        return "false"
    if isinstance(obj, str):
        return _string(obj, ascii)
    if isinstance(obj, int):
        return int.__repr__(obj)
    if isinstance(obj, float):
        return _float(obj)
    if isinstance(obj, dict):
        items = []
        for key, value in obj.items():
            if isinstance(key, str):
                k = key
            elif key is None or isinstance(key, bool | int | float):
                k = dumps(key)
            else:
                raise TypeError(f"keys must be str, int, float, bool or None, not {type(key).__name__}")
            items.append(_string(k, ascii) + ":" + dumps(value, ascii))
        return "{" + ",".join(items) + "}"
    if isinstance(obj, list | tuple):
        return "[" + ",".join(dumps(v, ascii) for v in obj) + "]"
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


class _Context:
    """The attributes CPython's C scanner reads from its json.JSONDecoder."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    memo: dict[str, str] = {}  # noqa: RUF012 - read by the scanner, never mutated here

    @staticmethod
    def parse_constant(name: str) -> float:
        return {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}[name]


def loads(text: str) -> object:
    """Parse one JSON document; raises ValueError when it is not valid JSON."""
    try:
        from _json import make_scanner
    except ImportError:  # pragma: no cover - every CPython we run on has it
        import json

        return json.loads(text)
    scan = make_scanner(_Context())  # type: ignore[arg-type]
    start = len(text) - len(text.lstrip(" \t\n\r"))
    try:
        try:
            value, end = scan(text, start)
        except SystemError:
            # CPython 3.11's scanner reports an error inside a string (a control character, a
            # bad escape, no closing quote) with json.decoder.JSONDecodeError, which it looks up
            # in sys.modules without importing it: before anything imported json, that error
            # comes out as SystemError. A rare path: import it and scan again.
            import json.decoder

            value, end = scan(text, start)
    except StopIteration as exc:
        raise ValueError(f"invalid JSON at offset {exc.value}") from None
    rest = text[end:].strip(" \t\n\r")
    if rest:
        raise ValueError(f"extra data at offset {end}")
    return value
