"""Bring the loopback interface up: fabricmanager binds its SDK port on 127.0.0.1 and
fm-controller connects there, and an init that does no networking leaves ``lo`` down (the kernel
assigns 127.0.0.1 only once ``lo`` is up). NVRC does the same before starting fabricmanager.

    python3 -m guestinit.fabric.loopback [IFNAME]
"""

from __future__ import annotations

import fcntl
import socket
import struct
import sys

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
_IFREQ = "16sH"


def flags(name: str = "lo") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        raw = fcntl.ioctl(s, SIOCGIFFLAGS, struct.pack(_IFREQ, name.encode(), 0))
    return int(struct.unpack(_IFREQ, raw[: struct.calcsize(_IFREQ)])[1])


def up(name: str = "lo") -> bool:
    """Set IFF_UP; returns True when it had to (False: it already was up)."""
    current = flags(name)
    if current & IFF_UP:
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack(_IFREQ, name.encode(), current | IFF_UP))
    return True


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    name = args[0] if args else "lo"
    try:
        changed = up(name)
    except OSError as exc:
        print(f"loopback: cannot bring {name} up: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"loopback: {name} {'brought up' if changed else 'already up'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
