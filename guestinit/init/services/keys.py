"""What a service file may say: /etc/guestinit/services.d/NAME.toml, one service a file.

KEYS is the one table of what a service file may say (name, type, default, help): parsing,
checking and the reference (docs/services.md, ``guestinit services --markdown``) come from
it. A file that cannot be read or has a bad value is not run: the service counts as failed
(critical when the file says ``critical = true``), with a one-line reason naming the file and
the key. Unknown keys are reported and ignored. Files added by an extra initrd count like the
image's own: the kernel unpacks them into the same /etc/guestinit/services.d.
"""

from __future__ import annotations

from guestinit.init.problems import excerpt

TYPE_CHECKING = False  # collections.abc is not imported on the boot path; mypy reads this as usual
if TYPE_CHECKING:
    from collections.abc import Callable

_NAME_FIRST = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_NAME_REST = _NAME_FIRST | frozenset("_.@-")


def valid_name(name: str) -> bool:
    """A service name: [A-Za-z0-9][A-Za-z0-9_.@-]{0,63} (checked without importing re)."""
    return 0 < len(name) <= 64 and name[0] in _NAME_FIRST and all(c in _NAME_REST for c in name[1:])


EVERY = "*"  # after = ["*"]: after every service that does not itself say "*"
READY_KINDS = ("socket", "tcp", "file", "log", "command")
RESTARTS = ("no", "on-failure", "always")
KILL_MODES = ("control-group", "process")
EXIT_ACTIONS = ("none", "poweroff")


class ServiceError(ValueError):
    """A bad service file or value; the message names the file, the key and the fix."""


MAX_PATH = 4096  # PATH_MAX
MAX_ID = 0xFFFFFFFE  # (uid_t) -1 is no uid
MAX_REGEX = 1024


def _no_nul(text: str, what: str) -> str:
    """The kernel takes strings up to their first NUL: one inside would be cut short (and
    Python refuses it at exec time)."""
    if "\0" in text:
        raise ServiceError(f"{what}{excerpt(text)} contains a NUL byte: remove it")
    return text


