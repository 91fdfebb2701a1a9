"""The Kata settings deploy writes: one table, and the values `guestctl plan` sizes for a host.

Each setting is (table, key, type, default, help, source). source: "default" (upstream's value
for large-BAR GPUs, references §2), "plan" (the default, unless `guestctl plan` sized it for this
host), "image" / "prefix" (computed at deploy time).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from guestinit.host.errors import DeployError, UserError

DEFAULT_SYSFS_ROOT = "/"
DEFAULT_PLAN_MEMORY = "8G"  # Kata's default_memory for this flavour


@dataclass(frozen=True)
class Setting:
    table: str
    key: str
    kind: type
    default: object
    help: str
    source: str = "default"


QEMU = "hypervisor.qemu"
KATA_SETTINGS: tuple[Setting, ...] = (
    Setting(QEMU, "path", str, None, "QEMU as kata-deploy installs it under the prefix", "prefix"),
    Setting(QEMU, "valid_hypervisor_paths", list, None, "annotations may only name this QEMU", "prefix"),
    Setting(QEMU, "kernel", str, None, "the guest kernel: a versioned file, never rewritten", "image"),
    Setting(QEMU, "initrd", str, None, "the guest initrd (guestinit as PID 1): a versioned file", "image"),
    Setting(QEMU, "image", str, None, "the guest root filesystem image: a versioned file", "image"),
    Setting(QEMU, "rootfs_type", str, None, "filesystem of the guest image", "image"),
    Setting(QEMU, "machine_type", str, "q35", "PCIe machine: root ports for passed-through GPUs"),
    Setting(QEMU, "firmware", str, "", "empty: QEMU's default firmware"),
    Setting(
        QEMU,
        "kernel_params",
        str,
        "cgroup_no_v1=all pci=realloc pci=nocrs pci=assign-busses",
        "appended to Kata's own guest kernel parameters",
        "plan",
    ),
    Setting(QEMU, "default_vcpus", int, 1, "vCPUs at boot"),
    Setting(QEMU, "default_memory", int, 8192, "guest RAM at boot, MiB", "plan"),
    Setting(QEMU, "memory_slots", int, 10, "memory hot-plug slots"),
    Setting(QEMU, "default_bridges", int, 1, "PCI bridges for hot-plug"),
    Setting(
        QEMU, "enable_hugepages", bool, False, "back guest RAM with hugepages (implies preallocation)", "plan"
    ),
    Setting(QEMU, "enable_iommu", bool, False, "no vIOMMU in the guest"),
    Setting(QEMU, "hot_plug_vfio", str, "no-port", "where VFIO devices are hot-plugged", "plan"),
    Setting(QEMU, "cold_plug_vfio", str, "root-port", "where VFIO devices are cold-plugged", "plan"),
    Setting(QEMU, "pcie_root_port", int, 8, "PCIe root ports for large-BAR devices such as GPUs", "plan"),
    Setting(QEMU, "disable_image_nvdimm", bool, True, "attach an image as virtio-blk, not NVDIMM"),
    Setting(QEMU, "shared_fs", str, "virtio-fs", "how container files reach the guest"),
    Setting(QEMU, "virtio_fs_daemon", str, None, "virtiofsd as kata-deploy installs it", "prefix"),
    Setting(
        QEMU, "valid_virtio_fs_daemon_paths", list, None, "annotations may only name this virtiofsd", "prefix"
    ),
    Setting(
        "agent.kata", "dial_timeout", int, 1200, "seconds to reach kata-agent (multi-GPU boots are slow)"
    ),
    Setting("runtime", "create_container_timeout", int, 1200, "seconds for CreateContainer"),
    Setting(
        "runtime", "static_sandbox_resource_mgmt", bool, True, "size the VM up front: no CPU/memory hot-plug"
    ),
    Setting("runtime", "sandbox_cgroup_only", bool, True, "one host cgroup per sandbox"),
)
PLAN_KEYS = frozenset(s.key for s in KATA_SETTINGS if s.source == "plan")


@dataclass(frozen=True)
class Plan:
    """Values from `guestctl plan` for this host (PLAN_KEYS) and how they were asked for."""

    settings: Mapping[str, object]
    summary: str


def planned_settings(sysfs_root: str | None, gpus: str | None, memory: str | None) -> Plan | None:
    """Ask the BAR/MMIO planner (`guestctl plan`, guestinit.host.plan.planner) for this host's Kata settings.

    Same flags, same meaning as `guestctl plan`: --sysfs-root is a tree shaped like / (or its
    sys/), --gpus BDF,...|all, --memory SIZE (bare numbers are MiB)."""
    if sysfs_root is None and gpus is None and memory is None:
        return None
    # imported on use: a plain deploy does not need the planner
    from guestinit.host.plan import planner, units

    root = sysfs_root or DEFAULT_SYSFS_ROOT
    chosen = None if gpus in (None, "all") else [g for g in (gpus or "").split(",") if g.strip()]
    try:
        memory_bytes = units.parse_size(memory or DEFAULT_PLAN_MEMORY)
        result = planner.plan(root, chosen, memory_bytes)
        settings = dict(result.kata_settings())
    except UserError as exc:
        raise DeployError(f"planning for {root}: {exc.line()}") from None
    summary = f"--sysfs-root {root} --gpus {gpus or 'all'} --memory {memory or DEFAULT_PLAN_MEMORY}"
    return Plan(_check_plan(settings), summary)


def _check_plan(settings: Mapping[str, object]) -> dict[str, object]:
    kinds = {s.key: s.kind for s in KATA_SETTINGS if s.source == "plan"}
    out: dict[str, object] = {}
    for key, value in settings.items():
        if key not in kinds:
            raise DeployError(
                f"the planner returned Kata key {key!r}, which deploy does not write: update deploy's table"
            )
        if key == "kernel_params" and isinstance(value, (list, tuple)):
            value = " ".join(str(v) for v in value)
        if not isinstance(value, kinds[key]) or (kinds[key] is int and isinstance(value, bool)):
            raise DeployError(f"the planner returned {key}={value!r}, not a {kinds[key].__name__}")
        out[key] = value
    return out
