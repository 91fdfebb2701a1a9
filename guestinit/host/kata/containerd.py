"""`guestctl deploy --containerd-config PATH`: register the Kata runtime in containerd's config.

The way kata-deploy does it (tools/packaging/kata-deploy, runtime/containerd.rs): the table
``plugins.<CRI>.containerd.runtimes.<handler>`` with runtime_type, runtime_path,
privileged_without_host_devices, pod_annotations and options.ConfigPath, where <CRI> is
``io.containerd.grpc.v1.cri`` in config version 2 and ``io.containerd.cri.v1.runtime`` in
version 3. Where it is safe it goes to a drop-in that ``imports`` names, else into the file:

- version 3 (containerd 2.x) with a top-level ``imports``: a drop-in (the directory of an
  imports glob that would read it, else conf.d/ beside the config) and its path added to
  imports once. containerd 2.x merges imported plugin tables key by key (containerd#9982).
- version 2, or no ``imports``: the tables appended to the config itself. containerd 1.x, which
  writes version 2, replaces a whole plugin section with an imported one (containerd#5837): a
  drop-in would drop the operator's CRI settings, runc included.

Every edit is textual (comments and layout stay), and the edited text must parse to exactly the
old document plus the runtime (and the import), or nothing is written. Writes are atomic, keep
mode and owner, and the first change of a file keeps its original as PATH.guestinit-bak.
"""

from __future__ import annotations

import difflib
import fnmatch
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from guestinit.atomicfile import write_atomic
from guestinit.host.errors import DeployError
from guestinit.host.kata import tomltext
from guestinit.host.kata.layout import Layout
from guestinit.host.kata.render import CRI_PLUGIN_V2, CRI_PLUGIN_V3, render_containerd_runtime, toml_value

BACKUP_SUFFIX = ".guestinit-bak"
RESTART = "systemctl restart containerd"


@dataclass(frozen=True)
class FileChange:
    path: Path  # the name the operator knows (for messages and diffs)
    real: Path  # what is written: a symlinked config keeps its link
    old: bytes | None
    new: bytes


@dataclass
class Plan:
    config: Path
    version: int
    mode: str  # "drop-in" or "inline"
    changes: list[FileChange] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def plugin_for(version: int) -> str:
    return CRI_PLUGIN_V2 if version == 2 else CRI_PLUGIN_V3


def _read(path: Path, role: str) -> tuple[str, dict[str, Any]]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DeployError(
            f"{path}: no such file: give containerd's config (`containerd config default > {path}` makes one)"
        ) from None
    try:
        text = raw.decode()
        return text, tomllib.loads(text)
    except UnicodeDecodeError:
        raise DeployError(f"{path}: {role} is not UTF-8 text: fix or restore the file") from None
    except tomllib.TOMLDecodeError as exc:
        where = str(exc).replace("at end of document", f"at its end, line {len(text.splitlines()) or 1}")
        raise DeployError(
            f"{path}: {role} is not valid TOML: {where}: fix that line (containerd cannot read it "
            "either), then deploy again; the file was not changed"
        ) from None


def config_version(path: Path, document: dict[str, Any]) -> int:
    version = document.get("version")
    if version is None or version == 1:
        raise DeployError(
            f"{path}: containerd config version 1 "
            f"({'no `version` key' if version is None else 'version = 1'}) "
            "is not supported: migrate it with `containerd config migrate` (containerd 2.x; "
            "or rewrite it from `containerd config default` on 1.x), then deploy again"
        )
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise DeployError(f"{path}: `version = {version!r}` is not a containerd config version: use 2 or 3")
    return version


def _runtime_in(document: dict[str, Any], plugin: str, handler: str) -> dict[str, Any] | None:
    node: Any = document
    for key in ("plugins", plugin, "containerd", "runtimes", handler):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node if isinstance(node, dict) else None


