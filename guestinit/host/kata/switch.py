"""Which version of a Kata flavour is current: the lock, the switch, takeover, history, pruning.

A public name changes only (a) from "absent" or from what it held to a link through ``current``
that resolves to the very same bytes (taking over a foreign install first copies that install
into a "snapshot" version and points ``current`` at it), or (b) by the switch itself, one rename
of ``current``. Versions are pruned only when neither ``current`` nor ``previous`` names them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from guestinit.host.atomicfs import (
    TMP_PREFIX,
    fsync_dir,
    make_dirs,
    remove_tree_atomic,
    symlink_atomic,
    write_atomic,
    write_fd,
)
from guestinit.host.errors import DeployError
from guestinit.host.kata.layout import Layout
from guestinit.host.kata.versions import create_version, read_record, snapshot_version, utc_stamp


def _read_pointer(link: Path) -> str | None:
    try:
        target = os.readlink(link)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DeployError(f"{link}: not a symlink ({exc.strerror}): move it away and deploy again") from None
    return Path(target).name


def classify(layout: Layout) -> dict[str, str]:
    """Each public name: 'ours' (a link through current), 'absent', or 'foreign'."""
    out: dict[str, str] = {}
    for member, public in layout.public().items():
        if not os.path.lexists(public):
            out[member] = "absent"
        elif public.is_symlink() and os.readlink(public) == layout.stable_target(member):
            out[member] = "ours"
        else:
            out[member] = "foreign"
    return out


def remove_leftovers(layout: Layout) -> list[Path]:
    """Delete temporary names a killed run left behind (the caller holds the lock)."""
    removed: list[Path] = []
    for directory in {layout.assets, layout.defaults, layout.containerd, layout.state, layout.versions}:
        if not directory.is_dir():
            continue
        for entry in directory.iterdir():
            if entry.name.startswith(TMP_PREFIX):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
                removed.append(entry)
        if removed:
            fsync_dir(directory)
    return removed


@contextlib.contextmanager
def locked(layout: Layout) -> Iterator[None]:
    """One deploy or rollback per prefix and flavour at a time (released by the kernel on death)."""
    make_dirs(layout.versions)
    fd = os.open(layout.state / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DeployError(
                f"{layout.state}: another deploy or rollback is running there: wait for it"
            ) from None
        yield
    finally:
        os.close(fd)


# History: one JSON line per switch, appended (and fsync'd) BEFORE the switch. The version to roll
# back to is the "from" of the newest line whose "to" is the current version, so a kill between
# the append and the switch cannot mislead a later rollback.


def history_path(layout: Layout) -> Path:
    return layout.state / "history.jsonl"


def read_history(layout: Layout) -> list[dict[str, str]]:
    try:
        lines = history_path(layout).read_text().splitlines()
    except FileNotFoundError:
        return []
    entries: list[dict[str, str]] = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a line cut short by a kill
        if isinstance(entry, dict) and isinstance(entry.get("to"), str):
            entries.append(entry)
    return entries


def append_history(layout: Layout, entry: dict[str, str]) -> None:
    path = history_path(layout)
    entries = read_history(layout)
    if len(entries) >= 500:  # keep it short: rewrite the newest 100 atomically
        text = "".join(json.dumps(e, sort_keys=True) + "\n" for e in entries[-100:])
        write_atomic(path, text.encode())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        write_fd(fd, (json.dumps(entry, sort_keys=True) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(layout.state)


def current_version(layout: Layout) -> str | None:
    return _read_pointer(layout.current)


def previous_version(layout: Layout, current: str | None = None) -> str | None:
    current = current if current is not None else current_version(layout)
    for entry in reversed(read_history(layout)):
        if entry["to"] == current:
            before = entry.get("from")
            return before if isinstance(before, str) and before else None
    return None


def switch(layout: Layout, target: str, why: str) -> str | None:
    """Make ``target`` the current version: one rename. Returns the version it replaced."""
    old = current_version(layout)
    if old == target:
        return old
    append_history(layout, {"from": old or "", "to": target, "at": utc_stamp(), "by": why})
    symlink_atomic(layout.current, f"versions/{target}")
    return old


def adopt(layout: Layout) -> str | None:
    """Bring foreign public names under guestinit without changing what any of them resolves to.

    Their content is kept as a snapshot version first (so `rollback` can restore it byte for
    byte), ``current`` is pointed at it, then each foreign name becomes a link through current."""
    kinds = classify(layout)
    if "foreign" in kinds.values():
        snapshot = snapshot_version(layout)
        create_version(layout, snapshot)
        switch(layout, snapshot.id, "adopt")
        for member, kind in kinds.items():
            if kind == "foreign":
                symlink_atomic(layout.public()[member], layout.stable_target(member))
    return current_version(layout)


def link_public(layout: Layout, members: set[str]) -> None:
    """Make sure each public name of ``members`` is a link through current (before a switch)."""
    kinds = classify(layout)
    for member in sorted(members & set(kinds)):
        if kinds[member] != "ours":
            public = layout.public()[member]
            make_dirs(public.parent)
            symlink_atomic(public, layout.stable_target(member))


def tidy(layout: Layout) -> None:
    """Drop our public links that the current version has no member for (they dangle)."""
    for member, kind in classify(layout).items():
        if kind == "ours" and not os.path.lexists(layout.current / member):
            public = layout.public()[member]
            public.unlink()
            fsync_dir(public.parent)


def kept_versions(layout: Layout) -> list[tuple[float, str, dict[str, Any]]]:
    """(made at, id, record) of every complete version, newest first."""
    out: list[tuple[float, str, dict[str, Any]]] = []
    if not layout.versions.is_dir():
        return out
    for entry in layout.versions.iterdir():
        if entry.name.startswith(TMP_PREFIX) or not entry.is_dir():
            continue
        try:
            made = (entry / "deploy.json").stat().st_mtime
        except OSError:
            made = 0.0
        out.append((made, entry.name, read_record(entry)))
    out.sort(key=lambda item: (item[0], item[1]), reverse=True)
    return out


def prune_candidates(layout: Layout, keep: int, current: str | None) -> list[str]:
    """Build versions beyond the newest ``keep``, never the current one nor the one before it."""
    protected = {current, previous_version(layout, current)}
    builds = [vid for _, vid, record in kept_versions(layout) if record.get("source") == "build"]
    return [vid for vid in builds[keep:] if vid not in protected]


def prune(layout: Layout, keep: int) -> list[str]:
    doomed = prune_candidates(layout, keep, current_version(layout))
    for vid in doomed:
        remove_tree_atomic(layout.versions / vid)
    referenced: set[str] = set()
    for _, vid, _ in kept_versions(layout):
        for member in (layout.versions / vid).iterdir():
            if member.is_symlink():
                referenced.add(Path(os.readlink(member)).name)
    if layout.assets.is_dir():
        for entry in layout.assets.iterdir():
            if layout.is_versioned_name(entry.name) and entry.name not in referenced:
                entry.unlink()
                doomed.append(entry.name)
        fsync_dir(layout.assets)
    return doomed
