"""Which of the modules the init loads itself this VM needs: the ones whose device is there.

There is no udev in the guest, so nothing loads a driver because a device appeared; the init
loads a short list itself, and only for devices the VM has (as udev's coldplug would), read
from sysfs before any module is loaded: virtio devices by their virtio device ID, ACPI
devices by their hardware ID. A driver for a device the VM lacks costs boot time and does
nothing (the vsock chain alone is 0.1 s under TCG). ``guestinit.modules=`` adds more.

One row per module: name, what it is for, and the device that calls for it.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # typing is not imported on the boot path; mypy reads this as usual
if TYPE_CHECKING:
    from guestinit.init.root import Root

VIRTIO_ID_RNG = 4
VIRTIO_ID_VSOCK = 19
ACPI_POWER_BUTTONS = ("LNXPWRBN", "PNP0C0C")  # fixed-feature and control-method buttons
ACPI_FW_CFG = "QEMU0002"


class Devices:
    """The virtio device IDs and ACPI hardware IDs present, read once from sysfs."""

    def __init__(self, root: Root) -> None:
        self.virtio: set[int] = set()
        base = root("/sys/bus/virtio/devices")
        for entry in _listdir(base):
            try:
                with open(os.path.join(base, entry, "device")) as f:
                    self.virtio.add(int(f.read().strip(), 16))
            except (OSError, ValueError):
                continue
        # ACPI devices are named HID:instance ("LNXPWRBN:00"); ACPI-enumerated platform
        # devices (fw_cfg on some machines) appear under the platform bus the same way.
        names = [*_listdir(root("/sys/bus/acpi/devices")), *_listdir(root("/sys/bus/platform/devices"))]
        self.acpi = {name.partition(":")[0] for name in names}


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


# (module, what for, the device that calls for it: a key of wanted()'s table)
BASE: tuple[tuple[str, str, str], ...] = (
    (
        "vmw_vsock_virtio_transport",
        "a virtio-vsock device: the kata-agent's channel and the vsock readiness transports",
        "vsock",
    ),
    ("virtio_rng", "a virtio-rng device: seeds the kernel's CRNG before services start", "rng"),
    ("button", "an ACPI power button: QEMU's system_powerdown becomes a clean shutdown", "button"),
    ("evdev", "an ACPI power button: its KEY_POWER events reach the init through evdev", "button"),
    (
        "qemu_fw_cfg",
        "QEMU's fw_cfg, when guestinit.notify= is not given: systemd credentials may come on it",
        "fw_cfg",
    ),
)


def wanted(devices: Devices, notify_given: bool) -> list[str]:
    """The BASE modules this VM's devices call for, in table order."""
    present = {
        "vsock": VIRTIO_ID_VSOCK in devices.virtio,
        "rng": VIRTIO_ID_RNG in devices.virtio,
        "button": any(hid in devices.acpi for hid in ACPI_POWER_BUTTONS),
        "fw_cfg": ACPI_FW_CFG in devices.acpi and not notify_given,
    }
    return [name for name, _why, device in BASE if present[device]]
