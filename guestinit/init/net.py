"""The guest's network identity: the loopback interface up before any service starts, as
NVRC does (daemons such as fabricmanager listen on 127.0.0.1, and a TCP readiness probe
connects there; without udev or iproute2 in the image, this is one SIOCSIFFLAGS ioctl), the
hostname, and an /etc/resolv.conf for the kata-agent to bind the sandbox's over."""

from __future__ import annotations

import fcntl
import os
import struct

from guestinit.init.cmodules import socket
from guestinit.init.root import Root

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


HOSTNAME_FILE = "/etc/hostname"
RESOLV_CONF = "/etc/resolv.conf"
HOST_NAME_MAX = 64


def hostname_from(root: Root) -> str:
    """The name /etc/hostname gives (its first word), else ``localhost``: what the kata-agent's
    own init mode sets, so an agent that is not PID 1 finds the same."""
    words = root.read_text(HOSTNAME_FILE, "").split()
    return words[0] if words else "localhost"


def set_hostname(root: Root) -> str:
    """Set the kernel's hostname from the root's /etc/hostname; return it. A bad name raises
    ValueError naming the file and the fix."""
    name = hostname_from(root)
    if len(name.encode()) > HOST_NAME_MAX:
        raise ValueError(f"{HOSTNAME_FILE}: {name[:20]!r}... is over {HOST_NAME_MAX} bytes: shorten it")
    if root.is_real and socket.gethostname() != name:
        socket.sethostname(name)
    return name


def ensure_resolv_conf(root: Root) -> bool:
    """An /etc/resolv.conf must exist: the agent bind-mounts the sandbox's DNS configuration
    onto it, and a bind mount needs a target. Created empty (no name servers: the sandbox's
    file replaces it) where the image lacks one; True when it was created. A read-only root
    (the erofs form) must ship it: the image does."""
    if root.exists(RESOLV_CONF):
        return False
    fd = os.open(root(RESOLV_CONF), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    os.close(fd)
    return True
