"""Notify addresses: one syntax on the guest (guestinit.notify=), in systemd's credential and
on the host (guestctl listen).

Guest-side targets (where the guest sends):
  vsock:CID:PORT, vsock-stream:CID:PORT, vsock-seqpacket:CID:PORT, vsock-dgram:CID:PORT
  serial:NAME          a virtio-serial port by its name (/sys/class/virtio-ports/*/name)
  console              one marked line on /dev/console (the last resort)
  unix:PATH / PATH     an AF_UNIX socket (datagram, as sd_notify(3) sends; stream accepted)
  off                  send nothing
systemd's sd_notify sends to ``vsock:`` as a datagram, falling back to seqpacket where the
kernel has no vsock datagram transport (virtio-vsock has none) and to stream where it has no
seqpacket either; guestinit.init.report does the same and also falls back to stream when a
seqpacket connection is refused. An address starting with ``/`` or ``@`` is an AF_UNIX socket,
for systemd and for us.
"""

from __future__ import annotations

VSOCK_KINDS = ("vsock", "vsock-stream", "vsock-seqpacket", "vsock-dgram")
VMADDR_CID_ANY = 0xFFFFFFFF
VMADDR_CID_HOST = 2


class AddressError(ValueError):
    """An address that cannot be parsed; the message names the input and the accepted forms."""


class Target:
    """A parsed guest-side notify target."""

    __slots__ = ("cid", "kind", "path", "port")

    def __init__(self, kind: str, cid: int = 0, port: int = 0, path: str = "") -> None:
        self.kind = kind
        self.cid = cid
        self.port = port
        self.path = path

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Target) and (self.kind, self.cid, self.port, self.path) == (
            other.kind,
            other.cid,
            other.port,
            other.path,
        )

    def __hash__(self) -> int:
        return hash((self.kind, self.cid, self.port, self.path))

    def __str__(self) -> str:
        if self.kind in VSOCK_KINDS:
            return f"{self.kind}:{self.cid}:{self.port}"
        if self.kind in ("serial", "unix", "unix-dgram"):
            return f"{self.kind}:{self.path}"
        return self.kind

    __repr__ = __str__


FORMS = "vsock[-stream|-seqpacket|-dgram]:CID:PORT, serial:NAME, unix:PATH, console or off"


def _number(text: str, what: str, address: str, limit: int) -> int:
    shown = address if len(address) <= 60 else f"{address[:60]}… ({len(address)} characters)"
    if len(text) > 12:  # 0xFFFFFFFE is 10 characters; never hand int() thousands of digits
        raise AddressError(f"notify address {shown!r}: {what} is not a number of at most 10 digits")
    try:
        value = int(text, 0)
    except ValueError:
        raise AddressError(f"notify address {shown!r}: {what} {text!r} is not a number") from None
    if not 0 <= value <= limit:
        raise AddressError(f"notify address {shown!r}: {what} {value} out of range 0..{limit}")
    return value


def parse_target(address: str) -> Target:
    """Parse a guest-side target; raises AddressError naming the input and the accepted forms."""
    text = address.strip()
    if text in ("console", "off"):
        return Target(text)
    if text.startswith(("/", "@")):
        return Target("unix", path=text)
    kind, sep, rest = text.partition(":")
    if not sep:
        raise AddressError(f"notify address {address!r} not understood: use {FORMS}")
    if kind in VSOCK_KINDS:
        cid_text, sep, port_text = rest.rpartition(":")
        if not sep or not cid_text:
            raise AddressError(f"notify address {address!r}: expected {kind}:CID:PORT")
        # -1 (VMADDR_CID_ANY, VMADDR_PORT_ANY) names no peer to send to
        cid = _number(cid_text, "CID", address, VMADDR_CID_ANY - 1)
        port = _number(port_text, "port", address, 0xFFFFFFFE)
        return Target(kind, cid=cid, port=port)
    if kind == "serial":
        if not rest or "/" in rest:
            raise AddressError(f"notify address {address!r}: expected serial:NAME (a virtio port name)")
        return Target("serial", path=rest)
    if kind in ("unix", "unix-dgram"):
        if not rest:
            raise AddressError(f"notify address {address!r}: expected {kind}:PATH")
        return Target(kind, path=rest)
    raise AddressError(f"notify address {address!r}: unknown kind {kind!r}; use {FORMS}")
