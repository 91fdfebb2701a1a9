"""Trim an image tree to a keep-list, keeping the shared libraries its ELF files need.

Runs on the build host from mkosi's finalize step (stdlib only: it runs under the host's
system Python inside mkosi's sandbox). Everything the Debian packages installed that the
keep-list does not name is deleted, so the initrd the kernel unpacks stays small: under TCG,
image size is boot time.

``--python ROOT`` is the Python side, run earlier inside the image by its own interpreter
(image/mkosi.postinst.chroot): it keeps only the standard-library modules that the code in
dist-packages can import (every import statement, found by modulefinder) and replaces
sources by legacy ``.pyc`` files beside them, compiled once with unchecked hashes.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import py_compile  # imported before trim_python() deletes unused modules, itself perhaps
import shutil
import struct
import sys
from collections.abc import Iterable
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


# --- Python: run inside the image by its own interpreter (trim.py --python ROOT) -------------

# Modules imported by name rather than by an import statement: the interpreter's start-up
# (codecs, site, runpy for -m, traceback for printing errors), the codecs str.encode() and
# socket name lookups find through the encodings package, and shutil, which argparse imports
# inside a function to size its help text.
PYTHON_ROOTS = (
    "os",
    "site",
    "sitecustomize",
    "runpy",
    "traceback",
    "warnings",
    "shutil",
    "encodings",
    "encodings.aliases",
    "encodings.utf_8",
    "encodings.utf_8_sig",
    "encodings.ascii",
    "encodings.latin_1",
    "encodings.idna",
)
# Standard-library modules that other standard-library modules import only inside functions
# on paths a guest never takes (pickle's doctest self-test, tokenize's command line,
# hashlib's error logging, importlib's package-metadata finders, shutil's archive formats).
# modulefinder follows every such import, which would keep most of the library; these are
# left out unless dist-packages imports them, directly or through what it imports.
LAZY_ONLY = frozenset(
    {
        "doctest", "pdb", "pydoc", "pydoc_data", "unittest", "_pyrepl", "rlcompleter", "readline",
        "code", "codeop", "bdb", "cmd", "trace", "profile", "cProfile", "pstats", "timeit",
        "tkinter", "idlelib", "turtle", "turtledemo", "lib2to3", "ensurepip", "venv", "test",
        "webbrowser", "importlib.metadata", "importlib.resources", "zipfile", "tarfile", "bz2",
        "email", "http", "urllib.request", "xml", "xmlrpc", "mimetypes", "ssl", "asyncio",
        "concurrent", "multiprocessing", "logging", "pickle", "statistics", "fractions",
        "decimal", "_pydecimal", "_pydatetime", "datetime", "csv", "curses", "sqlite3", "dbm",
        "plistlib", "platform", "getpass", "netrc", "calendar",
    }
)  # fmt: skip


def module_names(tree: Path) -> list[str]:
    """Dotted names of every .py module under a sys.path entry."""
    names = []
    for py in sorted(tree.rglob("*.py")):
        parts = list(py.relative_to(tree).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        if parts and all(p.isidentifier() for p in parts):
            names.append(".".join(parts))
    return names


def direct_imports(tree: Path) -> set[str]:
    """Every module name an import statement under ``tree`` names (functions included; for
    ``from X import Y`` both X and X.Y, since Y may be a submodule)."""
    import ast

    names: set[str] = set()
    for py in sorted(tree.rglob("*.py")):
        try:
            module = ast.parse(py.read_bytes(), os.fspath(py))
        except (SyntaxError, ValueError):
            continue
        package = ".".join(py.relative_to(tree).parent.parts)
        for node in ast.walk(module):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(p for p in [*parent, base] if p)
                if base:
                    names.add(base)
                    names.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return names


def _with_parents(names: Iterable[str]) -> set[str]:
    out: set[str] = set()
    for name in names:
        parts = name.split(".")
        out.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return out


def imported_at_runtime(names: Iterable[str]) -> set[Path]:
    """Files of every module loaded by importing ``names`` in a fresh interpreter (the truth for
    module-level imports, extension modules' own imports included)."""
    import json
    import subprocess

    code = (
        "import sys, json\n"
        "for n in json.loads(sys.argv[1]):\n"
        "    try:\n"
        "        __import__(n)\n"
        "    except BaseException:\n"
        "        pass\n"
        "files = [getattr(m, '__file__', None) for m in list(sys.modules.values())]\n"
        "sys.stdout.write('\\n@@MODULES@@' + json.dumps([f for f in files if f]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-c", code, json.dumps(sorted(names))],
        capture_output=True,
        text=True,
        check=True,
        cwd="/",
    ).stdout
    return {Path(f) for f in json.loads(out.rpartition("@@MODULES@@")[2])}


