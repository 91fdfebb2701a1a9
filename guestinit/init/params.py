"""The table of ``guestinit.*`` kernel command-line keys: name, type, default, help.

This table is the only place a key is defined: parsing, validation, ``guestinit params``
and the generated reference (docs/kernel-cmdline.md) all come from it. Unknown keys and bad
values are reported and the default is used; parsing never raises. The GPU phase's keys
(rebar, hugepages, thp, nvidia.*, smi.*, ...) are defined in gpu_params, a light module of
their own, and are part of this one table.
"""

from __future__ import annotations

from guestinit.init.gpu import params as gpu_params
from guestinit.init.paramtypes import (
    Param,
    ParamError,
    boolean,
    choice,
    csv_of,
    seconds_between,
    whole_between,
)
from guestinit.init.problems import ERROR, WARNING, Problem, excerpt
from guestinit.init.services.keys import valid_name
from guestinit.notify.address import AddressError, parse_target

PREFIX = "guestinit."

__all__ = ["MODES", "PARAMS", "PREFIX", "Config", "Param", "ParamError", "parse_cmdline", "split_cmdline"]

_seconds = seconds_between(0, 86400)
_kib = whole_between(16, 1048576, "KiB")


CMDLINE = "kernel command line"
MAX_ADDRESS = 256


def notify_address(text: str) -> str:
    """A notify address as guestinit.notify= takes it (notify/address.py), or "" for none."""
    if not text:
        return text
    if len(text) > MAX_ADDRESS or not text.isprintable():
        raise ParamError(
            f"{excerpt(text)} is not a notify address (printable, at most {MAX_ADDRESS} characters)"
        )
    try:
        parse_target(text)
    except AddressError as exc:
        raise ParamError(str(exc)) from None
    return text


def module_name(text: str) -> str:
    """A kernel module name: letters, digits, _ and - (at most 55, the kernel's MODULE_NAME_LEN)."""
    if not 0 < len(text) <= 55 or not all(c.isascii() and (c.isalnum() or c in "_-") for c in text):
        raise ParamError("use letters, digits, _ and -, at most 55")
    return text


def service_name(text: str) -> str:
    if not valid_name(text):
        raise ParamError("use letters, digits, _ . @ -, at most 64")
    return text


MODES = ("auto", "cpu", "gpu", "gpu-nvl4", "gpu-nvl5", "servicevm-nvl4", "servicevm-nvl5")

PARAMS: tuple[Param, ...] = (
    Param(
        "notify",
        "address",
        notify_address,
        "",
        "Where to send the readiness message: vsock[-stream|-seqpacket|-dgram]:CID:PORT (CID and "
        "PORT 0..4294967294), serial:NAME, unix:PATH, console or off. Empty (or not valid): "
        "systemd's vmm.notify_socket credential, else the virtio-serial port named guestinit.notify, "
        "else the console.",
    ),
    Param(
        "log",
        "off|error|warn|info|debug",
        choice("off", "error", "warn", "info", "debug"),
        "info",
        "How much init writes to /dev/kmsg.",
    ),
    Param(
        "mode",
        "|".join(MODES),
        choice(*MODES),
        "auto",
        "Force a topology mode instead of detecting it from PCI devices.",
    ),
    Param(
        "modules",
        "list",
        csv_of(module_name, "a module name"),
        (),
        "Extra kernel modules to load at boot, comma-separated (dependencies load first).",
    ),
    Param(
        "lockdown",
        "bool",
        boolean,
        False,
        "After module loading write 1 to /proc/sys/kernel/modules_disabled.",
    ),
    Param(
        "ready_timeout", "seconds", _seconds, 30.0, "Default bound on waiting for a service to become ready."
    ),
    Param(
        "stop_timeout",
        "seconds",
        _seconds,
        3.0,
        "Default time a service gets between SIGTERM and SIGKILL when it is stopped.",
    ),
    Param(
        "shutdown_timeout",
        "seconds",
        _seconds,
        5.0,
        "Bound on the whole shutdown: stop services, report, sync, power off.",
    ),
    Param(
        "disable",
        "list",
        csv_of(service_name, "a service name"),
        (),
        "Services (names of /etc/guestinit/services.d/NAME.toml) not to start, comma-separated.",
    ),
    Param(
        "syslog_kib",
        "KiB",
        _kib,
        1024,
        "Bound on the syslog ring file /run/syslog.log (older half dropped when full).",
    ),
    *gpu_params.PARAMS,
)

BY_NAME = {p.name: p for p in PARAMS}


def split_cmdline(cmdline: str) -> list[str]:
    """Split a kernel command line as the kernel does: spaces separate, double quotes group."""
    words: list[str] = []
    current: list[str] = []
    quoted = False
    started = False
    for ch in cmdline:
        if ch == '"':
            quoted = not quoted
            started = True
        elif ch.isspace() and not quoted:
            if started:
                words.append("".join(current))
                current = []
                started = False
        else:
            current.append(ch)
            started = True
    if started:
        words.append("".join(current))
    return words


