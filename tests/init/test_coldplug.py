"""The modules the init loads itself follow the VM's devices (coldplug.py), read from a sysfs
tree laid out as the kernel lays it out."""

from __future__ import annotations

from pathlib import Path

from guestinit.init import coldplug
from guestinit.init.root import Root


def _sysfs(root: Path, virtio: dict[str, str], acpi: list[str], platform: tuple[str, ...] = ()) -> Root:
    for name, device in virtio.items():
        d = root / "sys/bus/virtio/devices" / name
        d.mkdir(parents=True)
        (d / "device").write_text(device + "\n")
        (d / "vendor").write_text("0x1af4\n")
    for name in acpi:
        (root / "sys/bus/acpi/devices" / name).mkdir(parents=True)
    for name in platform:
        (root / "sys/bus/platform/devices" / name).mkdir(parents=True)
    return Root(root)


def test_a_kata_vm_with_vsock_rng_and_power_button(tmp_path: Path) -> None:
    root = _sysfs(
        tmp_path,
        {"virtio0": "0x0013", "virtio1": "0x0004", "virtio2": "0x0003"},  # vsock, rng, console
        ["LNXPWRBN:00", "PNP0A08:00", "QEMU0002:00"],
    )
    devices = coldplug.Devices(root)
    assert devices.virtio == {19, 4, 3}
    assert coldplug.wanted(devices, notify_given=True) == [
        "vmw_vsock_virtio_transport",
        "virtio_rng",
        "button",
        "evdev",
    ]
    # without guestinit.notify= the systemd credentials are read, fw_cfg among their sources
    assert coldplug.wanted(devices, notify_given=False)[-1] == "qemu_fw_cfg"


def test_no_device_no_driver(tmp_path: Path) -> None:
    root = _sysfs(tmp_path, {"virtio0": "0x0003"}, ["PNP0A08:00"])
    assert coldplug.wanted(coldplug.Devices(root), notify_given=False) == []


def test_control_method_button_and_fw_cfg_on_the_platform_bus(tmp_path: Path) -> None:
    root = _sysfs(tmp_path, {}, ["PNP0C0C:00"], ("QEMU0002:00", "serial8250"))
    assert coldplug.wanted(coldplug.Devices(root), notify_given=False) == ["button", "evdev", "qemu_fw_cfg"]


def test_no_sysfs_and_unreadable_entries_mean_no_devices(tmp_path: Path) -> None:
    assert coldplug.wanted(coldplug.Devices(Root(tmp_path)), notify_given=False) == []
    root = _sysfs(tmp_path, {"virtio0": "garbage"}, [])
    (tmp_path / "sys/bus/virtio/devices/virtio1").mkdir()  # no device file
    assert coldplug.Devices(root).virtio == set()
