"""The loopback interface: up before any service starts, as NVRC does (daemons such as
fabricmanager listen on 127.0.0.1, and a TCP readiness probe connects there). Without udev
or iproute2 in the image, this is one SIOCSIFFLAGS ioctl."""

from __future__ import annotations

import fcntl
import struct

from guestinit.init.cmodules import socket

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
_IFREQ = struct.Struct("16sH22x")  # struct ifreq: name, then ifr_flags in the union


def interface_up(name: str = "lo") -> bool:
    """Set IFF_UP on an interface; True when it was down before."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        request = _IFREQ.pack(name.encode(), 0)
        flags = _IFREQ.unpack(fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, request))[1]
        if flags & IFF_UP:
            return False
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, _IFREQ.pack(name.encode(), flags | IFF_UP))
        return True
    finally:
        s.close()
