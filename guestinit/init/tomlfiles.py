"""Reading the image's TOML files (guestinit.toml, services.d/*.toml) cheaply at boot.

``tomllib`` costs more to import than the rest of a service-less boot path (typing, string,
datetime: ~7 ms on a host, ten times that under TCG), so the image build parses its own TOML
files once and stores the results in CACHE as JSON. At boot a file whose text is exactly the
cached text is taken from the cache; any other file (an operator's extra initrd, an edited
file) is parsed with tomllib, imported only then. The cache never changes what a file means.

    python -m guestinit.init.tomlfiles [ROOT]    (write ROOT/etc/guestinit/toml-cache.json)

The image's cache is generated into image/mkosi.extra (``make docs``; a test checks it is
current), so building the image needs no extra step.
"""

from __future__ import annotations

import os
import stat
import sys

from guestinit.init.problems import (
    INT64_MAX,
    INT64_MIN,
    MAX_DIGITS,
    MAX_FILE_BYTES,
    MAX_NESTING,
    excerpt,
    one_line,
)
from guestinit.init.root import Root
from guestinit.notify import jsonenc

CACHE = "/etc/guestinit/toml-cache.json"
CONFIG_DIR = "/etc/guestinit"
MAX_CACHE_BYTES = 1 << 20


class TomlError(ValueError):
    """A file that is refused or not valid TOML; the message names the file, the place and the
    fix, and ``key`` the top-level key when one is to blame."""

    def __init__(self, message: str, key: str = "") -> None:
        super().__init__(message)
        self.key = key


