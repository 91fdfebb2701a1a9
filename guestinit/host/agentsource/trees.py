"""A file tree read without mounting it (an initrd, a filesystem image, an archive, a directory),
and path resolution inside it as a chroot would do it: symlinks followed by this code, never by
the host, a bounded number of times, and never out of the tree."""

from __future__ import annotations

import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

MAX_LINKS = 40

Kind = Literal["file", "link", "dir", "other"]


@dataclass(frozen=True)
class Entry:
    kind: Kind
    target: str = ""  # a link's target
    size: int = 0


class TreeError(ValueError):
    """A path cannot be resolved (a link loop, out of the tree) or the tree is unreadable."""


class NotFound(TreeError):
    """No such file or directory (or a file where a directory was expected)."""


class Unreadable(TreeError):
    """The container is corrupt or truncated where it was read."""


class Tree(Protocol):
    def entry(self, path: str) -> Entry | None:
        """The entry at ``path`` (relative, no symlink among its parents), or None."""
        ...

    def copy_out(self, path: str, dest: Path) -> None:
        """Write the regular file at ``path`` to a new file ``dest``."""
        ...


def split(path: str) -> list[str]:
    return [p for p in path.split("/") if p and p != "."]


@dataclass(frozen=True)
class Resolved:
    path: str  # relative, no symlink in it
    chain: tuple[str, ...]  # "link -> target" for each symlink followed
    entry: Entry


def resolve(
    tree: Tree, path: str, clamp: bool = True, aliases: tuple[str, ...] = (), start: str = ""
) -> Resolved:
    """Resolve ``path`` (relative to ``start``, a directory of the tree) as a chroot would.

    With ``clamp`` (a guest filesystem) ``..`` at the root stays at the root and absolute links
    start at the root; without it (a host directory) ``..`` above the root is an error, and an
    absolute link must start with one of ``aliases`` (the tree's own absolute paths)."""
    parts = split(path)
    done = [] if path.startswith("/") else split(start)
    chain: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if done:
                done.pop()
            elif not clamp:
                raise TreeError(f"{path}: leads out of the tree (..)")
            continue
        here = "/".join([*done, part])
        entry = tree.entry(here)
        if entry is None:
            raise NotFound(f"{here}: no such file or directory")
        if entry.kind == "link":
            links += 1
            if links > MAX_LINKS:
                raise TreeError(f"{path}: more than {MAX_LINKS} symbolic links (a loop?)")
            chain.append(f"{here} -> {entry.target}")
            target = entry.target
            if target.startswith("/"):
                done = []
                if not clamp:
                    target = _strip_alias(target, aliases, here)
            parts = split(target) + parts
            continue
        if parts and entry.kind != "dir":
            raise NotFound(f"{here}: not a directory")
        done.append(part)
    final = "/".join(done)
    entry = tree.entry(final) if done else Entry("dir")
    assert entry is not None
    return Resolved(final, tuple(chain), entry)


def _strip_alias(target: str, aliases: tuple[str, ...], link: str) -> str:
    for alias in aliases:
        base = alias.rstrip("/")
        if target == base or target.startswith(base + "/"):
            return target[len(base) :].lstrip("/")
    raise TreeError(f"{link} -> {target}: points outside the tree")


class DirTree:
    """A directory on this host (an extraction, or a Kata prefix such as /opt/kata)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(os.path.realpath(root))

    def entry(self, path: str) -> Entry | None:
        try:
            st = os.lstat(self.root / path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if stat.S_ISLNK(st.st_mode):
            return Entry("link", os.readlink(self.root / path))
        if stat.S_ISDIR(st.st_mode):
            return Entry("dir")
        if stat.S_ISREG(st.st_mode):
            return Entry("file", size=st.st_size)
        return Entry("other")

    def copy_out(self, path: str, dest: Path) -> None:
        src = self.root / path
        fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as fin, open(dest, "xb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)

    def path(self, rel: str) -> Path:
        return self.root / rel
