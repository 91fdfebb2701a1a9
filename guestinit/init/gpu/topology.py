"""NVRC's topology modes, chosen from counts of PCI functions (references §1).

GPU = vendor 0x10de with class 0x03xxxx; NVSwitch = vendor 0x10de with class 0x0680xx;
SW_MNG = vendor 0x15b3 with ``SW_MNG`` in its VPD (the NVLink-5 switch management bridge).

    mode             NVSwitch  GPU  SW_MNG   modules                      fabric
    cpu                  0      0     0      -                            -
    gpu                  0     n>0    0      nvidia nvidia_uvm            -
    gpu-nvl4             4      8     0      nvidia nvidia_uvm            fabricmanager FABRIC_MODE=0
    gpu-nvl5             0      8     4      nvidia nvidia_uvm ib_umad    nvlsm + fabricmanager
                                             mlx5_ib                      FABRIC_MODE=0
    servicevm-nvl4       4      0     0      nvidia                       fabricmanager FABRIC_MODE=1
    servicevm-nvl5       0      0     4      ib_umad mlx5_ib              nvlsm + fabricmanager
                                                                          FABRIC_MODE=1

Anything else is mode ``unknown`` (NVRC panics there). The fallback, documented here and in
``Topology.status()``: with at least one GPU the guest runs as ``gpu`` (drivers and the GPU
daemons, no fabricmanager: NVLink stays as the driver finds it), with none as ``cpu``. The
mode stays ``unknown`` in ``X_GUESTINIT_MODE`` and the counts go into ``STATUS=`` so the host
sees what it handed over. ``guestinit.mode=`` forces a mode whatever the counts say.
"""

from __future__ import annotations

from guestinit.init.root import Root

TYPE_CHECKING = False  # typing is not imported on the boot path; mypy reads this as usual
if TYPE_CHECKING:
    from guestinit.init.gpu.pci import PciDevice

UNKNOWN = "unknown"
DEVICES_DIR = "/sys/bus/pci/devices"  # pci.DEVICES_DIR
# The vendors whose functions the modes count: pci.VENDOR_NVIDIA, pci.VENDOR_MELLANOX (a test checks)
COUNTED_VENDORS = ("0x10de", "0x15b3")


class ModeSpec:
    __slots__ = ("fabric_mode", "gpus", "help", "modules", "name", "nvlsm", "nvswitches", "sw_mng")

    def __init__(
        self,
        name: str,
        nvswitches: int,
        gpus: int,
        sw_mng: int,
        modules: tuple[str, ...],
        fabric_mode: int | None,
        nvlsm: bool,
        help: str,
    ) -> None:
        self.name = name
        self.nvswitches = nvswitches
        self.gpus = gpus  # -1: any number above zero
        self.sw_mng = sw_mng
        self.modules = modules
        self.fabric_mode = fabric_mode  # fabricmanager's FABRIC_MODE, None: fabricmanager does not run
        self.nvlsm = nvlsm
        self.help = help

    def __repr__(self) -> str:
        return f"ModeSpec({self.name!r})"


# fmt: off
MODE_TABLE: tuple[ModeSpec, ...] = (
    ModeSpec("cpu", 0, 0, 0, (), None, False, "no NVIDIA devices: nothing GPU-related runs"),
    ModeSpec("gpu", 0, -1, 0, ("nvidia", "nvidia_uvm"), None, False, "GPUs without an NVLink fabric"),
    ModeSpec(
        "gpu-nvl4", 4, 8, 0, ("nvidia", "nvidia_uvm"), 0, False,
        "HGX H100/H200 board passed whole: fabricmanager in full mode",
    ),
    ModeSpec(
        "gpu-nvl5", 0, 8, 4, ("nvidia", "nvidia_uvm", "ib_umad", "mlx5_ib"), 0, True,
        "HGX B200 board passed whole: nvlsm, then fabricmanager in full mode",
    ),
    ModeSpec(
        "servicevm-nvl4", 4, 0, 0, ("nvidia",), 1, False,
        "service VM owning the NVSwitches: fabricmanager in shared NVSwitch mode",
    ),
    ModeSpec(
        "servicevm-nvl5", 0, 0, 4, ("ib_umad", "mlx5_ib"), 1, True,
        "service VM owning the SW_MNG bridges: nvlsm, then fabricmanager in shared mode",
    ),
)
# fmt: on
SPECS = {spec.name: spec for spec in MODE_TABLE}  # the same names as params.MODES less auto (a test checks)


def classify(nvswitches: int, gpus: int, sw_mng: int) -> str | None:
    """The mode for these counts, or None when NVRC's table has no row for them."""
    for spec in MODE_TABLE:
        gpus_match = gpus > 0 if spec.gpus == -1 else gpus == spec.gpus
        if gpus_match and (nvswitches, sw_mng) == (spec.nvswitches, spec.sw_mng):
            return spec.name
    return None