def read_text(root: Root, guest_path: str, limit: int = MAX_FILE_BYTES) -> str:
    """The text of a configuration file, read safely: anything but a regular file (a FIFO, a
    device, a directory, a symbolic link) is refused without reading it, and so is a file over
    ``limit`` bytes or one that is not UTF-8 (TomlError). OSError when it cannot be opened."""
    path = root(guest_path)
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise TomlError(
            f"{guest_path}: {_kind(st.st_mode)}, not a regular file: refused (make it a plain file)"
        )
    # O_NOFOLLOW | O_NONBLOCK: should the path change between lstat and open, a link is not
    # followed and a FIFO does not block; fstat then judges what was really opened.
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise TomlError(f"{guest_path}: {_kind(st.st_mode)}, not a regular file: refused")
        if st.st_size > limit:
            raise TomlError(f"{guest_path}: {st.st_size} bytes: refused (at most {limit} bytes)")
        data = os.read(fd, limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise TomlError(f"{guest_path}: more than {limit} bytes: refused")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise TomlError(
            f"{guest_path}: not UTF-8 (line {line}, byte {exc.start}): save it as UTF-8"
        ) from None


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def read_cache(root: Root) -> dict[str, dict[str, object]]:
    try:
        data = jsonenc.loads(read_text(root, CACHE, MAX_CACHE_BYTES))
    except (OSError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def parse_text(text: str, where: str) -> dict[str, object]:
    """Parse TOML text; TomlError (naming the file, the key and the line) when it is not valid
    or nests deeper than MAX_NESTING (checked before the recursive parser sees it)."""
    too_deep = nesting_beyond(text, MAX_NESTING)
    if too_deep is not None:
        line, key = too_deep
        raise TomlError(
            f"{where}: {key or 'a value'}: arrays and tables nested more than {MAX_NESTING} deep "
            f"(line {line}): refused (flatten it)",
            key,
        )
    import tomllib

    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TomlError(f"{where}: not valid TOML: {exc}") from None
    except ValueError as exc:  # an integer literal longer than Python converts (4,300 digits)
        raise TomlError(
            f"{where}: not valid TOML: a number is too long ({one_line(str(exc), 80)}); "
            "TOML integers are 64-bit"
        ) from None
    except RecursionError:  # not reached past the nesting check; kept as the last guard
        raise TomlError(f"{where}: nested too deeply to parse: refused (flatten it)") from None


_OPENERS = "[{"
_CLOSERS = "]}"


def nesting_beyond(text: str, limit: int) -> tuple[int, str] | None:
    """(line, top-level key) where arrays and inline tables in ``text`` nest deeper than
    ``limit``, or None. Strings and comments are skipped; a text with no more than ``limit``
    brackets in all is passed without a scan."""
    if text.count("[") + text.count("{") <= limit:
        return None
    depth = 0
    line = 1
    line_start = 0
    key = ""
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "\n":
            line += 1
            line_start = i + 1
        elif ch == "#":
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        elif ch in "\"'":
            triple = text.startswith(ch * 3, i)
            quote = ch * 3 if triple else ch
            j = i + len(quote)
            while True:
                end = text.find(quote, j)
                if end < 0:
                    return None  # an unclosed string: the parser reports it
                if ch == '"' and _escaped(text, end):
                    j = end + 1
                    continue
                break
            line += text.count("\n", i, end)
            i = end + len(quote)
            continue
        elif ch in _OPENERS:
            depth += 1
            if depth > limit:
                return line, key
        elif ch in _CLOSERS:
            depth = max(0, depth - 1)
        elif ch == "=" and depth == 0:
            key = text[line_start:i].strip()[:64]
        i += 1
    return None


def _escaped(text: str, at: int) -> bool:
    """Whether the quote at ``at`` is escaped (an odd number of backslashes before it)."""
    count = 0
    while at - count - 1 >= 0 and text[at - count - 1] == "\\":
        count += 1
    return count % 2 == 1


def oversized(table: dict[str, object]) -> dict[str, str]:
    """Top-level keys whose values nest deeper than MAX_NESTING or hold an integer outside
    TOML's 64-bit range, with the reason (walked without recursion)."""
    bad: dict[str, str] = {}
    for key, value in table.items():
        stack: list[tuple[object, int]] = [(value, 0)]
        while stack:
            item, depth = stack.pop()
            if isinstance(item, bool):
                continue
            if isinstance(item, int):
                if not INT64_MIN <= item <= INT64_MAX:
                    bad[key] = (
                        f"{excerpt(item)}: outside TOML's 64-bit integers (at most {MAX_DIGITS - 1} digits)"
                    )
                    break
            elif isinstance(item, dict | list):
                if depth >= MAX_NESTING:
                    bad[key] = f"arrays and tables nested more than {MAX_NESTING} deep: refused (flatten it)"
                    break
                children = item.values() if isinstance(item, dict) else item
                stack.extend((child, depth + 1) for child in children)
    return bad


def load(
    root: Root, guest_path: str, cache: dict[str, dict[str, object]] | None = None
) -> tuple[dict[str, object], dict[str, str]]:
    """The table in one TOML file, read safely (``read_text``), and the top-level keys left out
    of it for breaking a limit (``oversized``), with the reason. OSError when it cannot be
    read, TomlError when it is refused or not valid TOML."""
    text = read_text(root, guest_path)
    entry = (cache or {}).get(guest_path)
    if isinstance(entry, dict) and entry.get("text") == text and isinstance(entry.get("data"), dict):
        data = entry["data"]
        assert isinstance(data, dict)
    else:
        data = parse_text(text, guest_path)
    bad = oversized(data)
    if bad:
        data = {k: v for k, v in data.items() if k not in bad}
    return data, bad


def toml_files(root: Root, directory: str = CONFIG_DIR) -> list[str]:
    """Guest paths of every *.toml under directory (recursively), sorted."""
    found: list[str] = []
    base = root(directory)
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames.sort()
        for name in sorted(filenames):
            if name.endswith(".toml"):
                rel = os.path.relpath(os.path.join(dirpath, name), base)
                found.append(f"{directory}/{rel}")
    return found


def _jsonable(value: object) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _jsonable(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_jsonable(v) for v in value)
    return isinstance(value, str | int | float | bool)


def build_cache(root: Root) -> dict[str, dict[str, object]]:
    """Parse every TOML file under /etc/guestinit and write the cache atomically.
    Files that are not valid TOML, or hold values JSON cannot carry (dates), are left out:
    they are parsed (and reported) at boot."""
    cache: dict[str, dict[str, object]] = {}
    for path in toml_files(root):
        try:
            text = read_text(root, path)
            data = parse_text(text, path)
        except (OSError, TomlError):
            continue
        if not oversized(data) and _jsonable(data):
            cache[path] = {"text": text, "data": data}
    import json

    from guestinit.atomicfile import write_atomic

    write_atomic(root(CACHE), json.dumps(cache, sort_keys=True, separators=(",", ":")))
    return cache


def main(argv: list[str]) -> int:
    root = Root(argv[0] if argv else "/")
    cache = build_cache(root)
    print(f"{root(CACHE)}: {len(cache)} file(s) cached")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
