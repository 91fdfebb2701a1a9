"""A Kata release tarball (``kata-static-<ver>-<arch>.tar.xz|.tar.zst``) as a tree.

The tarball is streamed twice: once for its listing (names, types, link targets), once for the
one member wanted. Nothing but that member is written; gigabytes of other images are skipped."""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path

from guestinit.host.agentsource.trees import Entry, TreeError, split
from guestinit.host.streams import StreamError, opened


def _key(name: str) -> str | None:
    parts = split(name)
    if not parts or ".." in parts:
        return None
    return "/".join(parts)


class TarTree:
    def __init__(self, archive: Path) -> None:
        self.archive = archive
        self.entries: dict[str, Entry] = {}
        self.hardlinks: dict[str, str] = {}
        self._list()

    def _list(self) -> None:
        members = 0
        try:
            with opened(self.archive) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
                for member in tar:
                    members += 1
                    key = _key(member.name)
                    if key is None:
                        continue
                    parts = key.split("/")
                    for i in range(1, len(parts)):
                        self.entries.setdefault("/".join(parts[:i]), Entry("dir"))
                    if member.issym():
                        self.entries[key] = Entry("link", member.linkname)
                    elif member.islnk():
                        target = _key(member.linkname)
                        if target is not None and target in self.entries:
                            self.hardlinks[key] = target
                            self.entries[key] = self.entries[target]
                    elif member.isdir():
                        self.entries[key] = Entry("dir")
                    elif member.isfile():
                        self.entries[key] = Entry("file", size=member.size)
                    else:
                        self.entries[key] = Entry("other")
                while stream.read(1 << 20):
                    pass  # the rest of the last record: a decompressor cut short reports a failure
        except StreamError as exc:
            raise TreeError(str(exc)) from None
        except (tarfile.TarError, EOFError) as exc:
            raise TreeError(f"corrupt or truncated tarball ({exc})") from None
        if not members:
            raise TreeError("an empty tarball")

    def entry(self, path: str) -> Entry | None:
        return self.entries.get(path)

    def copy_out(self, path: str, dest: Path) -> None:
        wanted = self.hardlinks.get(path, path)
        try:
            # check=False: leaving early stops the decompressor; the member's size is checked.
            with opened(self.archive, check=False) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
                for member in tar:
                    if member.isfile() and _key(member.name) == wanted:
                        source = tar.extractfile(member)
                        assert source is not None
                        with open(dest, "xb") as out:
                            shutil.copyfileobj(source, out, 1 << 20)
                        if dest.stat().st_size != member.size:
                            raise TreeError(f"{path}: truncated in the tarball")
                        return
        except StreamError as exc:
            raise TreeError(str(exc)) from None
        except (tarfile.TarError, EOFError) as exc:
            raise TreeError(f"corrupt or truncated tarball ({exc})") from None
        raise TreeError(f"{path}: not in the tarball on a second read (did it change?)")
