"""The order services start and stop in: each one's resolved ``after`` list, the cycles
that can never start, and the depth of each service (stopping goes from the deepest up)."""

from __future__ import annotations

from guestinit.init.services.keys import EVERY, ServiceSpec


def dependencies(specs: list[ServiceSpec]) -> tuple[dict[str, list[str]], list[str]]:
    """Each service's resolved ``after`` list (present services only, "*" expanded) and the
    problems found (unknown names). Cycles are left to ``cycles``."""
    names = [s.name for s in specs]
    present = set(names)
    deps: dict[str, list[str]] = {}
    problems: list[str] = []
    star = {s.name for s in specs if EVERY in s.after}
    for spec in specs:
        out: list[str] = []
        for dep in spec.after:
            if dep == EVERY:
                out.extend(n for n in names if n not in star and n != spec.name and n not in out)
            elif dep == spec.name:
                problems.append(f"{spec.path}: after names the service itself: ignored")
            elif dep not in present:
                problems.append(f"{spec.path}: after names {dep!r}, which is not a service here: ignored")
            elif dep not in out:
                out.append(dep)
        deps[spec.name] = out
    return deps, problems


def cycles(deps: dict[str, list[str]]) -> set[str]:
    """Names of services on a dependency cycle (they can never start)."""
    state: dict[str, int] = {}
    on_cycle: set[str] = set()
    stack: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        stack.append(name)
        for dep in deps.get(name, []):
            if state.get(dep, 0) == 0:
                visit(dep)
            elif state.get(dep) == 1:
                on_cycle.update(stack[stack.index(dep) :])
        stack.pop()
        state[name] = 2

    for name in deps:
        if state.get(name, 0) == 0:
            visit(name)
    return on_cycle


def levels(deps: dict[str, list[str]]) -> dict[str, int]:
    """Depth of each service in the start order (0: depends on nothing). Stopping goes from the
    deepest level up. Services on cycles get level 0."""
    memo: dict[str, int] = {}
    bad = cycles(deps)

    def level(name: str) -> int:
        if name in memo:
            return memo[name]
        memo[name] = 0
        if name not in bad:
            memo[name] = 1 + max((level(d) for d in deps.get(name, []) if d not in bad), default=-1)
        return memo[name]

    return {name: level(name) for name in deps}
