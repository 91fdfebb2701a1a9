"""Where the host listens: the address syntax of ``guestctl listen`` and ``Listener``.

vsock:PORT           AF_VSOCK stream on any CID, one message per connection (read to EOF)
vsock-seqpacket:PORT AF_VSOCK seqpacket on any CID, one message per record (systemd's
                     ``vsock-seqpacket:`` and, on virtio-vsock, ``vsock:`` notify addresses)
unix:PATH            a Unix stream socket, one message per connection (read to EOF)
unix-dgram:PATH      a Unix datagram socket, as sd_notify(3) and systemd-notify send
                     (PATH may be @NAME for an abstract socket)
hvsock:UDS_PATH:PORT Firecracker / Cloud Hypervisor hybrid vsock: guest-initiated
                     connections to PORT arrive on the Unix socket UDS_PATH_PORT
serial:PATH          a Unix stream socket that QEMU's virtio-serial chardev connects to;
                     many messages on one stream, each ending with an empty line
console:PATH         a file the guest's serial console is written to (QEMU -serial file:PATH);
                     lines carrying the GUESTINIT-NOTIFY mark, read from the start
"""

from __future__ import annotations

from dataclasses import dataclass

from guestinit.host.errors import UserError
from guestinit.notify.message import decimal

FORMS = (
    "vsock:PORT, vsock-seqpacket:PORT, unix:PATH, unix-dgram:PATH, hvsock:UDS_PATH:PORT, serial:PATH "
    "or console:PATH"
)
KINDS = ("vsock", "vsock-seqpacket", "unix", "unix-dgram", "hvsock", "serial", "console")
VSOCK_KINDS = ("vsock", "vsock-seqpacket")
PATH_KINDS = ("serial", "unix", "unix-dgram", "console")
MAX_PORT = 2**32 - 2  # VMADDR_PORT_ANY (2**32 - 1) is no port to listen on


@dataclass(frozen=True)
class Endpoint:
    kind: str  # one of KINDS
    path: str = ""
    port: int = 0

    def __str__(self) -> str:
        if self.kind in VSOCK_KINDS:
            return f"{self.kind}:{self.port}"
        if self.kind == "hvsock":
            return f"{self.kind}:{self.path}:{self.port}"
        return f"{self.kind}:{self.path}"


def _port(text: str, address: str, form: str) -> int:
    port = decimal(text, MAX_PORT)
    if port is None or port == 0:
        raise UserError(
            f"listen address {address!r}: port {text[:20]!r} is not a decimal number 1..{MAX_PORT}",
            hint=f"use {form}",
        )
    return port


def parse_endpoint(text: str) -> Endpoint:
    """An address of ``FORMS``; UserError naming the input and the forms otherwise."""
    kind, sep, rest = text.partition(":")
    if not sep or not rest:
        raise UserError(f"listen address {text!r} not understood", hint=f"use {FORMS}")
    if kind in PATH_KINDS:
        if "\0" in rest or (rest.startswith("@") and kind != "unix-dgram"):
            raise UserError(f"listen address {text!r}: bad path", hint="use a file system path")
        return Endpoint(kind, path=rest)
    if kind in VSOCK_KINDS:
        return Endpoint(kind, port=_port(rest, text, f"{kind}:PORT"))
    if kind == "hvsock":
        path, sep, port_text = rest.rpartition(":")
        if not sep or not path:
            raise UserError(f"listen address {text!r} not understood", hint="use hvsock:UDS_PATH:PORT")
        return Endpoint("hvsock", path=path, port=_port(port_text, text, "hvsock:UDS_PATH:PORT"))
    raise UserError(f"listen address {text!r}: unknown kind {kind!r}", hint=f"use {FORMS}")
