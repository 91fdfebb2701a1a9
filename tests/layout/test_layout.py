"""The shape of the code: imports flow one way (no cycle anywhere in guestinit, typing-only
imports included), the guest side never reaches host or service-VM code, and no module grows
past what fits on a screen or two."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "guestinit"
MAX_LINES = 500


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_generated(path: Path) -> bool:
    return path.name.endswith(("_pb2.py", "_pb2_grpc.py", "_pb2.pyi"))


SOURCES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if not is_generated(p)}


def resolve(name: str) -> str | None:
    """The guestinit module ``name`` refers to, or the nearest package above it (for
    ``from pkg import attribute``); None outside guestinit."""
    while name and name not in SOURCES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str) -> set[str]:
    path = SOURCES[module]
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for name in names:
            if name.startswith("guestinit"):
                target = resolve(name)
                if target is not None and target != module:
                    found.add(target)
    return found


GRAPH = {module: imports_of(module) for module in SOURCES}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, list[str]]] = [(start, sorted(graph[start]))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, todo = work[-1]
            if todo:
                nxt = todo.pop()
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, sorted(graph.get(nxt, ()))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_walker_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_walker_sees_relative_and_typing_only_imports() -> None:
    assert "guestinit.init.context" in GRAPH["guestinit.init.gpu.phase"]  # under TYPE_CHECKING
    assert "guestinit.init.services.keys" in GRAPH["guestinit.init.services.files"]


def test_no_import_cycle_in_guestinit() -> None:
    assert cycles(GRAPH) == []


@pytest.mark.parametrize(
    ("side", "forbidden"),
    [
        ("guestinit.init", ("guestinit.host", "guestinit.fabric")),
        ("guestinit.notify", ("guestinit.host", "guestinit.fabric", "guestinit.init")),
        ("guestinit.fabric", ("guestinit.host", "guestinit.init")),
    ],
)
def test_sides_stay_apart(side: str, forbidden: tuple[str, ...]) -> None:
    crossings = sorted(
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        if module == side or module.startswith(side + ".")
        for target in targets
        if target.startswith(forbidden)
    )
    assert crossings == []


def test_duties_do_not_import_the_boot_sequence() -> None:
    """boot.py calls duties; only the PID 1 driver and the CLI above it import boot."""
    importers = sorted(m for m, targets in GRAPH.items() if "guestinit.init.boot" in targets)
    assert importers == ["guestinit.init.pid1"]


def test_modules_fit_on_a_screen_or_two() -> None:
    long = {
        name: n for name, path in SOURCES.items() if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_host_has_few_modules_of_its_own() -> None:
    direct = sorted(p.name for p in (PACKAGE / "host").glob("*.py") if p.name != "__init__.py")
    assert len(direct) <= 12, direct
