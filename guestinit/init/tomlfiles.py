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
import sys

from guestinit.init.root import Root
from guestinit.notify import jsonenc

CACHE = "/etc/guestinit/toml-cache.json"
CONFIG_DIR = "/etc/guestinit"


class TomlError(ValueError):
    """A file that is not valid TOML; the message names the file and the place."""


def read_cache(root: Root) -> dict[str, dict[str, object]]:
    try:
        data = jsonenc.loads(root.read_text(CACHE, "{}"))
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def parse_text(text: str, where: str) -> dict[str, object]:
    import tomllib

    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TomlError(f"{where}: not valid TOML: {exc}") from None


def load(root: Root, guest_path: str, cache: dict[str, dict[str, object]] | None = None) -> dict[str, object]:
    """The table in one TOML file (OSError when it cannot be read, TomlError when it is bad)."""
    with open(root(guest_path), encoding="utf-8") as f:
        text = f.read()
    entry = (cache or {}).get(guest_path)
    if entry is not None and entry.get("text") == text and isinstance(entry.get("data"), dict):
        data = entry["data"]
        assert isinstance(data, dict)
        return data
    return parse_text(text, guest_path)


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
        with open(root(path), encoding="utf-8") as f:
            text = f.read()
        try:
            data = parse_text(text, path)
        except TomlError:
            continue
        if _jsonable(data):
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