class Config:
    """The parsed ``guestinit.*`` values (defaults filled in) and the problems found on the way."""

    def __init__(self, values: dict[str, object], problems: list[str], raw: dict[str, str]) -> None:
        self.values = values
        self.problems = problems
        self.raw = raw

    def __getitem__(self, name: str) -> object:
        return self.values[name]

    def text(self, name: str) -> str:
        value = self.values[name]
        assert isinstance(value, str)
        return value

    def flag(self, name: str) -> bool:
        return bool(self.values[name])

    def number(self, name: str) -> float:
        value = self.values[name]
        assert isinstance(value, int | float)
        return float(value)

    def strings(self, name: str) -> tuple[str, ...]:
        value = self.values[name]
        assert isinstance(value, tuple)
        return value


def _text_form(value: str) -> str:
    """A string from TOML as the kernel command line could carry it: no NUL or line breaks."""
    if "\0" in value or "\n" in value or "\r" in value:
        raise ParamError(f"{excerpt(value)} contains a NUL byte or a line break: remove it")
    return value


def coerce(param: Param, value: object) -> object:
    """A typed value (from TOML) checked against a key's type; strings go through its parser."""
    if isinstance(value, str):
        return param.parse(_text_form(value))
    if param.kind == "bool" and isinstance(value, bool):
        return value
    if param.kind != "bool" and isinstance(value, int | float) and not isinstance(value, bool):
        return param.parse(str(value))  # seconds, KiB, MHz, ... as TOML numbers
    listed = param.kind == "list" or param.kind.endswith(",...")  # hugepages, nvidia.extra
    if isinstance(value, list) and listed:
        if not all(isinstance(v, str) for v in value):
            raise ParamError(f"{excerpt(value)} is not a list of strings: write each item in quotes")
        if any("," in v for v in value):
            raise ParamError(f"{excerpt(value)}: an item holds a comma: give one item a string")
        return param.parse(",".join(_text_form(v) for v in value))
    raise ParamError(f"{excerpt(value)} is {_a(value)}, not {_a_kind(param)}")


def _a(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    return "a date or time"


def _a_kind(param: Param) -> str:
    if param.kind == "bool":
        return "true or false"
    if param.kind == "list":
        return 'a list of strings (e.g. ["a", "b"]) or one comma-separated string'
    return f"{param.kind} (a string, e.g. as on the kernel command line)"


def parse_cmdline(
    cmdline: str, table: tuple[Param, ...] = PARAMS, defaults: dict[str, object] | None = None
) -> Config:
    """Parse the ``guestinit.*`` words; ``defaults`` (the image's guestinit.toml) replace the
    table's defaults, and the command line wins over both."""
    by_name = {p.name: p for p in table}
    values: dict[str, object] = {p.name: p.default for p in table}
    values.update(defaults or {})
    problems: list[str] = []
    raw: dict[str, str] = {}
    for word in split_cmdline(cmdline):
        if not word.startswith(PREFIX):
            continue
        key, sep, text = word.partition("=")
        name = key[len(PREFIX) :]
        raw[name] = text
        param = by_name.get(name)
        if param is None:
            problems.append(
                Problem(
                    f"unknown key {key if len(key) <= 60 and key.isprintable() else excerpt(key)}: ignored "
                    "(see `guestinit params` for the list)",
                    CMDLINE,
                    name,
                    WARNING,
                )
            )
            continue
        if not sep and param.kind == "bool":
            text = "on"
        try:
            values[name] = param.parse(text)
        except ParamError as exc:
            given = f"{key}={text}" if len(text) <= 40 and text.isprintable() else key  # exc shows it
            problems.append(
                Problem(f"{given}: {exc}; using the default {_shown(values[name])}", CMDLINE, name, ERROR)
            )
    return Config(values, problems, raw)


def _shown(value: object) -> str:
    """A default or parsed value in a message (tuples of requests shown as written)."""
    if isinstance(value, tuple):
        text = repr(value)
        return text if len(text) <= 80 else f"a list of {len(value)}"
    return excerpt(value)


def reference_markdown(table: tuple[Param, ...] = PARAMS) -> str:
    """The kernel command-line reference, generated from the table."""
    lines = [
        "# guestinit kernel command-line keys",
        "",
        "Generated by `guestinit params --markdown` from `guestinit/init/params.py`; do not edit.",
        "Unknown keys and bad values are reported on the console and in `STATUS=`, and the default",
        "is used.",
        "",
        "| key | type | default | meaning |",
        "| --- | --- | --- | --- |",
    ]
    for p in table:
        default = ",".join(p.default) if isinstance(p.default, tuple) else p.default
        if isinstance(default, bool):
            default = "on" if default else "off"
        lines.append(f"| `{PREFIX}{p.name}` | {p.kind} | `{default}` | {p.help} |")
    return "\n".join(lines) + "\n"
