"""The GPU daemons as guestinit services, made at boot for the GPU modes (references §1, 7).

Whether each runs, with which arguments and within which bound depends on the topology and
on ``guestinit.*`` keys (gpu_params), so the services are made here, from the table below, as
service tables checked by the same code as a services.d file (files.from_table).
Nothing of this runs in the cpu and service-VM modes (the service VM image ships its own
fabricmanager service). A file /etc/guestinit/services.d/NAME.toml replaces the service of
that name; ``guestinit.disable=NAME`` skips one.

    service               modes        runs when                   ready when
    nvidia-persistenced   gpu, nvl4/5  the program exists          its RPC socket accepts
    nvidia-smi-lgc/lmc/pl gpu, nvl4/5  guestinit.smi.* is given    nvidia-smi exits 0
    nvidia-cdi            gpu, nvl4/5  nvidia-ctk exists           nvidia-ctk exits 0
    nvlsm                 nvl5         the program exists          started
    fabricmanager         nvl4, nvl5   nv-fabricmanager exists     its command port accepts
    nvidia-smi-srs        gpu, nvl4/5  guestinit.smi.srs is given  nvidia-smi exits 0, last

nvidia-persistenced forks its daemon and exits once the daemon serves its socket; the daemon
(its pid file) is then the service. Every readiness bound is ``guestinit.gpu.timeout`` plus
``guestinit.gpu.timeout_per_gpu`` for each GPU. Programs and every path passed to them are
resolved under the injectable root, so tests run stand-ins from a temporary tree.
The kata-agent (``after = ["*"]``) starts after all of them.
"""

from __future__ import annotations

from guestinit.init.gpu.topology import Topology
from guestinit.init.params import Config
from guestinit.init.root import Root
from guestinit.init.services import files
from guestinit.init.services.keys import ServiceSpec

TYPE_CHECKING = False  # collections.abc is not imported on the boot path; mypy reads this as usual
if TYPE_CHECKING:
    from collections.abc import Callable

    Args = Callable[[Config, Root], "list[str] | None"]  # None: not wanted with this configuration
    Ready = Callable[[Config, Root], "object"]

GPU_MODES = ("gpu", "gpu-nvl4", "gpu-nvl5")
NVL_MODES = ("gpu-nvl4", "gpu-nvl5")

PERSISTENCED = "/usr/bin/nvidia-persistenced"
PERSISTENCED_SOCKET = "/var/run/nvidia-persistenced/socket"
PERSISTENCED_PID = "/var/run/nvidia-persistenced/nvidia-persistenced.pid"
SMI = "/usr/bin/nvidia-smi"
CTK = "/usr/bin/nvidia-ctk"
CDI_SPEC = "/var/run/cdi/nvidia.yaml"
FABRICMANAGER = "/usr/bin/nv-fabricmanager"
# NVIDIA's NVLink subnet manager (an OpenSM derivative, -F: its configuration file) as its
# package installs it; no package exists for this image's builds, so this row is untested
# against the real program. A services.d/nvlsm.toml replaces it.
NVLSM = "/opt/nvidia/nvlsm/sbin/nvlsm"
NVLSM_CONFIG = "/usr/share/nvidia/nvlsm/nvlsm.conf"


def _smi_setting(flag: str, key: str) -> Args:
    def args(config: Config, root: Root) -> list[str] | None:
        value = config.text(key)
        return [*flag.split(), value] if value else None

    return args


def _persistenced_args(config: Config, root: Root) -> list[str] | None:
    return ["--verbose", *(["--uvm-persistence-mode"] if config.flag("persistenced.uvm") else [])]


def _fabricmanager_args(config: Config, root: Root) -> list[str] | None:
    return ["-c", root(config.text("fabricmanager.config"))]


def read_fm_config(root: Root, path: str) -> dict[str, str]:
    """KEY=VALUE lines of a fabricmanager.cfg (comments and blanks skipped; missing file: {})."""
    out: dict[str, str] = {}
    for line in root.read_text(path, "").splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key and not key.startswith("#"):
            out[key.strip()] = value.strip()
    return out


