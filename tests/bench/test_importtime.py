"""The in-guest import report: -X importtime lines read back from a console log among the kernel's
own lines, the heavy-module check, and the /init overlay that turns the report on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from guestinit.host.bench import importtime
from guestinit.host.build import newc
from guestinit.host.errors import UserError

CONSOLE = """\
[    2.201000] Run /init as init process
import time: self [us] | cumulative | imported package
import time:       139 |        139 | linecache
import time:      1356 |       1356 |     guestinit
import time:       140 |       1496 |   guestinit.init
[    2.950000] random: crng init done
import time:      4195 |       4195 |         types
import time:       917 |       6013 |       ctypes
import time:       320 |      21641 | guestinit.init.pid1
"""
PYC = "/usr/lib/python3/dist-packages/guestinit/init/init.pyc"


def test_parse_reads_every_import_line_and_its_depth() -> None:
    found = importtime.parse(CONSOLE)
    assert [(i.name, i.self_us, i.cumulative_us, i.depth) for i in found] == [
        ("linecache", 139, 139, 0),
        ("guestinit", 1356, 1356, 2),
        ("guestinit.init", 140, 1496, 1),
        ("types", 4195, 4195, 4),
        ("ctypes", 917, 6013, 3),
        ("guestinit.init.pid1", 320, 21641, 0),
    ]
    assert importtime.total_us(found) == 139 + 1356 + 140 + 4195 + 917 + 320
    assert importtime.parse("no imports here\n") == []


def test_heavy_modules_and_their_submodules_are_named() -> None:
    found = importtime.parse(CONSOLE)
    assert importtime.heavy(found) == ["ctypes"]  # captured while the boot path still imported it
    extra = importtime.parse("import time: 10 | 10 | typing\nimport time: 5 | 5 |   json.decoder\n")
    assert importtime.heavy(found + extra) == ["ctypes", "json.decoder", "typing"]
    assert importtime.heavy(found, frozenset({"ctypes"})) == ["ctypes"]


def test_report_names_the_costliest_first() -> None:
    text = importtime.report(importtime.parse(CONSOLE), top=2)
    lines = text.splitlines()
    assert lines[0] == "boot path imports: 6 modules, 7.1 ms in all (self times)"
    assert lines[2].split()[0] == "types" and lines[3].split()[0] == "guestinit"


def test_overlay_adds_the_flag_to_the_images_own_init(tmp_path: Path) -> None:
    image = tmp_path / "image.cpio"
    line = f"#!/usr/bin/env -S /usr/bin/python3 -IS {PYC}\n"
    image.write_bytes(newc.write([newc.Entry("init", newc.S_IFREG | 0o755, line.encode())]))
    out = importtime.overlay(image, tmp_path / "extra.cpio")
    (entry,) = list(newc.read_file(out))
    assert entry.name == "init" and entry.mode == newc.S_IFREG | 0o755
    assert entry.data.decode() == f"#!/usr/bin/env -S /usr/bin/python3 -IS -X importtime {PYC}\n"


def test_an_image_whose_init_is_not_python_is_refused(tmp_path: Path) -> None:
    image = tmp_path / "busybox.cpio"
    image.write_bytes(newc.write([newc.Entry("init", newc.S_IFREG | 0o755, b"#!/bin/busybox sh\n")]))
    with pytest.raises(UserError, match="does not run python3 -IS"):
        importtime.init_line(image)
    image.write_bytes(newc.write([newc.Entry("sbin", newc.S_IFDIR | 0o755)]))
    with pytest.raises(UserError, match="has no /init file"):
        importtime.init_line(image)


def test_an_image_the_host_cannot_decompress_is_a_user_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seen on a machine without lz4: the bench's boots ran (the kernel decompresses), then the
    import report stopped the whole bench with a traceback, and its results were lost."""
    from guestinit.host import streams

    image = tmp_path / "image.cpio.lz4"
    line = f"#!/usr/bin/env -S /usr/bin/python3 -IS {PYC}\n"
    image.write_bytes(
        streams.compress(newc.write([newc.Entry("init", newc.S_IFREG | 0o755, line.encode())]), "lz4")
    )
    monkeypatch.setattr(streams.shutil, "which", lambda *args, **kwargs: None)
    with pytest.raises(UserError, match=r"image\.cpio\.lz4: needs the lz4 program: apt-get install lz4"):
        importtime.overlay(image, tmp_path / "extra.cpio")
    assert not (tmp_path / "extra.cpio").exists()


def test_an_init_linked_to_init_py_is_named_and_the_report_says_it_was_not_measured(tmp_path: Path) -> None:
    """The service VM's /init is a link to init.py: no line to add the flag to. The bench says so
    in its report and goes on with the other images (it stopped the whole run before)."""
    from guestinit.host.bench.report import format_table

    image = tmp_path / "servicevm.cpio"
    link = "/usr/lib/python3/dist-packages/guestinit/init/init.py"
    image.write_bytes(newc.write([newc.Entry("init", newc.S_IFLNK | 0o777, link.encode())]))
    with pytest.raises(UserError, match="/init is a link to /usr/lib/python3/dist-packages") as caught:
        importtime.overlay(image, tmp_path / "overlay.cpio")
    assert not (tmp_path / "overlay.cpio").exists()
    report = json.loads((Path(__file__).parent / "data" / "recorded-bench.json").read_text())
    report["imports"] = {"servicevm": {"ready": None, "skipped": str(caught.value)}}
    lines = format_table(report).splitlines()
    assert lines[-1].startswith("imports servicevm: not measured (") and "is a link to" in lines[-1]
