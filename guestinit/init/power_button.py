"""The ACPI power button: QEMU's ``system_powerdown`` (a VMM's "shut down" request) reaches the
guest as a KEY_POWER press on the input device the ``button`` driver registers, readable as
/dev/input/eventN once ``evdev`` is loaded. PID 1 reads those devices on its loop and turns
a press into the same clean shutdown as SIGTERM.
"""

from __future__ import annotations

import os
import struct

from guestinit.init.loop import Loop
from guestinit.init.root import Root

TYPE_CHECKING = False  # collections.abc is not imported on the boot path; mypy reads this as usual
if TYPE_CHECKING:
    from collections.abc import Callable

EV_KEY = 1
KEY_POWER = 116
# struct input_event on 64-bit: struct timeval (2 longs), __u16 type, __u16 code, __s32 value
EVENT = struct.Struct("@llHHi")


def has_key(capabilities: str, code: int) -> bool:
    """Whether a sysfs ``capabilities/key`` bitmap (hex words, most significant first, one
    word per kernel long) has bit ``code`` set."""
    words = capabilities.split()
    bits = 8 * struct.calcsize("l")
    index = len(words) - 1 - code // bits
    if index < 0 or index >= len(words):
        return False
    try:
        return bool(int(words[index], 16) >> (code % bits) & 1)
    except ValueError:
        return False


def power_key_devices(root: Root) -> list[str]:
    """Guest paths of the event devices that can report KEY_POWER."""
    found = []
    for entry in root.listdir("/sys/class/input"):
        if not entry.startswith("event"):
            continue
        caps = root.read_text(f"/sys/class/input/{entry}/device/capabilities/key", "")
        if has_key(caps, KEY_POWER) and root.exists(f"/dev/input/{entry}"):
            found.append(f"/dev/input/{entry}")
    return found


class PowerButton:
    """Calls ``on_press(device)`` when a KEY_POWER press arrives on any power-key device."""

    def __init__(self, root: Root, loop: Loop, on_press: Callable[[str], None]) -> None:
        self.root = root
        self.loop = loop
        self.on_press = on_press
        self.fds: dict[int, str] = {}
        self.errors: list[str] = []

    def open(self) -> list[str]:
        for device in power_key_devices(self.root):
            try:
                fd = os.open(self.root(device), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError as exc:
                self.errors.append(f"{device}: {exc}")
                continue
            self.fds[fd] = device
            self.loop.add_reader(fd, lambda fd=fd: self._readable(fd))  # type: ignore[misc]
        return list(self.fds.values())

    def _readable(self, fd: int) -> None:
        try:
            data = os.read(fd, EVENT.size * 64)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.loop.remove_reader(fd)
            os.close(fd)
            self.fds.pop(fd, None)
            return
        for offset in range(0, len(data) - EVENT.size + 1, EVENT.size):
            _sec, _usec, kind, code, value = EVENT.unpack_from(data, offset)
            if kind == EV_KEY and code == KEY_POWER and value == 1:
                self.on_press(self.fds.get(fd, "?"))

    def close(self) -> None:
        for fd in list(self.fds):
            self.loop.remove_reader(fd)
            os.close(fd)
        self.fds.clear()
