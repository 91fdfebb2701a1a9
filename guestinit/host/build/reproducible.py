"""Reproducible builds: the same inputs give the same bytes, today or another day.

mkosi clamps every mtime in the image to SOURCE_DATE_EPOCH (``--source-date-epoch``, its
``SourceDateEpoch=``) and writes the cpio sorted, with renumbered inodes; the package versions
are in the manifest. What is left to us is the epoch itself: the time of the last commit that
touched the image's inputs (so a commit elsewhere in the tree does not change the image), or
``$SOURCE_DATE_EPOCH`` when the caller sets one, or the newest input file's mtime outside a git
checkout. ``guestctl build --check-reproducible`` builds a second time from nothing (a fresh
mkosi cache; only downloaded packages are shared) and compares, naming the first file that
differs.
"""

from __future__ import annotations

import filecmp
import os
import subprocess
from pathlib import Path

from guestinit.host.build import newc
from guestinit.host.errors import UserError


def source_date_epoch(root: Path, inputs: tuple[str, ...]) -> tuple[int, str]:
    """The epoch and where it came from."""
    env = os.environ.get("SOURCE_DATE_EPOCH", "")
    if env:
        if not (env.isascii() and env.isdigit() and len(env) <= 12):
            raise UserError(
                f"SOURCE_DATE_EPOCH={env[:40]!r} is not a number of seconds",
                hint="unset it, or set it to e.g. $(git log -1 --format=%ct)",
            )
        return int(env), "$SOURCE_DATE_EPOCH"
    existing = [entry for entry in inputs if (root / entry).exists()]
    try:
        out = subprocess.run(
            ["git", "-C", os.fspath(root), "log", "-1", "--format=%ct", "--", *existing],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        stamp = out.stdout.strip()
        if out.returncode == 0 and stamp.isdigit():
            return int(stamp), "the last commit touching the image's inputs"
    except (OSError, subprocess.SubprocessError):
        pass
    newest = 0.0
    for entry in existing:
        base = root / entry
        for path in [base] if base.is_file() else base.rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                newest = max(newest, path.stat().st_mtime)
    return int(newest), "the newest input file (not a git checkout)"


def first_difference(a: Path, b: Path) -> str:
    """Where two builds of one artifact part: the first cpio member (path and what differs),
    else the first differing byte."""
    try:
        left, right = list(newc.read_file(a)), list(newc.read_file(b))
    except newc.NewcError:
        return _first_byte(a, b)
    by_name = {entry.name: entry for entry in right}
    for entry in left:
        other = by_name.pop(entry.name, None)
        if other is None:
            return f"{entry.name} is only in the first build"
        fields = [
            field
            for field in ("mode", "uid", "gid", "mtime", "rdevmajor", "rdevminor", "data")
            if getattr(entry, field) != getattr(other, field)
        ]
        if fields:
            what = ", ".join("content" if f == "data" else f for f in fields)
            return f"{entry.name}: {what} differ"
    if by_name:
        return f"{sorted(by_name)[0]} is only in the second build"
    return "same members, other order or padding"


def _first_byte(a: Path, b: Path) -> str:
    if filecmp.cmp(a, b, shallow=False):
        return "identical"
    with open(a, "rb") as fa, open(b, "rb") as fb:
        offset = 0
        while True:
            x, y = fa.read(1 << 16), fb.read(1 << 16)
            if x != y:
                for i, (p, q) in enumerate(zip(x, y, strict=False)):
                    if p != q:
                        return f"first differing byte at offset {offset + i}"
                return f"one is longer: they part at offset {offset + min(len(x), len(y))}"
            if not x:
                return "identical"
            offset += len(x)


def compare(first: list[dict[str, object]], second: list[dict[str, object]], a: Path, b: Path) -> list[str]:
    """Differences between two builds' artifact lists (name, kind, sha256, size), each with the
    first differing file; empty when they are byte for byte the same."""
    problems = []
    left = {str(x["name"]): x for x in first}
    right = {str(x["name"]): x for x in second}
    for name in sorted(left.keys() | right.keys()):
        if name not in right or name not in left:
            problems.append(f"{name}: only in the {'first' if name in left else 'second'} build")
        elif left[name] != right[name]:
            problems.append(
                f"{name}: sha256 {str(left[name]['sha256'])[:16]}… vs "
                f"{str(right[name]['sha256'])[:16]}…; {first_difference(a / name, b / name)}"
            )
    return problems
