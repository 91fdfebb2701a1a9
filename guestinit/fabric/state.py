"""fm-controller's memory: the set of partitions it activated, persisted atomically so that a
restart of fabricmanager (in restart mode) or of the controller itself loses nothing.

The file is JSON, ``{"format": 1, "active": [ids], "updated": "<UTC time>"}``, written to a
temporary file beside it, fsynced, renamed over the old one, and the folder fsynced.
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Iterable
from pathlib import Path

from guestinit.atomicfile import write_atomic

FORMAT = 1


class StateError(ValueError):
    pass


class StateFile:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def load(self) -> tuple[int, ...]:
        """The persisted active set; empty when there is no file yet."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return ()
        except OSError as exc:
            raise StateError(f"state file {self.path}: cannot read it: {exc.strerror}") from None
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or data.get("format") != FORMAT:
                raise ValueError(f"not format {FORMAT}")
            ids = data["active"]
            if not isinstance(ids, list) or not all(isinstance(i, int) and 0 <= i < 2**32 for i in ids):
                raise ValueError("'active' is not a list of partition ids")
        except (ValueError, KeyError) as exc:
            raise StateError(
                f"state file {self.path} is damaged ({exc}); check `fmctl list` against it, then remove it "
                "or fix its 'active' list"
            ) from None
        return tuple(sorted(set(ids)))

    def save(self, ids: Iterable[int]) -> None:
        data = {
            "format": FORMAT,
            "active": sorted(set(ids)),
            "updated": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
        write_atomic(self.path, json.dumps(data) + "\n", mode=0o600)
