"""The shape of guestinit/host/listen: small modules, an empty __init__, imports that flow one
way, and nothing from the host beyond errors.py (tests/boot/test_notify_boot.py copies the
package and errors.py into a guest, whose Python has only the standard library the image's
own code imports)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "guestinit/host/listen"
PREFIX = "guestinit.host.listen."
MAX_LINES = 500


def _imports(path: Path) -> set[str]:
    """Modules ``path`` imports from guestinit."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("guestinit"):
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names if alias.name.startswith("guestinit"))
    return out


def test_modules_are_small_and_init_is_empty() -> None:
    modules = sorted(PACKAGE.glob("*.py"))
    assert len(modules) >= 5
    for module in modules:
        assert len(module.read_text().splitlines()) <= MAX_LINES, module.name
    assert (PACKAGE / "__init__.py").read_text().strip() == ""


def test_imports_stay_inside_the_package_notify_and_errors() -> None:
    for module in PACKAGE.glob("*.py"):
        for name in _imports(module):
            assert (
                name.startswith(PREFIX)
                or name.startswith("guestinit.notify.")
                or name == "guestinit.host.errors"
            ), (module.name, name)


def test_no_import_cycles() -> None:
    graph = {
        module.stem: {name.removeprefix(PREFIX) for name in _imports(module) if name.startswith(PREFIX)}
        for module in PACKAGE.glob("*.py")
    }
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, " -> ".join((*path, name))
        if name in done:
            return
        for dep in graph.get(name, ()):
            visit(dep, (*path, name))
        done.add(name)

    for name in graph:
        visit(name, ())
    assert "cli" not in set().union(*graph.values())  # nothing below the command imports it
