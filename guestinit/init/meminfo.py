"""The guest's memory at READY, for the host to compare images by: MemTotal and MemAvailable
from /proc/meminfo (KiB), sent with READY. In use = MemTotal - MemAvailable: an initrd's files
stay in RAM (rootfs cannot be reclaimed), a disk image's page cache can be."""

from __future__ import annotations

TYPE_CHECKING = False  # typing is not imported on the boot path; mypy reads this as usual
if TYPE_CHECKING:
    from guestinit.init.root import Root

FIELDS = {"MemTotal:": "X_GUESTINIT_MEM_TOTAL_KIB", "MemAvailable:": "X_GUESTINIT_MEM_AVAILABLE_KIB"}


def ready_fields(root: Root) -> dict[str, str]:
    """The READY keys for the two values (none where /proc/meminfo lacks them)."""
    out = {}
    for line in root.read_text("/proc/meminfo", "").splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in FIELDS and parts[1].isdigit():
            out[FIELDS[parts[0]]] = parts[1]
    return out
