"""Edit a TOML file as text, so its comments and layout stay as the operator wrote them.

``scan`` finds what an edit needs: each table header line (with its key path, which tomllib
itself reads from the header) and the top-level ``imports = [...]`` array. It skips strings
(all four kinds), comments and values nested in brackets, so a ``[`` inside a string or a
multi-line array is never taken for a header. Callers re-parse every edited text with tomllib
and compare it with the document they meant to get; this module only finds places.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass

_KEY_IMPORTS = re.compile(r"imports[ \t]*=[ \t]*")


@dataclass(frozen=True)
class Header:
    start: int  # offset of the line holding the header
    path: tuple[str, ...]
    array: bool  # [[array of tables]]


@dataclass(frozen=True)
class Scan:
    headers: tuple[Header, ...]
    imports: tuple[int, int] | None  # offsets of the top-level imports array's "[" and "]"


def skip_string(text: str, i: int) -> int:
    """The offset just past the string that starts at ``i``."""
    quote = text[i]
    if text.startswith(quote * 3, i):
        end = text.find(quote * 3, i + 3)
        if quote == '"':
            while end > 0 and _escaped(text, end):
                end = text.find(quote * 3, end + 1)
        if end < 0:
            return len(text)
        end += 3
        while end < len(text) and text[end] == quote:  # up to two quotes may end the content
            end += 1
        return end
    j = i + 1
    while j < len(text) and text[j] not in (quote, "\n"):
        j += 2 if quote == '"' and text[j] == "\\" else 1
    return j + 1


def _escaped(text: str, i: int) -> bool:
    backslashes = 0
    while i - backslashes - 1 >= 0 and text[i - backslashes - 1] == "\\":
        backslashes += 1
    return backslashes % 2 == 1


def _header_path(header: str) -> tuple[tuple[str, ...], bool]:
    node: object = tomllib.loads(header)
    path: list[str] = []
    while isinstance(node, dict) and len(node) == 1:
        key, node = next(iter(node.items()))
        path.append(key)
        if isinstance(node, list):
            return tuple(path), True
    return tuple(path), False


def scan(text: str) -> Scan:
    """Header lines and the imports array of a document tomllib accepts."""
    headers: list[Header] = []
    imports_open: int | None = None
    imports: tuple[int, int] | None = None
    depth = 0
    line_start = 0
    at_line_start = True
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\n":
            at_line_start, line_start = True, i + 1
            i += 1
            continue
        if c in " \t\r":
            i += 1
            continue
        if c == "#":
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        first, at_line_start = at_line_start, False
        if c in "\"'":
            i = skip_string(text, i)
            continue
        if depth == 0 and first and c == "[":
            j = i
            while j < n and text[j] != "]":
                j = skip_string(text, j) if text[j] in "\"'" else j + 1
            j += 2 if text.startswith("]]", j) else 1
            path, array = _header_path(text[i:j])
            headers.append(Header(line_start, path, array))
            i = j
            continue
        if depth == 0 and first and not headers and imports_open is None:
            match = _KEY_IMPORTS.match(text, i)
            if match and text.startswith("[", match.end()):
                imports_open = match.end()
                depth = 1
                i = match.end() + 1
                continue
        if c in "[{":
            depth += 1
        elif c in "]}":
            depth -= 1
            if depth == 0 and imports_open is not None and imports is None:
                imports = (imports_open, i)
        i += 1
    return Scan(tuple(headers), imports)


def _last_item(text: str, start: int, end: int) -> int | None:
    """Offset of the last character of the last value or comma in text[start:end], or None."""
    last = None
    i = start
    while i < end:
        c = text[i]
        if c == "#":
            newline = text.find("\n", i, end)
            i = end if newline < 0 else newline
        elif c in "\"'":
            i = skip_string(text, i)
            last = i - 1
        elif c in " \t\r\n":
            i += 1
        else:
            last = i
            i += 1
    return last


def append_to_array(text: str, span: tuple[int, int], literal: str) -> str:
    """``text`` with ``literal`` added as the last item of the array at ``span`` ("[", "]"),
    on its own line when the array's closing bracket has a line of its own."""
    open_at, close_at = span
    last = _last_item(text, open_at + 1, close_at)
    if last is None:
        inner = text[open_at + 1 : close_at]
        item = f"\n  {literal},\n" if "\n" in inner else literal
        return text[: open_at + 1] + item + text[close_at:]
    comma = text[last] == ","
    if "\n" in text[last + 1 : close_at]:
        line_end = text.index("\n", last)
        line = text[text.rfind("\n", 0, last) + 1 : last]
        indent = line[: len(line) - len(line.lstrip())]
        added = f"\n{indent}{literal},"
        if comma:
            return text[:line_end] + added + text[line_end:]
        return text[: last + 1] + "," + text[last + 1 : line_end] + added + text[line_end:]
    if comma:
        return text[: last + 1] + f" {literal}," + text[last + 1 :]
    return text[: last + 1] + f", {literal}" + text[last + 1 :]


def remove_tables(text: str, headers: tuple[Header, ...], path: tuple[str, ...]) -> tuple[str, int | None]:
    """``text`` without the tables at ``path`` and below it (each from its header line to the
    next header), and the offset where the first one stood (None when there was none)."""
    spans: list[tuple[int, int]] = []
    for index, header in enumerate(headers):
        if header.path[: len(path)] == path:
            end = headers[index + 1].start if index + 1 < len(headers) else len(text)
            spans.append((header.start, end))
    for start, end in reversed(spans):
        text = text[:start] + text[end:]
    return text, (spans[0][0] if spans else None)
