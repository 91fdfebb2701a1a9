"""``guestinit check [--root DIR] [--cmdline TEXT] [--json]``: validate guestinit.toml, every
service file and a kernel command line exactly as boot reads them (the same functions:
settings.read_config and services.files.load_services), list every problem with its file, key
and fix, and exit 1 when anything is unusable (a bad value, file or service; a cycle).
Warnings (unknown keys, ``after`` naming an absent service) alone exit 0."""

from __future__ import annotations

from guestinit.init import settings, tomlfiles
from guestinit.init.params import Config
from guestinit.init.problems import ERROR, Problem, is_error
from guestinit.init.root import Root
from guestinit.init.services.files import Services, load_services

CMDLINE = "/proc/cmdline"


class Report:
    """What ``guestinit check`` found: the configuration, the services and every problem."""

    __slots__ = ("config", "problems", "services")

    def __init__(self, config: Config, services: Services, problems: list[Problem]) -> None:
        self.config = config
        self.services = services
        self.problems = problems

    @property
    def ok(self) -> bool:
        return not any(is_error(p) for p in self.problems)


def run_check(root: Root, cmdline: str | None = None) -> Report:
    """Read a root's configuration as boot does; ``cmdline`` None reads the root's
    /proc/cmdline when it has one (an image tree has none: no command line)."""
    if cmdline is None:
        try:
            cmdline = tomlfiles.read_text(root, CMDLINE) if root.exists(CMDLINE) else ""
        except (OSError, tomlfiles.TomlError):
            cmdline = ""
    cache = tomlfiles.read_cache(root)
    config = settings.read_config(root, cache, cmdline)
    services = load_services(root, cache)
    problems = [_problem(p) for p in config.problems] + services.problems
    return Report(config, services, problems)


def _problem(text: str) -> Problem:
    return text if isinstance(text, Problem) else Problem(text, "", "", ERROR)


def main(argv: list[str]) -> int:
    """``guestinit check [--root DIR] [--cmdline TEXT] [--json]``"""
    import argparse

    parser = argparse.ArgumentParser(
        prog="guestinit check",
        description="Check guestinit.toml, every service file and a kernel command line as boot "
        "reads them; exit 1 when anything is unusable.",
    )
    parser.add_argument("--root", default="/", help="the guest root (or image tree) to read (default /)")
    parser.add_argument("--cmdline", help="the kernel command line (default: ROOT/proc/cmdline, if any)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = parser.parse_args(argv)
    report = run_check(Root(args.root), args.cmdline)
    specs = report.services.specs
    unusable = [s for s in specs if s.error]
    if args.json:
        import json

        doc = {
            "ok": report.ok,
            "services": [
                {
                    "name": s.name,
                    "file": s.path,
                    "usable": not s.error,
                    "level": report.services.levels.get(s.name, 0),
                    "after": report.services.deps.get(s.name, []),
                }
                for s in specs
            ],
            "config": report.config.values,
            "problems": [p.as_dict() for p in report.problems],
        }
        print(json.dumps(doc, indent=2, default=str))
    else:
        for problem in report.problems:
            print(f"{problem.level}: {problem}")
        errors = sum(1 for p in report.problems if is_error(p))
        print(
            f"{len(specs)} service(s), {len(unusable)} unusable; "
            f"{errors} error(s), {len(report.problems) - errors} warning(s)"
        )
    return 0 if report.ok else 1
