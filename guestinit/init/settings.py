"""Image-side settings: /etc/guestinit/guestinit.toml.

Its top-level keys are the ``guestinit.*`` kernel command-line keys without the prefix (the
same table, params.PARAMS), with TOML types (``lockdown = true``, ``ready_timeout = 60``,
``modules = ["a", "b"]``) or the command line's text. They replace the table's defaults; the
kernel command line wins over them. Unknown keys and bad values are reported and skipped.
"""

from __future__ import annotations

from guestinit.init import params, tomlfiles
from guestinit.init.root import Root

PATH = "/etc/guestinit/guestinit.toml"


class Settings:
    __slots__ = ("problems", "values")

    def __init__(self, values: dict[str, object], problems: list[str]) -> None:
        self.values = values
        self.problems = problems


def from_table(table: dict[str, object], where: str = PATH) -> Settings:
    by_name = {p.name: p for p in params.PARAMS}
    values: dict[str, object] = {}
    problems: list[str] = []
    for key, value in table.items():
        param = by_name.get(key)
        if param is None:
            problems.append(f"{where}: unknown key {key!r}: ignored (see `guestinit params` for the list)")
            continue
        try:
            values[key] = params.coerce(param, value)
        except params.ParamError as exc:
            problems.append(f"{where}: {key} = {value!r}: {exc}; using the default {param.default!r}")
    return Settings(values, problems)


def load(root: Root, cache: dict[str, dict[str, object]] | None = None) -> Settings:
    """The image's settings; a missing file is no settings, a bad one is reported."""
    if not root.exists(PATH):
        return Settings({}, [])
    try:
        table = tomlfiles.load(root, PATH, cache)
    except (OSError, tomlfiles.TomlError) as exc:
        return Settings({}, [f"{exc}; using the built-in defaults"])
    return from_table(table)