def _fabricmanager_ready(config: Config, root: Root) -> object:
    """fabricmanager's command interface, as its configuration sets it."""
    cfg = read_fm_config(root, config.text("fabricmanager.config"))
    if cfg.get("FM_CMD_UNIX_SOCKET_PATH"):
        return {"socket": cfg["FM_CMD_UNIX_SOCKET_PATH"]}
    host = cfg.get("FM_CMD_BIND_INTERFACE") or "127.0.0.1"
    port = cfg.get("FM_CMD_PORT_NUMBER") or "6666"
    return {"tcp": f"{host}:{port}"}


class Row:
    """One GPU service: its name, modes, program, arguments, readiness and order."""

    __slots__ = ("after", "args", "extra", "modes", "name", "program", "ready")

    def __init__(
        self,
        name: str,
        modes: tuple[str, ...],
        program: str,
        args: Args,
        ready: Ready,
        after: tuple[str, ...] = (),
        extra: dict[str, object] | None = None,
    ) -> None:
        self.name = name
        self.modes = modes
        self.program = program
        self.args = args
        self.ready = ready
        self.after = after  # "*": every other GPU service made with it
        self.extra = extra or {}


def _fixed(value: object) -> Ready:
    return lambda config, root: value


EVERY_OTHER = "*"

# fmt: off
ROWS: tuple[Row, ...] = (
    Row("nvidia-persistenced", GPU_MODES, PERSISTENCED, _persistenced_args,
        _fixed({"socket": PERSISTENCED_SOCKET}),
        extra={"pid_file": PERSISTENCED_PID, "restart": "on-failure", "max_restarts": 3}),
    Row("nvidia-smi-lgc", GPU_MODES, SMI, _smi_setting("-lgc", "smi.lgc"), _fixed("exit"),
        after=("nvidia-persistenced",)),
    Row("nvidia-smi-lmc", GPU_MODES, SMI, _smi_setting("-lmc", "smi.lmc"), _fixed("exit"),
        after=("nvidia-persistenced",)),
    Row("nvidia-smi-pl", GPU_MODES, SMI, _smi_setting("-pl", "smi.pl"), _fixed("exit"),
        after=("nvidia-persistenced",)),
    Row("nvidia-cdi", GPU_MODES, CTK,
        lambda config, root: ["cdi", "generate", f"--output={root(CDI_SPEC)}"], _fixed("exit"),
        after=("nvidia-persistenced",)),
    Row("nvlsm", ("gpu-nvl5",), NVLSM, lambda config, root: ["-F", root(NVLSM_CONFIG)], _fixed("none"),
        extra={"stop_timeout": 10.0}),
    Row("fabricmanager", NVL_MODES, FABRICMANAGER, _fabricmanager_args, _fabricmanager_ready,
        after=("nvlsm",), extra={"stop_timeout": 10.0}),
    Row("nvidia-smi-srs", GPU_MODES, SMI, _smi_setting("conf-compute -srs", "smi.srs"), _fixed("exit"),
        after=(EVERY_OTHER,)),
)
# fmt: on


def ready_timeout(config: Config, gpus: int) -> float:
    return config.number("gpu.timeout") + config.number("gpu.timeout_per_gpu") * gpus


def tables(config: Config, topo: Topology, root: Root) -> dict[str, dict[str, object]]:
    """The service tables (services.d keys) for this topology and configuration, in start order."""
    mode = topo.fallback
    timeout = ready_timeout(config, len(topo.gpus))
    made: dict[str, dict[str, object]] = {}
    for row in ROWS:
        if mode not in row.modes:
            continue
        args = row.args(config, root)
        if args is None:
            continue
        others = [name for name in made if name != row.name]
        after = [a for a in row.after if a in made] + (others if EVERY_OTHER in row.after else [])
        made[row.name] = {
            "command": [root(row.program), *args],
            "ready": row.ready(config, root),
            "ready_timeout": timeout,
            "condition_path_exists": row.program,
            **({"after": after} if after else {}),
            **row.extra,
        }
    return made


def specs(config: Config, topo: Topology, root: Root) -> list[ServiceSpec]:
    return [
        files.from_table(name, f"guestinit's {topo.fallback} mode: {name}", table)
        for name, table in tables(config, topo, root).items()
    ]
