"""Trim an image tree to a keep-list, keeping the shared libraries its ELF files need.

Runs on the build host from mkosi's finalize step (stdlib only: it runs under the host's
system Python inside mkosi's sandbox). Everything the Debian packages installed that the
keep-list does not name is deleted, so the initrd the kernel unpacks stays small: under TCG,
image size is boot time.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import struct
import sys
from pathlib import Path

# Mount points and standard directories an init expects, kept even when empty.
KEEP_DIRS = frozenset({"dev", "proc", "sys", "run", "tmp", "var", "var/tmp", "etc", "root", "mnt", "usr"})
LIBRARY_DIRS = ("usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu", "usr/lib64", "lib64", "usr/lib")


def read_keep_list(path: Path) -> tuple[list[str], list[str]]:
    keep: list[str] = []
    drop: list[str] = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        (drop if line.startswith("-") else keep).append(line.lstrip("-"))
    return keep, drop


def _match(rel: str, patterns: list[str]) -> bool:
    for pattern in patterns:
        if fnmatch.fnmatchcase(rel, pattern):
            return True
        if pattern.endswith("/**") and (rel == pattern[:-3] or rel.startswith(pattern[:-2])):
            return True
    return False


def elf_needed(path: Path) -> list[str]:
    """DT_NEEDED entries of a 64-bit little-endian ELF file ([] for anything else)."""
    try:
        data = path.read_bytes()
    except OSError:
        return []
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return []
    (e_phoff,) = struct.unpack_from("<Q", data, 0x20)
    e_phentsize, e_phnum = struct.unpack_from("<HH", data, 0x36)
    loads: list[tuple[int, int, int]] = []
    dynamic: tuple[int, int] | None = None
    for i in range(e_phnum):
        off = e_phoff + i * e_phentsize
        p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz = struct.unpack_from("<IIQQQQ", data, off)
        if p_type == 1:
            loads.append((p_vaddr, p_offset, p_filesz))
        elif p_type == 2:
            dynamic = (p_offset, p_filesz)
    if dynamic is None:
        return []

    def v2o(vaddr: int) -> int:
        for start, offset, size in loads:
            if start <= vaddr < start + size:
                return vaddr - start + offset
        return vaddr

    needed: list[int] = []
    strtab = 0
    off, size = dynamic
    for pos in range(off, off + size, 16):
        tag, val = struct.unpack_from("<qQ", data, pos)
        if tag == 0:
            break
        if tag == 1:
            needed.append(val)
        elif tag == 5:
            strtab = v2o(val)
    names = []
    for n in needed:
        end = data.index(b"\0", strtab + n)
        names.append(data[strtab + n : end].decode())
    return names


def resolve_in_root(root: Path, rel: str, hops: list[str] | None = None) -> str:
    """Resolve rel inside root as a chroot would (absolute links point into root).

    Every symlink passed on the way is appended to hops, so keeping a file keeps the links
    that lead to it.
    """
    parts = [p for p in rel.split("/") if p and p != "."]
    done: list[str] = []
    budget = 40
    while parts:
        part = parts.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        candidate = "/".join([*done, part])
        full = root / candidate
        if full.is_symlink() and budget > 0:
            budget -= 1
            if hops is not None:
                hops.append(candidate)
            target = os.readlink(full)
            if target.startswith("/"):
                done = []
            parts = [p for p in target.split("/") if p and p != "."] + parts
            continue
        done.append(part)
    return "/".join(done)


def _find_library(root: Path, name: str) -> str | None:
    for d in LIBRARY_DIRS:
        rel = f"{d}/{name}"
        if os.path.lexists(root / rel):
            return rel
    return None


def _keep(root: Path, rel: str, kept: set[str]) -> str:
    hops: list[str] = []
    real = resolve_in_root(root, rel, hops)
    kept.update(hops)
    kept.add(real)
    return real


def trim(root: Path, keep_list: Path, dry_run: bool = False) -> tuple[int, int]:
    keep, drop = read_keep_list(keep_list)
    kept: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            rel = os.path.relpath(os.path.join(dirpath, name), root)
            if _match(rel, keep) and not _match(rel, drop):
                _keep(root, rel, kept)
    # ELF closure: the interpreter, kmod and extension modules pull in their libraries.
    queue = sorted(kept)
    seen: set[str] = set()
    while queue:
        rel = queue.pop()
        if rel in seen or not (root / rel).is_file() or (root / rel).is_symlink():
            continue
        seen.add(rel)
        for lib in elf_needed(root / rel):
            found = _find_library(root, lib)
            if found is not None:
                queue.append(_keep(root, found, kept))
    for loader in ("lib64/ld-linux-x86-64.so.2",):
        if os.path.lexists(root / loader):
            _keep(root, loader, kept)
    parents = {str(Path(k).parent) for k in kept}
    for k in list(parents):
        while k not in (".", ""):
            parents.add(k)
            k = str(Path(k).parent)
    removed = 0
    removed_bytes = 0
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames + dirnames:
            full = Path(dirpath) / name
            rel = os.path.relpath(full, root)
            if rel in kept or rel.startswith("dev/") or rel == "dev":
                continue
            if full.is_symlink() or not full.is_dir():
                removed_bytes += full.lstat().st_size
                removed += 1
                if not dry_run:
                    full.unlink()
            elif rel not in parents and rel not in KEEP_DIRS and not dry_run:
                try:
                    full.rmdir()
                except OSError:
                    pass
    return removed, removed_bytes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("keep_list", type=Path)
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        print(f"trim: {args.root} is not a directory: give the image root", file=sys.stderr)
        return 2
    removed, size = trim(args.root, args.keep_list, args.dry_run)
    print(f"trim: removed {removed} files, {size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