def _argv(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise ServiceError('must be a non-empty list of strings, e.g. ["/usr/bin/daemon", "--flag"]')
    for v in value:
        _no_nul(v, "")
    if not value[0].startswith("/"):
        raise ServiceError(f"{excerpt(value[0])}: the program must be an absolute path")
    if len(value[0]) > MAX_PATH:
        raise ServiceError(f"{excerpt(value[0])}: longer than PATH_MAX ({MAX_PATH})")
    return tuple(value)


def _environment(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ServiceError('must be a table of strings, e.g. { LANG = "C.UTF-8" }')
    out: dict[str, str] = {}
    for key, item in value.items():
        if not key or "=" in key or "\0" in key:
            raise ServiceError(f"{excerpt(key)} is not a valid variable name (no '=' or NUL)")
        if not isinstance(item, str):
            raise ServiceError(f"{key[:40]}: the value must be a string")
        _no_nul(item, f"{key[:40]}: ")
        out[key] = item
    return out


def _principal(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_ID:
        return str(value)
    if isinstance(value, str) and "\0" in value:
        _no_nul(value, "")
    if (
        isinstance(value, str)
        and 0 < len(value) <= 256
        and ":" not in value
        and value.isprintable()
        and not value.isspace()
    ):
        return value
    raise ServiceError(f"must be a name from /etc/passwd (/etc/group) or a number 0..{MAX_ID}")


def _names(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ServiceError('must be a list of service names, e.g. ["fabricmanager"], or ["*"]')
    for v in value:
        if v != EVERY and not valid_name(v):
            raise ServiceError(f"{excerpt(v)} is not a service name")
    return tuple(value)


def _ready(value: object) -> tuple[str, object]:
    if value in ("none", "exit"):
        assert isinstance(value, str)
        return (value, "")
    if not isinstance(value, dict) or len(value) != 1:
        raise ServiceError(
            'must be "none" or one of "exit", {socket="/path"}, {tcp="HOST:PORT"}, {file="/path"}, '
            '{log="regex"}, {command=["/bin/prog", ...]}'
        )
    kind, arg = next(iter(value.items()))
    if kind not in READY_KINDS:
        raise ServiceError(f"unknown readiness kind {excerpt(kind)}: use one of {', '.join(READY_KINDS)}")
    if kind in ("socket", "file"):
        try:
            return (kind, _path(arg))
        except ServiceError as exc:
            raise ServiceError(f"{kind}: {exc}") from None
    if kind == "tcp":
        if not isinstance(arg, str):
            raise ServiceError('tcp: must be "HOST:PORT"')
        return (kind, parse_hostport(arg))
    if kind == "log":
        if not isinstance(arg, str) or not arg:
            raise ServiceError("log: must be a regular expression")
        _no_nul(arg, "log: ")
        if len(arg) > MAX_REGEX:
            raise ServiceError(f"log: {excerpt(arg)} is longer than {MAX_REGEX} characters: shorten it")
        import re

        try:
            return (kind, re.compile(arg))
        except re.error as exc:
            raise ServiceError(f"log: {excerpt(arg)} is not a valid regular expression: {exc}") from None
        except (RecursionError, OverflowError, ValueError):  # nested or sized beyond what re takes
            raise ServiceError(f"log: {excerpt(arg)} is too complex a regular expression") from None
    try:
        return (kind, _argv(arg))
    except ServiceError as exc:
        raise ServiceError(f"command: {exc}") from None


def parse_hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if (
        not sep
        or not host
        or "\0" in host
        or not (port.isascii() and port.isdigit() and len(port) <= 5)
        or not 0 < int(port) < 65536
    ):
        raise ServiceError(
            f'tcp: {excerpt(text)} is not "HOST:PORT" with a port 1..65535 '
            '(e.g. "127.0.0.1:6666" or "[::1]:6666")'
        )
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return (host, int(port))


def _seconds(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 86400:
        raise ServiceError("must be a number of seconds, 0 < s <= 86400")
    return float(value)


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 1000:
        raise ServiceError("must be a whole number from 0 to 1000")
    return value


def _choice(*choices: str) -> Callable[[object], str]:
    def check(value: object) -> str:
        if value not in choices:
            raise ServiceError(f"must be one of {', '.join(repr(c) for c in choices)}")
        assert isinstance(value, str)
        return value

    return check


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise ServiceError("must be true or false")
    return value


def _oom(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not -1000 <= value <= 1000:
        raise ServiceError("must be a whole number from -1000 to 1000")
    return value


def _nofile(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1 << 30:
        raise ServiceError("must be a whole number of file descriptors (at most the kernel's fs.nr_open)")
    return value


_SIZE_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _bytes(value: object) -> int:
    """A size: whole bytes, or a string of digits with a K, M, G or T (binary) suffix."""
    if isinstance(value, str) and value[-1:].upper() in _SIZE_UNITS and value[:-1].isdigit():
        value = int(value[:-1]) * _SIZE_UNITS[value[-1].upper()]
    if isinstance(value, bool) or not isinstance(value, int) or not 1 << 20 <= value <= 1 << 50:
        raise ServiceError('must be a size of at least 1M: bytes, or a string such as "512M" or "4G"')
    return value


def _weight(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 10000:
        raise ServiceError("must be a whole number from 1 to 10000 (the default weight is 100)")
    return value


def _path(value: object) -> str:
    if not isinstance(value, str) or not value.startswith("/"):
        raise ServiceError("must be an absolute path")
    _no_nul(value, "")
    if len(value) > MAX_PATH:
        raise ServiceError(f"{excerpt(value)}: longer than PATH_MAX ({MAX_PATH})")
    return value


class Key:
    __slots__ = ("check", "default", "help", "name", "type")

    def __init__(
        self, name: str, type: str, check: Callable[[object], object], default: object, help: str
    ) -> None:
        self.name = name
        self.type = type
        self.check = check
        self.default = default
        self.help = help


REQUIRED = object()
FROM_CMDLINE = "the guestinit.{} key"

KEYS: tuple[Key, ...] = (
    Key("command", "list of strings", _argv, REQUIRED, "The program (absolute path) and its arguments."),
    Key(
        "environment",
        "table",
        _environment,
        {},
        "Variables added to the clean environment (PATH, HOME, USER, LOGNAME, LANG); init's own "
        "environment is never passed on.",
    ),
    Key("user", "name or uid", _principal, "root", "The user the service runs as."),
    Key(
        "group",
        "name or gid",
        _principal,
        "",
        "Its group; default the user's primary group. Supplementary groups come from /etc/group.",
    ),
    Key(
        "after",
        "list of names",
        _names,
        (),
        'Start only once these services are ready (or settled: skipped, exited, failed). "*" '
        'means every service that does not itself say "*". Names of absent services are ignored. '
        "Stopping runs in the reverse order.",
    ),
    Key(
        "ready",
        'table or "none"',
        _ready,
        ("none", ""),
        'When the service counts as ready: {socket="/path"} (a Unix socket accepts a connection), '
        '{tcp="HOST:PORT"} (a TCP connection is accepted), {file="/path"} (the file appears), '
        '{log="regex"} (a line of its output or its syslog matches), {command=["/bin/prog", ...]} '
        '(that exits 0), "exit" (a one-shot task: ready when the program itself exits 0; '
        'its dependents wait for that), or "none" (once started).',
    ),
    Key(
        "ready_timeout",
        "seconds",
        _seconds,
        None,
        "Bound on one start's wait for readiness; default the guestinit.ready_timeout key.",
    ),
    Key(
        "restart",
        "no|on-failure|always",
        _choice(*RESTARTS),
        "no",
        "Restart when it exits (on-failure: with a non-zero status or a signal, or when it is not "
        "ready in time), after an exponential back-off (0.1 s doubling, at most 10 s).",
    ),
    Key(
        "max_restarts",
        "count",
        _count,
        5,
        "Give up (the service has failed) after this many restarts within restart_window; before "
        "it was first ready every restart counts.",
    ),
    Key("restart_window", "seconds", _seconds, 60.0, "The window max_restarts counts in."),
    Key(
        "critical",
        "bool",
        _bool,
        False,
        "Its failure fails the VM: EXIT_STATUS= and STATUS= to the host, then power-off. A "
        "non-critical failure is reported in X_GUESTINIT_DEGRADED=.",
    ),
    Key(
        "stop_timeout",
        "seconds",
        _seconds,
        None,
        "Time between SIGTERM and SIGKILL when stopping; default the guestinit.stop_timeout key.",
    ),
    Key("oom_score_adj", "-1000..1000", _oom, None, "The OOM killer adjustment; default inherited (0)."),
    Key("rlimit_nofile", "count", _nofile, None, "RLIMIT_NOFILE (soft and hard); default inherited."),
    Key(
        "pid_file",
        "path",
        _path,
        "",
        "For a program that forks its daemon and exits once the daemon is initialised (as "
        "nvidia-persistenced does): when it exits 0, the process this file names becomes the "
        "service (watched, stopped and restarted like any other). Its readiness probe still decides "
        "when it is ready.",
    ),
    Key(
        "kill_mode",
        "control-group|process",
        _choice(*KILL_MODES),
        "control-group",
        "What stopping reaches. control-group: every process of the service's cgroup "
        "(/sys/fs/cgroup/guestinit/NAME), forked or double-forked, gets SIGTERM, and cgroup.kill "
        "after stop_timeout; processes left behind when the main process exits are stopped the same "
        "way. process: only the main process is signalled, and what it leaves behind keeps running "
        "(until the VM powers off).",
    ),
    Key(
        "memory_max",
        "size",
        _bytes,
        None,
        'memory.max of the service\'s cgroup (bytes, or "512M", "4G"): past it the kernel '
        "reclaims, then OOM-kills inside the service. Default no limit.",
    ),
    Key(
        "cpu_weight",
        "1..10000",
        _weight,
        None,
        "cpu.weight of the service's cgroup: its share of CPU time against the other services "
        "when they compete. Default 100.",
    ),
    Key(
        "exit_action",
        "none|poweroff",
        _choice(*EXIT_ACTIONS),
        "none",
        "poweroff: when the service ends for good (its main process exits, whatever the status, "
        "and no restart follows, or it fails to start), the VM powers off, as the kata-agent's own "
        "init mode does: EXIT_STATUS= its exit status (128+N when killed by signal N, 1 when it "
        "never ran), STATUS= the reason. A clean exit 0 stops the other services in order first.",
    ),
    Key(
        "condition_path_exists",
        "path",
        _path,
        "",
        "Start only when this path exists (else the service is skipped, which is no failure).",
    ),
)
BY_NAME = {k.name: k for k in KEYS}


class ServiceSpec:
    """One service file, checked. ``error`` set means the file is unusable (the service fails)."""

    __slots__ = (
        "after",
        "command",
        "condition_path_exists",
        "cpu_weight",
        "critical",
        "environment",
        "error",
        "errors",
        "exit_action",
        "group",
        "kill_mode",
        "max_restarts",
        "memory_max",
        "name",
        "oom_score_adj",
        "path",
        "pid_file",
        "problems",
        "ready",
        "ready_timeout",
        "restart",
        "restart_window",
        "rlimit_nofile",
        "stop_timeout",
        "user",
    )

    def __init__(self, name: str, path: str) -> None:
        self.name = name
        self.path = path
        self.error = ""  # the first reason the service cannot run ("" when it can)
        self.errors: list[str] = []  # every bad value of its file, one line each
        self.problems: list[str] = []  # what is ignored (unknown keys)
        self.command: tuple[str, ...] = ()
        self.environment: dict[str, str] = {}
        self.user = "root"
        self.group = ""
        self.after: tuple[str, ...] = ()
        self.ready: tuple[str, object] = ("none", "")
        self.ready_timeout: float | None = None
        self.restart = "no"
        self.max_restarts = 5
        self.restart_window = 60.0
        self.critical = False
        self.stop_timeout: float | None = None
        self.oom_score_adj: int | None = None
        self.rlimit_nofile: int | None = None
        self.condition_path_exists = ""
        self.pid_file = ""
        self.kill_mode = "control-group"
        self.memory_max: int | None = None
        self.cpu_weight: int | None = None
        self.exit_action = "none"

    def __repr__(self) -> str:
        return f"ServiceSpec({self.name!r}, error={self.error!r})"
