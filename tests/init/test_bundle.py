"""The boot-path bundle: written from the modules a root import brings in (sourceless .pyc, as in the
image), installed first on sys.meta_path, serving those modules with the attributes a path import
gives them, and stepping aside for a module whose file changed or a bundle of another Python.
Each case runs in a fresh interpreter (the finder changes sys.meta_path)."""

from __future__ import annotations

import json
import marshal
import os
import py_compile
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

SOURCES = {
    "pkgx/__init__.py": "",
    "pkgx/a.py": "from pkgx import b\nfrom pkgx.sub import c\nVALUE = b.VALUE + c.VALUE\n",
    "pkgx/b.py": "VALUE = 1\n",
    "pkgx/sub/__init__.py": "",
    "pkgx/sub/c.py": "VALUE = 10\n",
    "pkgx/sub/lazy.py": "VALUE = 100\n",
}


def _sourceless(tree: Path, rel: str, text: str) -> None:
    source = tree / rel
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_text(text)
    py_compile.compile(
        os.fspath(source),
        cfile=os.fspath(source) + "c",
        doraise=True,
        invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
    )
    source.unlink()


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for rel, text in SOURCES.items():
        _sourceless(tmp_path, rel, text)
    return tmp_path


def _python(tree: Path, code: str) -> dict[str, object]:
    prelude = f"import sys, json\nsys.path[:0] = [{os.fspath(REPO)!r}, {os.fspath(tree)!r}]\n"
    out = subprocess.run(
        [sys.executable, "-I", "-c", prelude + code], capture_output=True, text=True, check=False, cwd=tree
    )
    assert out.returncode == 0, out.stderr
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _write(tree: Path) -> list[str]:
    code = (
        "from guestinit.init import bundle\n"
        f"print(json.dumps(bundle.write({os.fspath(tree / 'x.bundle')!r}, ('pkgx.a',))))\n"
    )
    names = _python(tree, code)
    assert isinstance(names, list)
    return names


INSTALL_AND_IMPORT = """
from guestinit.init import bundle
finder = bundle.install({path!r})
import pkgx.a, pkgx.sub.lazy
mods = {{n: sys.modules[n] for n in ("pkgx", "pkgx.a", "pkgx.b", "pkgx.sub", "pkgx.sub.c", "pkgx.sub.lazy")}}
print(json.dumps({{
    "installed": finder is not None,
    "first": finder is not None and sys.meta_path[0] is finder,
    "served": finder.served if finder else [],
    "value": pkgx.a.VALUE,
    "files": {{n: m.__file__ for n, m in mods.items()}},
    "paths": {{n: list(m.__path__) for n, m in mods.items() if hasattr(m, "__path__")}},
    "loaders": {{n: type(m.__spec__.loader).__name__ for n, m in mods.items()}},
}}))
"""


def test_written_bundle_holds_what_the_root_imported(tree: Path) -> None:
    assert _write(tree) == ["pkgx", "pkgx.a", "pkgx.b", "pkgx.sub", "pkgx.sub.c"]
    data = marshal.loads((tree / "x.bundle").read_bytes())
    assert data["version"] == 1 and set(data["modules"]) == {
        "pkgx",
        "pkgx.a",
        "pkgx.b",
        "pkgx.sub",
        "pkgx.sub.c",
    }
    is_package, origin, header, _code = data["modules"]["pkgx.sub"]
    assert is_package and origin == os.fspath(tree / "pkgx/sub/__init__.pyc")
    assert header == (tree / "pkgx/sub/__init__.pyc").read_bytes()[:16]


def test_installed_bundle_serves_its_modules_as_a_path_import_would(tree: Path) -> None:
    _write(tree)
    got = _python(tree, INSTALL_AND_IMPORT.format(path=os.fspath(tree / "x.bundle")))
    assert got["installed"] and got["first"] and got["value"] == 11
    assert got["served"] == ["pkgx", "pkgx.a", "pkgx.b", "pkgx.sub", "pkgx.sub.c"]
    files = got["files"]
    assert isinstance(files, dict)
    assert files["pkgx.a"] == os.fspath(tree / "pkgx/a.pyc")
    assert files["pkgx.sub"] == os.fspath(tree / "pkgx/sub/__init__.pyc")
    assert got["paths"] == {"pkgx": [os.fspath(tree / "pkgx")], "pkgx.sub": [os.fspath(tree / "pkgx/sub")]}
    loaders = got["loaders"]
    assert isinstance(loaders, dict)
    assert loaders["pkgx.a"] == "BundleFinder"
    assert loaders["pkgx.sub.lazy"] == "SourcelessFileLoader"  # not bundled: found through __path__


def test_a_module_replaced_since_is_imported_from_its_file(tree: Path) -> None:
    _write(tree)
    _sourceless(tree, "pkgx/b.py", "VALUE = 2  # replaced, e.g. by an extra initrd\n")
    got = _python(tree, INSTALL_AND_IMPORT.format(path=os.fspath(tree / "x.bundle")))
    assert got["value"] == 12
    assert "pkgx.b" not in got["served"]  # type: ignore[operator]
    assert got["loaders"]["pkgx.b"] == "SourcelessFileLoader"  # type: ignore[index]


@pytest.mark.parametrize(
    "content",
    [
        None,
        b"",
        b"not marshal",
        marshal.dumps({"version": 1, "magic": b"\0\0\r\n", "modules": {}}),
        marshal.dumps([1]),
    ],
)
def test_no_usable_bundle_changes_nothing(tree: Path, content: bytes | None) -> None:
    path = tree / "x.bundle"
    if content is not None:
        path.write_bytes(content)
    got = _python(tree, INSTALL_AND_IMPORT.format(path=os.fspath(path)))
    assert not got["installed"] and got["value"] == 11
    assert set(got["loaders"].values()) == {"SourcelessFileLoader"}  # type: ignore[union-attr]
