"""``guestctl``: the host tools. Each subcommand lives in its own module, imported on use."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from guestinit import __version__
from guestinit.host.errors import UserError


def _boot(args: argparse.Namespace) -> int:
    from guestinit.host.boot import BootOptions, boot, default_image, format_timeline, summary

    opts = BootOptions(
        image=Path(args.image) if args.image else default_image(),
        kernel=Path(args.kernel) if args.kernel else None,
        append=args.append or "",
        extra_initrd=[Path(p) for p in args.extra_initrd or []],
        accel=args.accel,
        transport=args.transport,
        timeout_s=args.timeout,
        shutdown=args.shutdown,
        memory_mb=args.memory,
        cpus=args.cpus,
    )
    if not args.json:
        print(f"booting {opts.image} (console log under build/runs/)", file=sys.stderr, flush=True)
    result = boot(opts)
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        print(format_timeline(result))
        from guestinit.host import services

        table = services.format_table(services.parse(result.notify.get("X_GUESTINIT_SERVICES")))
        if table:
            print(table)
        print(summary(result))
        print(f"console log: {result.console_log}")
        for key in ("STATUS", "X_GUESTINIT_DEGRADED", "X_GUESTINIT_MODE"):
            if key in result.notify:
                print(f"{key}={result.notify[key]}")
    if result.exit_status not in (None, 0):
        print(
            f"guestctl boot: guest failed: EXIT_STATUS={result.exit_status} STATUS={result.status}",
            file=sys.stderr,
        )
        return 1
    if not result.ready:
        print(f"guestctl boot: {result.error or 'no READY'}; see {result.console_log}", file=sys.stderr)
        return 1
    if result.error:
        print(f"guestctl boot: {result.error}", file=sys.stderr)
        return 1
    return 0


def _delegate(module: str, function: str) -> object:
    import importlib

    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise UserError(f"{module} is not available ({exc})", hint="reinstall guestinit") from None
    return getattr(mod, function)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Subcommands implemented in their own modules take their own argument parsers.
    passthrough = {
        "build": ("guestinit.host.build.cli", "main"),
        "listen": ("guestinit.host.listen.cli", "main"),
        "plan": ("guestinit.host.plan.planner", "main"),
        "deploy": ("guestinit.host.kata.deploy", "deploy_main"),
        "rollback": ("guestinit.host.kata.deploy", "rollback_main"),
        "kernel-config": ("guestinit.host.kernelconfig", "main"),
        "bench": ("guestinit.host.bench.run", "main"),
    }
    try:
        if argv and argv[0] in passthrough:
            module, function = passthrough[argv[0]]
            entry = _delegate(module, function)
            assert callable(entry)
            code = entry(argv[1:])
            assert isinstance(code, int)
            return code
        parser = argparse.ArgumentParser(prog="guestctl", description="Host tools for guestinit images.")
        parser.add_argument("--version", action="version", version=__version__)
        sub = parser.add_subparsers(dest="command", metavar="COMMAND")
        p = sub.add_parser("boot", help="boot an image in QEMU, wait for READY, print the timeline")
        p.add_argument(
            "image",
            nargs="?",
            help="the initrd or root disk image to boot (default: the Kata form built last)",
        )
        p.add_argument("--kernel", help="kernel (default: the .vmlinuz beside the image)")
        p.add_argument("--append", help="extra kernel command-line arguments")
        p.add_argument(
            "--extra-initrd", action="append", metavar="FILE", help="cpio archive appended to the image"
        )
        p.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto")
        p.add_argument("--transport", choices=("auto", "vsock", "serial"), default="auto")
        p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for READY (default 120)")
        p.add_argument(
            "--shutdown", action="store_true", help="after READY, system_powerdown and time the exit"
        )
        p.add_argument("--memory", type=int, default=2048, help="guest memory in MiB (default 2048)")
        p.add_argument("--cpus", type=int, default=2)
        p.add_argument("--json", action="store_true", help="print one JSON object")
        p.set_defaults(func=_boot)
        for name in passthrough:
            sub.add_parser(name, help=f"see guestctl {name} --help", add_help=False)
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        code = args.func(args)
        assert isinstance(code, int)
        return code
    except UserError as exc:
        print(f"guestctl: {exc.line()}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("guestctl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
