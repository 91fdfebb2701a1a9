"""Reading service files: /etc/guestinit/services.d/NAME.toml, one service a file, checked
against the key table (keys.py). A file that cannot be read or has a bad value becomes a spec
with ``error`` set: that service fails, the others run."""

from __future__ import annotations

import os

from guestinit.init import tomlfiles
from guestinit.init.root import Root
from guestinit.init.services.keys import BY_NAME, ServiceError, ServiceSpec, valid_name

SERVICES_DIR = "/etc/guestinit/services.d"


def from_table(name: str, path: str, table: dict[str, object]) -> ServiceSpec:
    spec = ServiceSpec(name, path)
    critical = table.get("critical")
    spec.critical = critical is True
    errors: list[str] = []
    for key, value in table.items():
        entry = BY_NAME.get(key)
        if entry is None:
            spec.problems.append(f"{path}: unknown key {key!r}: ignored (see `guestinit services --keys`)")
            continue
        try:
            setattr(spec, key, entry.check(value))
        except ServiceError as exc:
            errors.append(f"{key}: {exc}")
    if "command" not in table:
        errors.append('command: missing (e.g. command = ["/usr/bin/daemon"])')
    if errors:
        spec.error = f"{path}: {errors[0]}" + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else "")
    return spec


def load_file(root: Root, path: str, cache: dict[str, dict[str, object]] | None = None) -> ServiceSpec:
    name = os.path.basename(path)[: -len(".toml")]
    if not valid_name(name):
        spec = ServiceSpec(name, path)
        spec.error = f"{path}: {name!r} is not a service name (letters, digits, _ . @ -; at most 64)"
        return spec
    try:
        table = tomlfiles.load(root, path, cache)
    except (OSError, UnicodeDecodeError) as exc:
        spec = ServiceSpec(name, path)
        spec.error = f"{path}: cannot read: {exc}"
        return spec
    except tomlfiles.TomlError as exc:
        spec = ServiceSpec(name, path)
        spec.error = str(exc)
        return spec
    return from_table(name, path, table)


def load_all(
    root: Root, cache: dict[str, dict[str, object]] | None = None, directory: str = SERVICES_DIR
) -> list[ServiceSpec]:
    """Every service file, in name order."""
    return [
        load_file(root, f"{directory}/{entry}", cache)
        for entry in root.listdir(directory)
        if entry.endswith(".toml") and not entry.startswith(".")
    ]