def _flat(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def differences(have: dict[str, Any], want: dict[str, Any]) -> list[str]:
    """What a runtime table sets differently from the one deploy writes (keys it adds are kept)."""
    have_flat, want_flat = _flat(have), _flat(want)
    return [
        f"{key} = {have_flat[key]!r} (deploy writes {value!r})" if key in have_flat else f"{key} unset"
        for key, value in want_flat.items()
        if have_flat.get(key) != value
    ]


def _conflict(where: Path, handler: str, diffs: list[str], force: bool, plan: Plan) -> None:
    text = f"{where}: runtime {handler} is already there with other settings: {'; '.join(diffs)}"
    if not force:
        raise DeployError(f"{text}: remove it, or deploy with --force to replace it")
    plan.notes.append(f"  replace  {text} (--force)")


def _imports(config: Path, document: dict[str, Any]) -> list[str]:
    entries = document.get("imports", [])
    if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
        raise DeployError(f"{config}: `imports` is not a list of paths: fix it, then deploy again")
    base = config.absolute().parent
    return [os.path.normpath(e if os.path.isabs(e) else base / e) for e in entries]


def _covers(pattern: str, path: str) -> bool:
    """Whether containerd's import ``pattern`` (a path or a glob: ``*`` within one name) reads ``path``."""
    if not any(c in pattern for c in "*?["):
        return pattern == path
    head, tail = os.path.split(pattern)
    return head == os.path.dirname(path) and fnmatch.fnmatchcase(os.path.basename(path), tail)


def _imported_files(patterns: list[str]) -> list[Path]:
    found: list[Path] = []
    for pattern in patterns:
        if any(c in pattern for c in "*?["):
            found.extend(sorted(Path(p) for p in Path("/").glob(pattern.lstrip("/"))))
        elif os.path.isfile(pattern):
            found.append(Path(pattern))
    return found


def dropin_path(config: Path, patterns: list[str], handler: str) -> Path:
    name = f"guestinit-{handler}.toml"
    for pattern in patterns:
        head = os.path.dirname(pattern)
        if not any(c in head for c in "*?[") and _covers(pattern, os.path.join(head, name)):
            return Path(head) / name
    return config.absolute().parent / "conf.d" / name


def _check_imported(
    patterns: list[str], skip: Path | None, handler: str, want: dict[str, Any], force: bool, plan: Plan
) -> bool:
    """Look at the runtime in every file containerd imports; True when one holds it as deploy would."""
    same = False
    for path in _imported_files(patterns):
        if skip is not None and os.path.realpath(path) == os.path.realpath(skip):
            continue
        try:
            document = tomllib.loads(path.read_text())
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            plan.notes.append(f"  note     {path} (imported) could not be read ({exc}): not checked")
            continue
        for plugin in (CRI_PLUGIN_V2, CRI_PLUGIN_V3):
            have = _runtime_in(document, plugin, handler)
            if have is None:
                continue
            diffs = differences(have, want)
            if diffs:
                _conflict(path, handler, diffs, force, plan)
            else:
                same = True
                plan.notes.append(f"  ok       {path} (imported) holds runtime {handler} as deploy writes it")
    return same


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


def _verified(path: Path, new_text: str, expected: dict[str, Any], what: str) -> bytes:
    try:
        got = tomllib.loads(new_text)
    except tomllib.TOMLDecodeError as exc:
        got = {"<invalid>": str(exc)}
    if got != expected:
        raise DeployError(
            f"{path}: {what} would not give the intended document (its TOML is laid out in a way "
            "deploy does not edit, e.g. dotted keys or inline tables): add the runtime by hand "
            "(`guestctl deploy --dry-run --containerd-config` shows it); the file was not changed"
        )
    return new_text.encode()


def plan_change(config: Path, layout: Layout, force: bool) -> Plan:
    """What registering ``layout``'s runtime in ``config`` changes; raises DeployError to refuse."""
    text, document = _read(config, "containerd's config")
    version = config_version(config, document)
    plugin, handler = plugin_for(version), layout.handler
    inline_block = render_containerd_runtime(layout, version, None)
    want = _runtime_in(tomllib.loads(inline_block), plugin, handler)
    assert want is not None
    real = Path(os.path.realpath(config))
    has_imports = "imports" in document
    patterns = _imports(config, document) if has_imports else []
    have = _runtime_in(document, plugin, handler)
    dropin = version >= 3 and has_imports and have is None
    plan = Plan(config, version, "drop-in" if dropin else "inline")
    if not dropin:
        if _check_imported(patterns, None, handler, want, force, plan) and have is None:
            return plan
        if have is not None and not differences(have, want):
            plan.notes.append(f"  ok       {config} holds runtime {handler} as deploy writes it")
            return plan
        if have is not None:
            _conflict(config, handler, differences(have, want), force, plan)
        scanned = tomltext.scan(text)
        kept, at = tomltext.remove_tables(
            text, scanned.headers, ("plugins", plugin, "containerd", "runtimes", handler)
        )
        if at is None:
            new_text = kept + ("" if kept.endswith("\n") or not kept else "\n") + "\n" + inline_block
        else:
            new_text = kept[:at] + inline_block + "\n" + kept[at:]
        expected = _expect_runtime(document, plugin, handler, want)
        data = _verified(config, new_text, expected, f"adding runtime {handler}")
        plan.changes.append(FileChange(config, real, text.encode(), data))
        return plan
    target = dropin_path(config, patterns, handler)
    content = render_containerd_runtime(layout, version, os.fspath(config)).encode()
    same_elsewhere = _check_imported(patterns, target, handler, want, force, plan)
    covered = any(_covers(p, os.fspath(target)) for p in patterns)
    if target.exists():
        old_text, old_doc = _read(target, "the Kata drop-in")
        present = _runtime_in(old_doc, plugin, handler)
        if present is None or differences(present, want):
            _conflict(target, handler, differences(present or {}, want), force, plan)
            plan.changes.append(FileChange(target, target, old_text.encode(), content))
        else:
            plan.notes.append(f"  ok       {target} holds runtime {handler} as deploy writes it")
    elif same_elsewhere:
        return plan
    else:
        plan.changes.append(FileChange(target, target, None, content))
    if not covered:
        span = tomltext.scan(text).imports
        if span is None:
            raise DeployError(
                f"{config}: cannot find the `imports = [...]` line: add {str(target)!r} to it by hand"
            )
        new_text = tomltext.append_to_array(text, span, toml_value(os.fspath(target)))
        expected = _deep_copy(document)
        expected["imports"] = [*document["imports"], os.fspath(target)]
        data = _verified(config, new_text, expected, f"adding {target} to imports")
        plan.changes.append(FileChange(config, real, text.encode(), data))
    return plan


def _expect_runtime(
    document: dict[str, Any], plugin: str, handler: str, runtime: dict[str, Any]
) -> dict[str, Any]:
    expected: dict[str, Any] = _deep_copy(document)
    node = expected
    for key in ("plugins", plugin, "containerd", "runtimes"):
        node = node.setdefault(key, {})
    node[handler] = _deep_copy(runtime)
    return expected


def describe(plan: Plan, dry_run: bool) -> list[str]:
    """What the plan changes: a unified diff of every file written, the backups, the restart."""
    head = f"  containerd {plan.config} (config version {plan.version})"
    if not plan.changes:
        return [*plan.notes, f"{head}: runtime already configured, nothing to change"]
    how = "a drop-in it imports" if plan.mode == "drop-in" else "a runtime table in the file itself"
    lines = [*plan.notes, f"{head}: {'would add' if dry_run else 'adding'} the runtime as {how}"]
    for change in plan.changes:
        old = change.old.decode() if change.old is not None else ""
        diff = difflib.unified_diff(
            old.splitlines(keepends=True),
            change.new.decode().splitlines(keepends=True),
            os.fspath(change.path) if change.old is not None else "/dev/null",
            os.fspath(change.path),
        )
        lines.extend(line.rstrip("\n") for line in diff)
        if change.old is not None:
            backup = backup_path(change.real)
            lines.append(
                f"  backup   {backup} (kept from an earlier change)"
                if backup.exists()
                else f"  backup   {change.path} -> {backup}"
            )
    return lines


def backup_path(path: Path) -> Path:
    return path.with_name(path.name + BACKUP_SUFFIX)


def apply(plan: Plan) -> None:
    """Write the plan's files: backup first (once per file), then each file atomically."""
    for change in plan.changes:
        try:
            current = change.real.read_bytes()
        except FileNotFoundError:
            current = None
        if current != change.old:
            raise DeployError(f"{change.path}: changed while deploy ran: run deploy again")
    for change in plan.changes:
        if change.old is None:
            write_atomic(change.real, change.new, 0o644)
            continue
        info = change.real.stat()
        mode, owner = info.st_mode & 0o7777, (info.st_uid, info.st_gid)
        backup = backup_path(change.real)
        if not backup.exists():
            write_atomic(backup, change.old, mode, owner)
        write_atomic(change.real, change.new, mode, owner)


def restart_line(plan: Plan) -> list[str]:
    if not plan.changes:
        return []
    return [f"restart containerd to load the runtime: `{RESTART}` (deploy does not restart it)"]
