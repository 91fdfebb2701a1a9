"""trim.py --python: the standard-library closure of dist-packages and the sourceless .pyc layout,
on a small tree laid out like an image (run by this interpreter, as the image's own runs it)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from guestinit.host.build import trim

VERSION = f"python{sys.version_info.major}.{sys.version_info.minor}"


def _tree(tmp_path: Path) -> tuple[Path, Path, Path]:
    root = tmp_path / "root"
    stdlib = root / "usr/lib" / VERSION
    dist = root / "usr/lib/python3/dist-packages"
    (stdlib / "lib-dynload").mkdir(parents=True)
    (stdlib / "zz_pkg").mkdir()
    (dist / "app/tests").mkdir(parents=True)
    files = {
        # module-level chain: app.main -> zz_used -> zz_pkg.sub
        stdlib / "zz_used.py": "import zz_pkg.sub\nVALUE = zz_pkg.sub.X\n",
        stdlib / "zz_pkg/__init__.py": "",
        stdlib / "zz_pkg/sub.py": "X = 1\n",
        # imported only inside an app function: kept (static scan), never run at build time
        stdlib / "zz_lazy.py": "import zz_lazy_dep\n",
        stdlib / "zz_lazy_dep.py": "",
        # reached only through a lazy import inside a stdlib function, via a LAZY_ONLY module
        stdlib / "zz_selftest.py": "def _test():\n    import doctest\n",
        stdlib / "doctest.py": "import zz_doctest_only\n",
        stdlib / "zz_doctest_only.py": "",
        stdlib / "zz_unused.py": "",
        dist / "app/__init__.py": "",
        dist / "app/tests/__init__.py": "",
        dist / "app/tests/test_app.py": "import zz_unused\n",
        dist / "app/main.py": "import zz_used\nimport zz_selftest\n\ndef later():\n    import zz_lazy\n",
        dist
        / "app/run.py": "#!/usr/bin/python3\nimport app.main\nraise SystemExit('a script, never imported')\n",
    }
    for path, text in files.items():
        path.write_text(text)
    os.chmod(dist / "app/run.py", 0o755)
    return root, stdlib, dist


def test_closure_keeps_what_dist_packages_can_import(tmp_path: Path) -> None:
    _, stdlib, dist = _tree(tmp_path)
    shutil.rmtree(dist / "app/tests")  # trim_python() removes it before the closure
    files = {p.relative_to(stdlib).as_posix() for p in trim.python_closure(stdlib, [dist], roots=())}
    assert {"zz_used.py", "zz_pkg/__init__.py", "zz_pkg/sub.py", "zz_lazy.py", "zz_lazy_dep.py"} <= files
    assert "zz_selftest.py" in files
    assert not {"zz_unused.py", "doctest.py", "zz_doctest_only.py"} & files


def test_direct_imports_resolve_relative_and_from_imports(tmp_path: Path) -> None:
    (tmp_path / "pkg/sub").mkdir(parents=True)
    (tmp_path / "pkg/sub/m.py").write_text(
        "from . import sibling\nfrom ..other import thing\nimport json.decoder\n"
    )
    names = trim.direct_imports(tmp_path)
    assert {"pkg.sub", "pkg.sub.sibling", "pkg.other", "pkg.other.thing", "json.decoder"} <= names


def test_trim_python_leaves_only_legacy_pycs(tmp_path: Path) -> None:
    root, stdlib, dist = _tree(tmp_path)
    (dist / "app/__pycache__").mkdir()
    (dist / "app/__pycache__/main.cpython-311.pyc").write_bytes(b"stale")
    kept, removed = trim.trim_python(root)
    assert removed >= 3 and kept >= 6
    assert sorted(p.relative_to(stdlib).as_posix() for p in stdlib.rglob("*") if p.is_file()) == [
        "zz_lazy.pyc",
        "zz_lazy_dep.pyc",
        "zz_pkg/__init__.pyc",
        "zz_pkg/sub.pyc",
        "zz_selftest.pyc",
        "zz_used.pyc",
    ]
    assert (stdlib / "lib-dynload").is_dir()  # Python's exec-prefix landmark stays
    assert not list(root.rglob("__pycache__"))
    assert not (dist / "app/main.py").exists() and (dist / "app/main.pyc").exists()
    assert not (dist / "app/tests").exists()  # a package's test suite is not shipped
    assert (dist / "app/run.py").exists()  # a script stays runnable by path
    # unchecked-hash pycs: flags word 0b01 (hash-based, source not checked)
    assert int.from_bytes((dist / "app/main.pyc").read_bytes()[4:8], "little") == 1
    # and they import without any source
    code = "import sys; sys.path[:0] = sys.argv[1:]; import app.main; print(app.main.zz_used.VALUE)"
    out = subprocess.run(
        [sys.executable, "-I", "-c", code, os.fspath(stdlib), os.fspath(dist)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "1"


def test_keep_list_drops_apply_before_the_closure(tmp_path: Path) -> None:
    root, stdlib, dist = _tree(tmp_path)
    (dist / "app/_other_os.py").write_text("import zz_unused\n")
    (dist / "app/colour.py").write_text(
        "def paint():\n    import zz_pkg\n"
    )  # a lazy import of a dropped package
    keep = tmp_path / "keep.list"
    keep.write_text(
        "usr/lib/python3/dist-packages/**\n-usr/lib/python3/dist-packages/app/_other_os.*\n"
        f"-usr/lib/{VERSION}/zz_pkg/**\n"
    )
    assert trim.main([os.fspath(root), os.fspath(keep), "--python"]) == 0
    assert not (dist / "app/_other_os.py").exists() and not (dist / "app/_other_os.pyc").exists()
    assert not (stdlib / "zz_unused.pyc").exists()
    assert (stdlib / "zz_used.pyc").exists()
    assert not (stdlib / "zz_pkg").exists()  # emptied, so it cannot import as a namespace package
