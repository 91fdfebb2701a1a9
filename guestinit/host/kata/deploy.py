"""`guestctl deploy` and `guestctl rollback`: put a built guest into a Kata prefix, atomically.

Kata finds its guest through names under the install prefix (references §2); katalayout.py
names them. For one flavour F (handler ``kata-qemu-F``) every name switches with ONE rename(2)
of share/guestinit/F/current, so a node running tenants never sees half a deploy.

Why a kill at any moment leaves the old or the new version, never a mix:
- every file is written under a temporary name, fsync'd, renamed, and its directory fsync'd; a
  version directory is filled under a temporary name and renamed into place whole (atomicfs.py,
  kataversions.py);
- a public name changes only (a) from "absent" or from what it held to a link through
  ``current`` that resolves to the very same bytes (taking over a foreign install first copies
  that install into a "snapshot" version and points ``current`` at it), or (b) by the switch
  itself, one rename of ``current`` (kataswitch.py);
- leftovers of a killed run are temporary names, removed by the next run; versions are pruned
  only when neither ``current`` nor ``previous`` names them.
The Kata configuration names the versioned kernel and image files, not the public links, so one
read of it gives the runtime a consistent pair even while a switch happens (katarender.py).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from guestinit.host.atomicfs import make_dirs, remove_tree_atomic, sha256_file, write_atomic
from guestinit.host.build.manifest import SAFE_VERSION, load_manifest, verify_artifact
from guestinit.host.errors import DeployError, UserError
from guestinit.host.kata import agent
from guestinit.host.kata import containerd as katacontainerd
from guestinit.host.kata.diff import describe_changes, plan_view, public_view, version_view
from guestinit.host.kata.layout import SAFE_FLAVOUR, Layout
from guestinit.host.kata.settings import planned_settings
from guestinit.host.kata.switch import (
    adopt,
    classify,
    current_version,
    kept_versions,
    link_public,
    locked,
    previous_version,
    prune,
    remove_leftovers,
    switch,
    tidy,
)
from guestinit.host.kata.versions import build_version, create_version, verify_version, version_matches

DEFAULT_PREFIX = Path("/opt/kata")
DEFAULT_MANIFEST = Path("build/kata/manifest.json")


def default_manifest() -> Path:
    """The manifest of the Kata form `guestctl build` made last (build/kata or build/kata-erofs)."""
    from guestinit.host.build.images import last_build, repo_root

    try:
        return last_build(repo_root()) / "manifest.json"
    except UserError:  # not run from a checkout (the deploy image): its own path is given
        return DEFAULT_MANIFEST


DEFAULT_FLAVOUR = "nvidia-gpu"
DEFAULT_KEEP = 3


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def flavour_name(text: str) -> str:
    if not SAFE_FLAVOUR.match(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a flavour name: use lowercase letters, digits and '-'"
        )
    return text


def run_deploy(args: argparse.Namespace) -> list[str]:
    layout = Layout(args.prefix.absolute(), args.flavour)
    manifest = load_manifest(args.manifest or default_manifest())
    for artifact in (manifest.kernel, manifest.rootfs):
        verify_artifact(artifact)
    agent_lines = agent.check(manifest, layout.prefix, allow_no_agent=args.allow_no_agent, force=args.force)
    # checked before anything is written: a config deploy cannot edit stops the whole deploy
    ctr = (
        katacontainerd.plan_change(args.containerd_config, layout, args.force)
        if args.containerd_config
        else None
    )
    plan = planned_settings(args.sysfs_root, args.gpus, args.memory)
    new = build_version(layout, manifest, plan)
    lines = [
        f"{'would deploy' if args.dry_run else 'deploying'} {manifest.image} {manifest.version} "
        f"(profile {manifest.profile}, kernel {manifest.kernel_version}) "
        f"to {layout.prefix} as {layout.handler}",
        f"  verify   {manifest.kernel.name} ({_size(manifest.kernel.size)}), "
        f"{manifest.rootfs.name} ({_size(manifest.rootfs.size)}): sha256 as in {manifest.path}",
        *agent_lines,
    ]
    installs = [
        (artifact, layout.assets / layout.versioned_name(artifact.kind, manifest.version))
        for artifact in (manifest.kernel, manifest.rootfs)
    ]
    if args.dry_run:
        for artifact, dest in installs:
            if not dest.exists():
                lines.append(f"  install  {layout.rel(dest)} ({_size(artifact.size)})")
        foreign = [layout.rel(layout.public()[m]) for m, k in classify(layout).items() if k == "foreign"]
        if foreign:
            lines.append(f"  adopt    {', '.join(foreign)}: kept as a snapshot version for rollback")
        exists = (layout.versions / new.id).is_dir()
        lines.append(f"  version  {new.id} ({'kept already' if exists else 'new'})")
        changes = describe_changes(layout, public_view(layout), plan_view(layout, new))
        lines.extend(changes or ["  nothing changes: this version is current"])
        current = current_version(layout)
        if current and current != new.id:
            lines.append(f"  previous {current} (kept for `guestctl rollback`)")
        if ctr is not None:
            lines.extend(katacontainerd.describe(ctr, dry_run=True))
        lines.append("nothing was written (--dry-run)")
        return lines
    with locked(layout):
        remove_leftovers(layout)
        adopt(layout)
        for artifact, dest in installs:
            make_dirs(dest.parent)
            if dest.exists():
                if sha256_file(dest) != artifact.sha256:
                    raise DeployError(
                        f"{dest}: already installed with other content for version {manifest.version}: "
                        "rebuild (a new version) or remove that file"
                    )
            else:
                write_atomic(dest, artifact.path, artifact.sha256)
                lines.append(f"  install  {layout.rel(dest)}")
        if not (layout.versions / new.id).exists():
            create_version(layout, new)
        elif not version_matches(layout, new):  # its name is a hash of its content: it was edited
            if new.id == current_version(layout):
                raise DeployError(
                    f"{layout.versions / new.id}: the current version was modified by hand: "
                    "roll back to another (`guestctl rollback --list`), then deploy again"
                )
            remove_tree_atomic(layout.versions / new.id)
            create_version(layout, new)
        link_public(layout, new.members())
        before = version_view(layout, current_version(layout) or new.id)
        old = switch(layout, new.id, "deploy")
        tidy(layout)
        lines.extend(
            describe_changes(layout, before if old else {}, version_view(layout, new.id), diffs=False)
        )
        pruned = prune(layout, args.keep)
    if old == new.id:
        lines.append(f"  {new.id} was already current: nothing switched")
    else:
        lines.append(
            f"deployed {new.id}; previous: {old} (`guestctl rollback` restores it)"
            if old
            else f"deployed {new.id}: the first version here, nothing to roll back to"
        )
    lines.extend(f"  pruned   {name}" for name in pruned)
    if args.containerd_config:  # planned again: the prefix is in place now, the file may have moved on
        ctr = katacontainerd.plan_change(args.containerd_config, layout, args.force)
        lines.extend(katacontainerd.describe(ctr, dry_run=False))
        katacontainerd.apply(ctr)
        lines.extend(katacontainerd.restart_line(ctr))
    return lines


def list_versions(layout: Layout) -> list[str]:
    current = current_version(layout)
    previous = previous_version(layout, current)
    lines = [f"versions of {layout.handler} under {layout.versions}:"]
    for made, vid, record in kept_versions(layout):
        mark = " (current)" if vid == current else " (previous)" if vid == previous else ""
        when = dt.datetime.fromtimestamp(made, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        lines.append(f"  {vid:<48} {when}  {record.get('source', '?')}{mark}")
    if len(lines) == 1:
        lines.append("  none: nothing was deployed here")
    return lines


def run_rollback(args: argparse.Namespace) -> list[str]:
    layout = Layout(args.prefix.absolute(), args.flavour)
    if args.list:
        return list_versions(layout)
    current = current_version(layout)
    target = args.to or previous_version(layout, current)
    if target is None:
        raise DeployError(
            f"{layout.state}: no previous version to roll back to: see `guestctl rollback --list`"
        )
    if not SAFE_VERSION.match(target) or not (layout.versions / target).is_dir():
        raise DeployError(
            f"version {target!r} is not kept under {layout.versions}: see `guestctl rollback --list`"
        )
    foreign = "foreign" in classify(layout).values()
    if target == current and not foreign:
        raise DeployError(f"{target} is already current: name another with --to (see --list)")
    verify_version(layout, target)
    lines = [
        f"{'would roll back' if args.dry_run else 'rolling back'} {layout.handler} "
        f"to {target} (now: {current})"
    ]
    if args.dry_run:
        lines.extend(describe_changes(layout, public_view(layout), version_view(layout, target)))
        lines.append("nothing was written (--dry-run)")
        return lines
    with locked(layout):
        remove_leftovers(layout)
        adopt(layout)
        before = public_view(layout)
        link_public(layout, {m for m in layout.public() if os.path.lexists(layout.versions / target / m)})
        old = switch(layout, target, "rollback")
        tidy(layout)
        lines.extend(describe_changes(layout, before, public_view(layout), diffs=False))
    lines.append(f"rolled back to {target}; `guestctl rollback` again returns to {old}")
    return lines


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--prefix", type=Path, default=DEFAULT_PREFIX, help="Kata install prefix (default /opt/kata)"
    )
    parser.add_argument(
        "--flavour",
        type=flavour_name,
        default=DEFAULT_FLAVOUR,
        help="Kata flavour: names and handler kata-qemu-FLAVOUR",
    )
    parser.add_argument("--dry-run", action="store_true", help="print what would change; write nothing")


def deploy_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="guestctl deploy",
        description="Install a built guest into a Kata prefix atomically, keeping the previous version.",
    )
    parser.add_argument(
        "--manifest",
        type=Path,
        default=None,
        help="build manifest (default: the Kata form built last, build/kata/ or build/kata-erofs/)",
    )
    _common(parser)
    parser.add_argument(
        "--keep", type=int, default=DEFAULT_KEEP, help="build versions to keep (default 3, at least 1)"
    )
    parser.add_argument(
        "--sysfs-root",
        help="size the Kata settings with `guestctl plan` for the host whose tree (shaped like /) is here",
    )
    parser.add_argument("--gpus", help="for the planner: BDF,... of the devices to pass through, or all")
    parser.add_argument("--memory", help="for the planner: guest RAM, e.g. 64G (bare numbers are MiB)")
    parser.add_argument(
        "--allow-no-agent",
        action="store_true",
        help="deploy an image without a kata-agent (sandboxes cannot start with it; for testing the boot)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="deploy even when the image's kata-agent is of another release than the node's Kata shim, "
        "and replace a containerd runtime of the same name that has other settings",
    )
    parser.add_argument(
        "--containerd-config",
        type=Path,
        metavar="PATH",
        help="also register the runtime in containerd's config, e.g. /etc/containerd/config.toml "
        "(version 2 or 3): a drop-in it imports (version 3 with `imports`) or a table in the file, "
        "as kata-deploy does; the original is kept as PATH.guestinit-bak; restart containerd after",
    )
    return parser


def rollback_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="guestctl rollback",
        description="Switch a Kata prefix back to the version before the current one, byte for byte.",
    )
    _common(parser)
    parser.add_argument("--to", metavar="ID", help="a kept version to switch to (see --list)")
    parser.add_argument("--list", action="store_true", help="list kept versions")
    return parser


def _main(parser: argparse.ArgumentParser, runner: Any, argv: Sequence[str]) -> int:
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exc:  # --help, or a usage error argparse already printed
        code: object = exc.code
        return code if isinstance(code, int) else 2
    if getattr(args, "keep", 1) < 1:
        print(f"{parser.prog}: --keep {args.keep}: keep at least 1 version", file=sys.stderr)
        return 2
    try:
        lines = runner(args)
    except UserError as exc:
        print(f"{parser.prog}: {exc.line()}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        where = exc.filename or args.prefix
        print(
            f"{parser.prog}: {where}: {exc.strerror}: check the path and permissions (root for /opt/kata)",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print(
            f"{parser.prog}: interrupted: run it again to finish (nothing half-written is used)",
            file=sys.stderr,
        )
        return 130
    try:
        print("\n".join(lines))
    except BrokenPipeError:  # `| head`: the work is done, the reader left
        sys.stderr.close()
    return 0


def deploy_main(argv: list[str]) -> int:
    return _main(deploy_parser(), run_deploy, argv)


def rollback_main(argv: list[str]) -> int:
    return _main(rollback_parser(), run_rollback, argv)


if __name__ == "__main__":
    commands = {"deploy": deploy_main, "rollback": rollback_main}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        print("usage: python -m guestinit.host.kata.deploy deploy|rollback [options]", file=sys.stderr)
        sys.exit(2)
    sys.exit(commands[sys.argv[1]](sys.argv[2:]))
