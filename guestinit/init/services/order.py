"""The order services start and stop in: each one's resolved ``after`` list, the cycles
that can never start, and the depth of each service (stopping goes from the deepest up).

Every walk here is iterative: a chain of thousands of services costs no recursion.
"""

from __future__ import annotations

from guestinit.init.problems import WARNING, Problem, excerpt
from guestinit.init.services.keys import EVERY, ServiceSpec


def dependencies(specs: list[ServiceSpec]) -> tuple[dict[str, list[str]], list[Problem]]:
    """Each service's resolved ``after`` list (present services only, "*" expanded) and the
    problems found (unknown names, itself). Cycles are left to ``cycle_groups``."""
    names = [s.name for s in specs]
    present = set(names)
    deps: dict[str, list[str]] = {}
    problems: list[Problem] = []
    star = {s.name for s in specs if EVERY in s.after}
    not_star = [n for n in names if n not in star]
    for spec in specs:
        out: list[str] = []
        seen: set[str] = set()
        for dep in spec.after:
            if dep == EVERY:
                for n in not_star:
                    if n != spec.name and n not in seen:
                        seen.add(n)
                        out.append(n)
            elif dep == spec.name:
                problems.append(
                    Problem(
                        f"{spec.path}: after names the service itself: ignored", spec.path, "after", WARNING
                    )
                )
            elif dep not in present:
                problems.append(
                    Problem(
                        f"{spec.path}: after names {excerpt(dep)}, which is not a service here: ignored",
                        spec.path,
                        "after",
                        WARNING,
                    )
                )
            elif dep not in seen:
                seen.add(dep)
                out.append(dep)
        deps[spec.name] = out
    return deps, problems


def cycle_groups(deps: dict[str, list[str]]) -> list[list[str]]:
    """The services on dependency cycles, one sorted list per cycle (a strongly connected
    component of more than one service, or one that names itself), in name order.
    Tarjan's algorithm with an explicit stack."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    groups: list[list[str]] = []
    counter = 0
    for start in deps:
        if start in index:
            continue
        work: list[tuple[str, int]] = [(start, 0)]
        while work:
            name, i = work.pop()
            if i == 0:
                index[name] = low[name] = counter
                counter += 1
                stack.append(name)
                on_stack.add(name)
            children = deps.get(name, [])
            descended = False
            while i < len(children):
                child = children[i]
                i += 1
                if child not in deps:
                    continue
                if child not in index:
                    work.append((name, i))
                    work.append((child, 0))
                    descended = True
                    break
                if child in on_stack:
                    low[name] = min(low[name], index[child])
            if descended:
                continue
            if low[name] == index[name]:
                group: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == name:
                        break
                if len(group) > 1 or name in deps.get(name, []):
                    groups.append(sorted(group))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[name])
    return sorted(groups)


def cycles(deps: dict[str, list[str]]) -> set[str]:
    """Names of services on a dependency cycle (they can never start)."""
    return {name for group in cycle_groups(deps) for name in group}


def levels(deps: dict[str, list[str]]) -> dict[str, int]:
    """Depth of each service in the start order (0: depends on nothing). Stopping goes from the
    deepest level up. Services on cycles get level 0 and do not count for the others."""
    bad = cycles(deps)
    memo: dict[str, int] = {}
    for start in deps:
        if start in memo:
            continue
        work = [start]
        while work:
            name = work[-1]
            if name in memo:
                work.pop()
                continue
            if name in bad:
                memo[name] = 0
                work.pop()
                continue
            pending = [d for d in deps.get(name, []) if d in deps and d not in bad and d not in memo]
            if pending:
                work.extend(pending)
                continue
            memo[name] = 1 + max(
                (memo[d] for d in deps.get(name, []) if d in deps and d not in bad), default=-1
            )
            work.pop()
    return {name: memo[name] for name in deps}
