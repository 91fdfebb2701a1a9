"""The built Kata image carries what the boot-time work left in it, and its trimmed Python still
imports every guest module: read back from the cpio and run with the image's own interpreter."""

from __future__ import annotations

import marshal
import os
import subprocess
from pathlib import Path

import pytest

from guestinit.host.streams import read_all

pytestmark = pytest.mark.boot


@pytest.fixture(scope="module")
def tree(kata_image: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("kata-root")
    subprocess.run(
        ["cpio", "-id", "--quiet", "--no-absolute-filenames"],
        input=read_all(kata_image),
        cwd=root,
        check=True,
        capture_output=True,
    )
    return root


def test_initrd_is_a_newc_cpio_in_legacy_lz4_frames(kata_image: Path) -> None:
    # mkosi's plain cpio packed with lz4 -l -9 (images.py): the kernel's fastest decoder, and
    # the only lz4 format it reads (its size is in `guestctl bench`'s table, not asserted)
    assert kata_image.name == "guestinit-kata.cpio.lz4"
    with open(kata_image, "rb") as f:
        assert f.read(4) == b"\x02\x21\x4c\x18"
    assert read_all(kata_image).startswith(b"070701")
    for stale in ("guestinit-kata.cpio", "guestinit-kata.cpio.zst"):
        assert not kata_image.with_name(stale).exists()  # no second image beside it


def test_python_is_sourceless_and_trimmed(tree: Path) -> None:
    stdlib = tree / "usr/lib/python3.13"
    assert (stdlib / "os.pyc").is_file() and (stdlib / "lib-dynload").is_dir()
    assert not list(stdlib.rglob("*.py")) and not list(tree.rglob("__pycache__"))
    for unused in ("unittest", "asyncio", "email", "pydoc.pyc", "curses", "multiprocessing"):
        assert not (stdlib / unused).exists(), unused
    dist = tree / "usr/lib/python3/dist-packages"
    assert sorted(p.relative_to(dist).as_posix() for p in dist.rglob("*.py")) == ["guestinit/init/init.py"]


def test_init_runs_the_compiled_init_through_env(tree: Path) -> None:
    line = (tree / "init").read_text()
    pyc = "/usr/lib/python3/dist-packages/guestinit/init/init.pyc"
    assert line == f"#!/usr/bin/env -S /usr/bin/python3 -IS {pyc}\n"
    assert (tree / pyc.lstrip("/")).is_file() and (tree / "usr/bin/env").is_file()
    assert os.readlink(tree / "usr/sbin/init") == "/init"


def test_no_kmod_nor_the_libraries_only_it_and_hashlibs_openssl_back_end_needed(tree: Path) -> None:
    # PID 1 loads its modules itself and locks module loading after boot (keep.list)
    for gone in (
        "usr/bin/kmod",
        "usr/bin/modprobe",
        "usr/sbin/modprobe",
        "usr/sbin/insmod",
        "usr/sbin/depmod",
    ):
        assert not os.path.lexists(tree / gone), gone
    libs = tree / "usr/lib/x86_64-linux-gnu"
    assert not list(libs.glob("libcrypto.so*")) and not list(libs.glob("libzstd.so*"))
    assert not list((tree / "usr/lib/python3.13/lib-dynload").glob("_hashlib*"))
    modules = list((tree / "usr/lib/modules").rglob("*.ko*"))
    assert modules and all(m.name.endswith(".ko") for m in modules)


def test_every_elf_file_finds_its_libraries_in_the_image(tree: Path) -> None:
    """What ldd would say, read from the files themselves: every DT_NEEDED of every ELF file
    (programs, libraries, extension modules) is in the image's library folders."""
    from guestinit.host.build.trim import LIBRARY_DIRS, elf_needed

    missing = []
    elves = 0
    for path in sorted(tree.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        needed = elf_needed(path)
        elves += bool(needed)
        for lib in needed:
            if not any(os.path.lexists(tree / d / lib) for d in LIBRARY_DIRS):
                missing.append(f"{path.relative_to(tree)}: {lib}")
    assert elves > 5 and missing == []


def test_the_boot_bundle_holds_the_boot_path(tree: Path) -> None:
    bundle = tree / "usr/lib/python3/dist-packages/guestinit/init/boot.bundle"
    data = marshal.loads(bundle.read_bytes())
    names = set(data["modules"])
    assert {
        "guestinit.init.pid1",
        "guestinit.init.boot",
        "guestinit.init.cli",
        "guestinit.init.syscalls",
    } <= names
    assert "ctypes" not in names  # libc is called through _ctypes alone
    assert not any(n.startswith(("guestinit.host", "psutil", "pyinotify")) for n in names)
    for _is_package, origin, header, _code in data["modules"].values():  # each as it is in the image
        assert (tree / origin.lstrip("/")).read_bytes()[:16] == header


@pytest.mark.skipif(os.geteuid() != 0, reason="chroot needs root")
def test_every_guest_module_imports_with_the_image_python(tree: Path) -> None:
    code = (
        "import importlib, pkgutil, sys\n"
        "sys.path.append('/usr/lib/python3/dist-packages')\n"
        "import guestinit\n"
        "bad = []\n"
        "for m in pkgutil.walk_packages(guestinit.__path__, 'guestinit.'):\n"
        "    if m.name != 'guestinit.init.init':\n"
        "        try:\n"
        "            importlib.import_module(m.name)\n"
        "        except Exception as exc:\n"
        "            bad.append(f'{m.name}: {exc!r}')\n"
        "import psutil, pyinotify, lzma, ctypes, json, subprocess, traceback, argparse, hashlib\n"
        "assert hashlib.sha256(b'').hexdigest().startswith('e3b0c442')  # built-in back-end\n"
        "assert hashlib.md5(b'').hexdigest() and hashlib.blake2b(b'').digest()\n"
        "print(len(sys.modules), bad)\n"
    )
    out = subprocess.run(
        ["chroot", os.fspath(tree), "/usr/bin/python3", "-I", "-c", code],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("[]"), out.stdout
    assert not out.stderr  # no "Could not find platform libraries" warnings either


@pytest.mark.skipif(os.geteuid() != 0, reason="chroot needs root")
def test_init_imports_its_boot_path_from_the_bundle(tree: Path) -> None:
    code = (
        "import sys\n"
        "sys.path.append('/usr/lib/python3/dist-packages')\n"
        "from guestinit.init import bundle\n"
        "finder = bundle.install()\n"
        "import guestinit.init.cli, guestinit.init.pid1\n"
        "print(len(finder.served), sys.modules['guestinit.init.boot'].__spec__.loader is finder)\n"
    )
    out = subprocess.run(
        ["chroot", os.fspath(tree), "/usr/bin/python3", "-IS", "-c", code], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    served, from_bundle = out.stdout.split()
    assert int(served) > 30 and from_bundle == "True"
