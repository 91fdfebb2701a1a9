"""What would change: the public names as they resolve now versus in a target version."""

from __future__ import annotations

import difflib
import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from guestinit.host.atomicfs import sha256_file
from guestinit.host.kata.layout import Layout
from guestinit.host.kata.versions import VersionPlan


@dataclass(frozen=True)
class Resolved:
    label: str
    sha256: str
    text: str | None


def _text_of(data: bytes) -> str | None:
    if len(data) > 256 * 1024:
        return None
    try:
        return data.decode()
    except UnicodeDecodeError:
        return None


def _resolve_file(path: Path) -> Resolved | None:
    if not path.exists():
        return None
    real = Path(os.path.realpath(path))
    size = real.stat().st_size
    text = _text_of(real.read_bytes()) if size <= 256 * 1024 else None
    return Resolved(real.name, sha256_file(real), text)


def public_view(layout: Layout) -> dict[str, Resolved | None]:
    return {member: _resolve_file(path) for member, path in layout.public().items()}


def version_view(layout: Layout, version_id: str) -> dict[str, Resolved | None]:
    return {member: _resolve_file(layout.versions / version_id / member) for member in layout.public()}


def plan_view(layout: Layout, plan: VersionPlan) -> dict[str, Resolved | None]:
    view: dict[str, Resolved | None] = {}
    for member in layout.public():
        if member in plan.links:
            view[member] = Resolved(Path(plan.links[member]).name, plan.sha256[member], None)
        elif member in plan.files:
            data = plan.files[member]
            blob = data if isinstance(data, bytes) else data.read_bytes()
            view[member] = Resolved(
                member, plan.sha256.get(member, hashlib.sha256(blob).hexdigest()), _text_of(blob)
            )
        else:
            view[member] = None
    return view


def describe_changes(
    layout: Layout,
    before: Mapping[str, Resolved | None],
    after: Mapping[str, Resolved | None],
    diffs: bool = True,
) -> list[str]:
    """One line per public name whose content differs (with a unified diff for text files)."""
    lines: list[str] = []
    for member, public in layout.public().items():
        old, new = before.get(member), after.get(member)
        name = layout.rel(public)
        if (old is None and new is None) or (old and new and old.sha256 == new.sha256):
            continue
        if new is None:
            lines.append(f"  remove   {name}")
        elif old is not None and old.text is not None and new.text is not None:
            lines.append(f"  change   {name}{':' if diffs else ''}")
            if not diffs:
                continue
            diff = difflib.unified_diff(
                old.text.splitlines(), new.text.splitlines(), "now", "after", lineterm="", n=1
            )
            lines.extend(f"             {line}" for line in diff)
        elif old is None:
            lines.append(f"  create   {name}" + ("" if new.text is not None else f" -> {new.label}"))
        else:
            lines.append(f"  switch   {name}: {old.label} -> {new.label}")
    return lines
