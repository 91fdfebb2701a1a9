"""``guestctl``: the host tools. Each subcommand lives in its own module, imported on use."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from guestinit import __version__
from guestinit.host.errors import UserError


def _boot(args: argparse.Namespace) -> int:
    from guestinit.host.boot import BootOptions, boot
    from guestinit.host.media import default_image
    from guestinit.host.result import format_timeline, summary

    opts = BootOptions(
        image=Path(args.image) if args.image else default_image(),
        kernel=Path(args.kernel) if args.kernel else None,
        append=args.append or "",
        extra_initrd=[Path(p) for p in args.extra_initrd or []],
        accel=args.accel,
        transport=args.transport,
        tcg_threads=args.tcg_threads,
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


# Subcommands implemented in their own modules, with their own argument parsers (imported on use).
PASSTHROUGH: tuple[tuple[str, str, str, str], ...] = (
    ("build", "guestinit.host.build.cli", "main", "build an image with mkosi (outputs under build/)"),
    ("listen", "guestinit.host.listen.cli", "main", "wait for readiness messages on notify addresses"),
    ("plan", "guestinit.host.plan.planner", "main", "BAR, MMIO and hugepage settings for a GPU VM"),
    ("deploy", "guestinit.host.kata.deploy", "deploy_main", "install a built guest into a Kata prefix"),
    ("rollback", "guestinit.host.kata.deploy", "rollback_main", "switch a Kata prefix back a version"),
    ("kernel-config", "guestinit.host.kernelconfig", "main", "check a kernel configuration"),
    ("bench", "guestinit.host.bench.run", "main", "boot time against busybox and systemd baselines"),
)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    passthrough = {name: (module, function) for name, module, function, _help in PASSTHROUGH}
    try:
        if argv and argv[0] in passthrough:
            module, function = passthrough[argv[0]]
            entry = _delegate(module, function)
            assert callable(entry)
            code = entry(argv[1:])
            assert isinstance(code, int)
            return code
        from guestinit.host import qemu

        parser = argparse.ArgumentParser(prog="guestctl", description="Host tools for guestinit images.")
        parser.add_argument("--version", action="version", version=__version__)
        sub = parser.add_subparsers(dest="command", metavar="COMMAND")
        p = sub.add_parser(
            "boot",
            help="boot an image in QEMU, wait for READY, print the timeline",
            description="Boot an image in QEMU, wait for READY and print the timeline of the boot: QEMU's "
            "start, the guest's own phases and the readiness messages as they arrived.",
        )
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
        qemu.add_accel_options(p)
        p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for READY (default 120)")
        p.add_argument(
            "--shutdown", action="store_true", help="after READY, system_powerdown and time the exit"
        )
        p.add_argument("--memory", type=int, default=2048, help="guest memory in MiB (default 2048)")
        p.add_argument("--cpus", type=int, default=2, help="guest vCPUs (default 2)")
        p.add_argument("--json", action="store_true", help="print one JSON object")
        p.set_defaults(func=_boot)
        for name, _module, _function, text in PASSTHROUGH:
            sub.add_parser(name, help=text, add_help=False)
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
