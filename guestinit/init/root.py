"""The one injectable root: everything the init reads or writes goes through ``Root``.

``Root("/")`` in a real guest, ``Root(fixture_dir)`` against a captured tree, ``Root(tmp_path)``
in tests. Paths are given as absolute guest paths ("/proc/cmdline") and mapped under the root.
"""

from __future__ import annotations

import os


class Root:
    __slots__ = ("path",)

    def __init__(self, path: str | os.PathLike[str] = "/") -> None:
        self.path = os.fspath(path)

    def __call__(self, guest_path: str) -> str:
        """Map an absolute guest path to the host path under this root."""
        if self.path == "/":
            return guest_path
        return os.path.join(self.path, guest_path.lstrip("/"))

    @property
    def is_real(self) -> bool:
        return self.path == "/"

    def read_text(self, guest_path: str, default: str | None = None) -> str:
        try:
            with open(self(guest_path), encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            if default is None:
                raise
            return default

    def write_text(self, guest_path: str, text: str) -> None:
        with open(self(guest_path), "w", encoding="utf-8") as f:
            f.write(text)

    def exists(self, guest_path: str) -> bool:
        return os.path.lexists(self(guest_path))

    def listdir(self, guest_path: str) -> list[str]:
        try:
            return sorted(os.listdir(self(guest_path)))
        except OSError:
            return []

    def __repr__(self) -> str:
        return f"Root({self.path!r})"
