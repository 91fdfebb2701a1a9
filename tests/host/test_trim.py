from __future__ import annotations

import os
import shutil
from pathlib import Path

from guestinit.host.build.trim import elf_needed, resolve_in_root, trim


def test_elf_needed_reads_python() -> None:
    needed = elf_needed(Path(os.path.realpath("/usr/bin/python3")))
    assert "libc.so.6" in needed


def test_resolve_in_root_follows_absolute_links(tmp_path: Path) -> None:
    (tmp_path / "usr/lib").mkdir(parents=True)
    (tmp_path / "lib").symlink_to("usr/lib")
    (tmp_path / "usr/lib/real").write_text("x")
    (tmp_path / "usr/lib/link").symlink_to("/usr/lib/real")
    hops: list[str] = []
    assert resolve_in_root(tmp_path, "lib/link", hops) == "usr/lib/real"
    assert hops == ["lib", "usr/lib/link"]


def test_trim_keeps_listed_files_and_library_closure(tmp_path: Path) -> None:
    root = tmp_path / "root"
    libdir = root / "usr/lib/x86_64-linux-gnu"
    libdir.mkdir(parents=True)
    (root / "usr/bin").mkdir(parents=True)
    (root / "lib").symlink_to("usr/lib")
    python = Path(os.path.realpath("/usr/bin/python3"))
    shutil.copy(python, root / "usr/bin/python3")
    for lib in elf_needed(python):
        for d in ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu"):
            if os.path.exists(f"{d}/{lib}"):
                shutil.copy(f"{d}/{lib}", libdir / lib)
                break
    (libdir / "libunused.so.1").write_bytes(b"junk")
    (root / "usr/share/doc").mkdir(parents=True)
    (root / "usr/share/doc/README").write_text("doc")
    (root / "proc").mkdir()
    keep = tmp_path / "keep.list"
    keep.write_text("# comment\nlib\nusr/bin/python3\n")
    removed, _ = trim(root, keep)
    assert removed == 2
    assert (root / "usr/bin/python3").exists()
    assert (libdir / "libc.so.6").exists()
    assert not (libdir / "libunused.so.1").exists()
    assert not (root / "usr/share").exists()
    assert (root / "proc").is_dir() and (root / "lib").is_symlink()
