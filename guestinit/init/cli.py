"""``guestinit``: PID 1 when the kernel runs it, a small tool otherwise.

guestinit                  (as PID 1) boot the guest
guestinit version          print the version
guestinit params [--markdown]   the kernel command-line reference
guestinit probe [--root DIR] [--json]   what this machine's GPUs and BARs look like
guestinit services [--root DIR] [--markdown|--keys|--json]   check service files, or the reference
guestinit check [--root DIR] [--cmdline TEXT] [--json]   check guestinit.toml, service files and a
                           command line as boot reads them (exit 1 when anything is unusable)
"""

from __future__ import annotations

import os
import sys
import time


def main(argv: list[str] | None = None, start_s: float | None = None) -> int:
    if start_s is None:
        start_s = time.clock_gettime(time.CLOCK_BOOTTIME)
    if os.getpid() == 1:
        # mount and start the drivers' loads first: the kernel links them while we import
        from guestinit.init import headstart
        from guestinit.init.root import Root

        head = headstart.begin(Root("/"))
        from guestinit.init.pid1 import run_as_pid1

        run_as_pid1(None, start_s, head)  # exec time is read from /proc once it is mounted
        return 0  # not reached
    return tool(sys.argv[1:] if argv is None else argv)


def tool(argv: list[str]) -> int:
    if argv[:1] == ["probe"]:
        from guestinit.init.gpu.probe import main as probe_main

        return probe_main(argv[1:])
    if argv[:1] == ["services"]:
        from guestinit.init.services.cli import main as services_main

        return services_main(argv[1:])
    if argv[:1] == ["check"]:
        from guestinit.init.check import main as check_main

        return check_main(argv[1:])
    import argparse

    from guestinit import __version__

    parser = argparse.ArgumentParser(
        prog="guestinit",
        description="PID 1 for Kata GPU guests when the kernel runs it; run by hand, a few tools.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("version", help="print the version", description="Print guestinit's version.")
    p_params = sub.add_parser(
        "params",
        help="the guestinit.* kernel command-line keys",
        description="List the guestinit.* kernel command-line keys with their types and defaults.",
    )
    p_params.add_argument("--markdown", action="store_true", help="print the generated reference")
    p_parse = sub.add_parser(
        "parse-cmdline",
        help="parse a kernel command line and print the values",
        description="Parse a kernel command line as boot does and print the values and problems as JSON "
        "(exit 1 when there is a problem).",
    )
    p_parse.add_argument("cmdline", nargs="?", help="the command line (default: /proc/cmdline)")
    # routed above to their own parsers; listed here so --help shows them
    sub.add_parser("probe", add_help=False, help="report GPUs, BARs, hugepages and the mode, read-only")
    sub.add_parser("services", add_help=False, help="check service files, or print their reference")
    sub.add_parser("check", add_help=False, help="check guestinit.toml, service files and a command line")
    args = parser.parse_args(argv)
    if args.command == "version":
        print(__version__)
        return 0
    if args.command == "params":
        from guestinit.init.params import PARAMS, PREFIX, reference_markdown

        if args.markdown:
            sys.stdout.write(reference_markdown())
        else:
            for p in PARAMS:
                print(f"{PREFIX}{p.name:<20} {p.kind:<28} default {p.default!r}\n    {p.help}")
        return 0
    if args.command == "parse-cmdline":
        import json

        from guestinit.init.params import parse_cmdline

        text = args.cmdline
        if text is None:
            with open("/proc/cmdline") as f:
                text = f.read()
        config = parse_cmdline(text)
        print(json.dumps({"values": config.values, "problems": config.problems}, indent=2, default=str))
        return 1 if config.problems else 0
    parser.print_help()
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