def python_closure(stdlib: Path, scan: list[Path], roots: Iterable[str] = PYTHON_ROOTS) -> set[Path]:
    """The files under ``stdlib`` that ``roots`` and the modules under the ``scan`` trees can
    import: what importing them loads (run), plus what any import statement reachable from
    them names (modulefinder), less LAZY_ONLY modules nothing loads at import time.
    Must run on the interpreter that owns ``stdlib``."""
    import modulefinder

    direct = set(roots)
    modules: list[str] = []
    for tree in scan:
        direct |= direct_imports(tree)
        for name in module_names(tree):
            modules.append(name)
    # scripts run when imported (/init is one): importing is for library modules only
    scripts = {n for n in modules if n.endswith("__main__") or _is_script(scan, n)}
    loaded = imported_at_runtime(direct | (set(modules) - scripts))
    needed = {_module_of(stdlib, f) for f in loaded if f.is_relative_to(stdlib)}
    keep_names = _with_parents(needed | direct)
    excludes = [n for n in LAZY_ONLY if n not in keep_names]
    dynload = stdlib / "lib-dynload"
    finder = modulefinder.ModuleFinder(
        path=[os.fspath(p) for p in (stdlib, dynload, *scan)], excludes=excludes
    )
    for name in sorted(direct | set(modules)):
        try:
            finder.import_hook(name)
        except (ImportError, SyntaxError, AttributeError):  # optional modules stay optional;
            continue  # AttributeError: modulefinder meeting a namespace package
    files = {f for f in loaded if f.is_relative_to(stdlib)}
    for module in finder.modules.values():
        file = getattr(module, "__file__", None)
        if file and Path(file).is_relative_to(stdlib):
            files.add(Path(file))
    return files


def _module_of(stdlib: Path, file: Path) -> str:
    rel = file.relative_to(stdlib)
    if rel.parts[0] == "lib-dynload":
        return rel.name.split(".")[0]
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_script(scan: list[Path], name: str) -> bool:
    for tree in scan:
        path = tree.joinpath(*name.split(".")).with_suffix(".py")
        if path.is_file() and os.access(path, os.X_OK):
            return True
    return False


def compile_legacy(source: Path) -> Path:
    """Compile ``source`` to ``source + "c"`` (the layout Python imports without a source),
    with an unchecked hash: valid without the source, the same bytes on every build."""
    target = Path(os.fspath(source) + "c")
    py_compile.compile(
        os.fspath(source),
        cfile=os.fspath(target),
        doraise=True,
        invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
    )
    return target


def sourceless(tree: Path, files: Iterable[Path] | None = None, keep_scripts: bool = True) -> None:
    """Replace the .py files under ``tree`` (or just ``files``) by legacy .pyc files and drop
    __pycache__. With ``keep_scripts``, executable sources (the /init link points at one) are
    compiled for whoever imports them and kept for the kernel to run."""
    for cache in sorted(tree.rglob("__pycache__"), reverse=True):
        for f in cache.iterdir():
            f.unlink()
        cache.rmdir()
    for source in sorted(files if files is not None else tree.rglob("*.py")):
        if source.suffix != ".py" or not source.exists():
            continue
        compile_legacy(source)
        if keep_scripts and os.access(source, os.X_OK) and not source.is_symlink():
            continue
        source.unlink()


def trim_python(root: Path, drop: list[str] | None = None) -> tuple[int, int]:
    """Inside the image (root "/"), with its own interpreter: keep the standard-library closure
    of dist-packages, all of it as legacy .pyc. ``drop``: a keep-list's "-" patterns, applied
    to the Python trees first, so what the final trim removes imports nothing here.
    Returns (stdlib files kept, files removed)."""
    stdlib = root / f"usr/lib/python{sys.version_info.major}.{sys.version_info.minor}"
    scan = [p for p in (root / "usr/lib/python3/dist-packages",) if p.is_dir()]
    if not stdlib.is_dir():
        raise FileNotFoundError(f"{stdlib} (run trim.py --python with the image's own python3)")
    removed = 0
    for tree in (stdlib, *scan):
        for path in sorted(tree.rglob("*"), reverse=True):  # children before their folder
            rel = os.path.relpath(path, root)
            if path.is_dir() and not path.is_symlink():
                if drop and not any(path.iterdir()):
                    path.rmdir()  # an emptied package must not import as a namespace package
            elif drop and _match(rel, drop):
                path.unlink()
                removed += 1
    for tree in scan:  # packages' own test suites (psutil/tests) never run in an image
        for tests in sorted(p for p in tree.glob("*/test*") if p.is_dir() and p.name in ("test", "tests")):
            removed += sum(1 for f in tests.rglob("*") if not f.is_dir())
            shutil.rmtree(tests)
    keep = python_closure(stdlib, scan)
    for dirpath, dirnames, filenames in os.walk(stdlib, topdown=False):
        for name in filenames:
            path = Path(dirpath) / name
            if path not in keep:
                path.unlink()
                removed += 1
        for name in dirnames:
            path = Path(dirpath) / name
            if path != stdlib / "lib-dynload" and not path.is_symlink() and not any(path.iterdir()):
                path.rmdir()
    sourceless(stdlib, [p for p in keep if p.suffix == ".py"], keep_scripts=False)
    for tree in scan:
        sourceless(tree)
    return len(keep), removed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "trim").splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("keep_list", type=Path, nargs="?")
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument(
        "--python",
        action="store_true",
        help="inside the image: trim its Python to what dist-packages imports (KEEP_LIST: its "
        '"-" lines are applied first)',
    )
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        print(f"trim: {args.root} is not a directory: give the image root", file=sys.stderr)
        return 2
    if args.python:
        drop = read_keep_list(args.keep_list)[1] if args.keep_list is not None else []
        kept, removed = trim_python(args.root, drop)
        print(f"trim: kept {kept} standard-library modules (as .pyc), removed {removed} files")
        return 0
    if args.keep_list is None:
        print("trim: give a keep-list (or --python)", file=sys.stderr)
        return 2
    removed, size = trim(args.root, args.keep_list, args.dry_run)
    print(f"trim: removed {removed} files, {size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