class Topology:
    __slots__ = ("forced", "gpus", "mode", "nvswitches", "reason", "sw_mng")

    def __init__(
        self,
        mode: str,
        gpus: list[PciDevice],
        nvswitches: list[PciDevice],
        sw_mng: list[PciDevice],
        reason: str,
        forced: bool = False,
    ) -> None:
        self.mode = mode  # a MODES name other than auto, or "unknown"
        self.gpus = gpus
        self.nvswitches = nvswitches
        self.sw_mng = sw_mng
        self.reason = reason
        self.forced = forced

    def __repr__(self) -> str:
        return f"Topology({self.mode!r}, {self.counts_text!r})"

    @property
    def counts(self) -> tuple[int, int, int]:
        """(NVSwitch, GPU, SW_MNG), NVRC's order."""
        return len(self.nvswitches), len(self.gpus), len(self.sw_mng)

    @property
    def counts_text(self) -> str:
        n, g, s = self.counts
        return f"{n} NVSwitch, {g} GPU, {s} SW_MNG"

    @property
    def fallback(self) -> str:
        """The mode whose actions run: the mode itself, or for unknown gpu/cpu by GPU count."""
        if self.mode != UNKNOWN:
            return self.mode
        return "gpu" if self.gpus else "cpu"

    @property
    def spec(self) -> ModeSpec:
        return SPECS[self.fallback]

    def status(self) -> str:
        """One line for STATUS= and the console."""
        if self.mode == UNKNOWN:
            return f"mode unknown ({self.reason}); running as {self.fallback}"
        how = "forced" if self.forced else "detected"
        return f"mode {self.mode} ({how}: {self.counts_text})"

    def notify_fields(self) -> dict[str, str]:
        n, g, s = self.counts
        return {"X_GUESTINIT_MODE": self.mode, "X_GUESTINIT_TOPOLOGY": f"nvswitch={n},gpu={g},sw_mng={s}"}

    def as_dict(self) -> dict[str, object]:
        n, g, s = self.counts
        return {
            "mode": self.mode,
            "forced": self.forced,
            "runs_as": self.fallback,
            "counts": {"nvswitch": n, "gpu": g, "sw_mng": s},
            "reason": self.reason,
            "gpus": [d.address for d in self.gpus],
            "nvswitches": [d.address for d in self.nvswitches],
            "sw_mng": [d.address for d in self.sw_mng],
            "modules": list(self.spec.modules),
            "fabric_mode": self.spec.fabric_mode,
            "nvlsm": self.spec.nvlsm,
        }


def counted_vendor_present(root: Root) -> bool:
    """Whether any PCI function might count: one vendor file read a function, so a guest
    without NVIDIA or Mellanox functions (a CPU guest) is known to be ``cpu`` without reading
    everything pci.read_device reads. A function whose vendor cannot be read here (a captured
    tree stores the links as files) counts as present: then the full read decides."""
    for address in root.listdir(DEVICES_DIR):
        try:
            vendor = root.read_text(f"{DEVICES_DIR}/{address}/vendor").strip()
        except OSError:
            return True
        if vendor in COUNTED_VENDORS:
            return True
    return False


def detect(root: Root, forced: str = "auto", devices: list[PciDevice] | None = None) -> Topology:
    """Count GPUs, NVSwitches and SW_MNG bridges and pick the mode; never raises."""
    if devices is None:
        if counted_vendor_present(root):
            from guestinit.init.gpu.pci import list_devices  # dataclasses and more: not for CPU guests

            devices = list_devices(root)
        else:
            devices = []
    gpus = [d for d in devices if d.is_gpu]
    nvswitches = [d for d in devices if d.is_nvswitch]
    sw_mng = [d for d in devices if d.sw_mng]
    unreadable = [d.address for d in devices if d.vpd_error]
    topo = Topology(UNKNOWN, gpus, nvswitches, sw_mng, "")
    detected = classify(*topo.counts)
    note = f"; VPD unreadable on {', '.join(unreadable)}" if unreadable else ""
    if forced != "auto" and forced in SPECS:
        topo.mode = forced
        topo.forced = True
        topo.reason = f"guestinit.mode={forced}; sysfs shows {topo.counts_text} ({detected or UNKNOWN}){note}"
        return topo
    bad_force = f"guestinit.mode={forced} is not a mode, ignored; " if forced != "auto" else ""
    if detected is None:
        topo.reason = f"{bad_force}unexpected topology: {topo.counts_text}{note}"
        return topo
    topo.mode = detected
    topo.reason = f"{bad_force}{topo.counts_text}{note}"
    return topo
