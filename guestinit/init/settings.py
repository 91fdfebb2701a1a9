"""Image-side settings: /etc/guestinit/guestinit.toml, and the configuration boot runs with.

Its top-level keys are the ``guestinit.*`` kernel command-line keys without the prefix (the
same table, params.PARAMS), with TOML types (``lockdown = true``, ``ready_timeout = 60``,
``modules = ["a", "b"]``) or the command line's text. They replace the table's defaults; the
kernel command line wins over them. Unknown keys and bad values are reported and skipped; a
file that is refused (not a regular file, too large, not UTF-8, nested too deep) or not valid
TOML is reported and the built-in defaults apply.

``read_config`` is the one reading of settings and command line that boot and ``guestinit
check`` share.
"""

from __future__ import annotations

from guestinit.init import params, tomlfiles
from guestinit.init.gpu import params as gpu_params
from guestinit.init.problems import ERROR, WARNING, Problem, excerpt
from guestinit.init.root import Root

PATH = "/etc/guestinit/guestinit.toml"


class Settings:
    __slots__ = ("problems", "values")

    def __init__(self, values: dict[str, object], problems: list[str]) -> None:
        self.values = values
        self.problems = problems


def from_table(
    table: dict[str, object], where: str = PATH, refused: dict[str, str] | None = None
) -> Settings:
    values: dict[str, object] = {}
    problems: list[str] = []
    for key, why in (refused or {}).items():
        problems.append(Problem(f"{where}: {excerpt(key)}: {why}; using the default", where, key))
    for key, value in table.items():
        param = params.BY_NAME.get(key)
        if param is None:
            problems.append(
                Problem(
                    f"{where}: unknown key {excerpt(key)}: ignored (see `guestinit params` for the list)",
                    where,
                    key,
                    WARNING,
                )
            )
            continue
        try:
            values[key] = params.coerce(param, value)
        except params.ParamError as exc:
            problems.append(
                Problem(
                    f"{where}: {_given(key, value)}: {exc}; using the default {excerpt(param.default)}",
                    where,
                    key,
                )
            )
    return Settings(values, problems)


def _given(key: str, value: object) -> str:
    """``key = value`` for a short value; the key alone for a long one (the error shows it)."""
    shown = excerpt(value)
    return f"{key} = {shown}" if len(shown) <= 42 and "…" not in shown else key


def load(root: Root, cache: dict[str, dict[str, object]] | None = None) -> Settings:
    """The image's settings; a missing file is no settings, a bad one is reported."""
    if not root.exists(PATH):
        return Settings({}, [])
    try:
        table, refused = tomlfiles.load(root, PATH, cache)
    except OSError as exc:
        return Settings(
            {}, [Problem(f"{PATH}: cannot read: {exc.strerror or exc}; using the built-in defaults", PATH)]
        )
    except tomlfiles.TomlError as exc:
        return Settings({}, [Problem(f"{exc}; using the built-in defaults", PATH)])
    return from_table(table, PATH, refused)


def read_config(root: Root, cache: dict[str, dict[str, object]] | None, cmdline: str) -> params.Config:
    """The configuration boot runs with: guestinit.toml under the ``guestinit.*`` words of
    ``cmdline``, checked against what this root's kernel offers (hugepage sizes, where
    /sys/kernel/mm/hugepages lists them). ``problems`` holds the settings file's first, then
    the command line's; bad values keep the default."""
    image = load(root, cache)
    config = params.parse_cmdline(cmdline, defaults=image.values)
    config.problems[:0] = image.problems
    requests = config["hugepages"]
    if requests:
        assert isinstance(requests, tuple)
        offered = gpu_params.offered_sizes(root)
        missing = gpu_params.unoffered(requests, offered)
        if missing:
            config.values["hugepages"] = tuple(r for r in requests if r not in missing)
            sizes = ", ".join(gpu_params.size_name(kb) for kb in offered)
            where = params.CMDLINE if "hugepages" in config.raw else PATH
            config.problems.append(
                Problem(
                    f"guestinit.hugepages: {', '.join(str(r) for r in missing)}: this kernel offers "
                    f"no such page size (it offers {sizes}): left out",
                    where,
                    "hugepages",
                    ERROR,
                )
            )
    return config
