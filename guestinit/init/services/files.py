"""Reading service files: /etc/guestinit/services.d/NAME.toml, one service a file, checked
against the key table (keys.py). A file that cannot be read, is refused (not a regular file,
too large, not UTF-8, nested too deep) or has a bad value becomes a spec with ``error`` set:
that service fails, the others run. ``load_services`` is the one reading boot, ``guestinit
check`` and ``guestinit services`` share: every spec, its order, and every problem."""

from __future__ import annotations

import os

from guestinit.init import tomlfiles
from guestinit.init.problems import ERROR, WARNING, Problem, excerpt
from guestinit.init.root import Root
from guestinit.init.services.keys import BY_NAME, ServiceError, ServiceSpec, valid_name
from guestinit.init.services.order import cycle_groups, dependencies, levels

SERVICES_DIR = "/etc/guestinit/services.d"


def from_table(
    name: str, path: str, table: dict[str, object], refused: dict[str, str] | None = None
) -> ServiceSpec:
    """A spec from a parsed table; ``refused`` keys (left out for breaking a limit) count as
    bad values."""
    spec = ServiceSpec(name, path)
    critical = table.get("critical")
    spec.critical = critical is True
    errors: list[tuple[str, str]] = [(key, f"{key}: {why}") for key, why in (refused or {}).items()]
    for key, value in table.items():
        entry = BY_NAME.get(key)
        if entry is None:
            spec.problems.append(
                Problem(
                    f"{path}: unknown key {excerpt(key)}: ignored (see `guestinit services --keys`)",
                    path,
                    key,
                    WARNING,
                )
            )
            continue
        try:
            setattr(spec, key, entry.check(value))
        except ServiceError as exc:
            errors.append((key, f"{key}: {exc}"))
    if "command" not in table and "command" not in (refused or {}):
        errors.append(("command", 'command: missing (e.g. command = ["/usr/bin/daemon"])'))
    if errors:
        spec.errors = [Problem(f"{path}: {text}", path, key) for key, text in errors]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        spec.error = Problem(f"{spec.errors[0]}{more}", path, errors[0][0])
    return spec


def _failed(name: str, path: str, text: str, key: str = "") -> ServiceSpec:
    spec = ServiceSpec(name, path)
    spec.error = Problem(text, path, key)
    return spec


def load_file(root: Root, path: str, cache: dict[str, dict[str, object]] | None = None) -> ServiceSpec:
    """One service file; never raises for anything the file holds or is."""
    name = os.path.basename(path)[: -len(".toml")]
    if not valid_name(name):
        return _failed(
            name,
            path,
            f"{path}: {excerpt(name)} is not a service name (letters, digits, _ . @ -; at most 64)",
        )
    try:
        table, refused = tomlfiles.load(root, path, cache)
    except OSError as exc:
        return _failed(name, path, f"{path}: cannot read: {exc.strerror or exc}")
    except tomlfiles.TomlError as exc:
        return _failed(name, path, str(exc), exc.key)
    return from_table(name, path, table, refused)


def load_all(
    root: Root, cache: dict[str, dict[str, object]] | None = None, directory: str = SERVICES_DIR
) -> list[ServiceSpec]:
    """Every service file, in name order."""
    return [
        load_file(root, f"{directory}/{entry}", cache)
        for entry in root.listdir(directory)
        if entry.endswith(".toml") and not entry.startswith(".")
    ]


class Services:
    """Every service (specs in start-table order), each one's resolved ``after`` list and
    depth, and every problem: each unusable file or cycle (error) and what is ignored
    (warning). A spec on a cycle gets ``error`` naming the cycle's members."""

    __slots__ = ("deps", "levels", "problems", "specs")

    def __init__(
        self,
        specs: list[ServiceSpec],
        deps: dict[str, list[str]],
        depth: dict[str, int],
        problems: list[Problem],
    ) -> None:
        self.specs = specs
        self.deps = deps
        self.levels = depth
        self.problems = problems

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.level == ERROR]


def load_services(
    root: Root,
    cache: dict[str, dict[str, object]] | None = None,
    generated: list[ServiceSpec] | None = None,
    directory: str = SERVICES_DIR,
) -> Services:
    """Read every service file, put ``generated`` services (the GPU phase's) first (a file of
    the same name replaces one), resolve ``after`` and find the cycles. Each service on a cycle
    is unusable (it could never start): its ``error`` names the cycle, and its own ``after`` is
    dropped so that it fails at once instead of waiting on the others for ever (its dependents
    then go on, as after any failed service)."""
    specs = load_all(root, cache, directory)
    named = {spec.name for spec in specs}
    specs = [spec for spec in generated or [] if spec.name not in named] + specs
    deps, order_problems = dependencies(specs)
    by_name = {spec.name: spec for spec in specs}
    for group in cycle_groups(deps):
        members = ", ".join(group[:8]) + (", ..." if len(group) > 8 else "")
        for name in group:
            spec = by_name[name]
            spec.after = ()
            if not spec.error:
                spec.error = Problem(
                    f"{spec.path}: after: a cycle of {len(group)} service(s) ({members}) can never "
                    "start: remove one of their after entries",
                    spec.path,
                    "after",
                )
    problems: list[Problem] = []
    for spec in specs:
        if spec.errors:  # every bad value, one line each
            problems.extend(_as_problem(e, spec.path) for e in spec.errors)
        elif spec.error:
            problems.append(_as_problem(spec.error, spec.path))
        problems.extend(_as_problem(p, spec.path, WARNING) for p in spec.problems)
    problems.extend(order_problems)
    return Services(specs, deps, levels(deps), problems)


def _as_problem(text: str, where: str, level: str = ERROR, key: str = "") -> Problem:
    return text if isinstance(text, Problem) else Problem(text, where, key, level)
