"""Addresses of fm-controller, in the project's one address vocabulary.

Server (``fm-controller --listen``): ``vsock:PORT`` (any CID; how the host reaches the service VM),
``unix:PATH``, ``tcp:HOST:PORT`` (loopback only unless mutual TLS is configured).
Client (``fmctl --address``): ``vsock:CID:PORT``, ``unix:PATH`` (or ``/PATH``), ``tcp:HOST:PORT``
or ``HOST:PORT``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

DEFAULT_VSOCK_PORT = 6000
DEFAULT_SOCKET = "/run/fm-controller/fm-controller.sock"
VMADDR_CID_ANY = 0xFFFFFFFF

LISTEN_FORMS = "vsock:PORT, unix:PATH or tcp:HOST:PORT"
CLIENT_FORMS = "vsock:CID:PORT, unix:PATH, tcp:HOST:PORT or HOST:PORT"


class EndpointError(ValueError):
    pass


@dataclass(frozen=True)
class Endpoint:
    kind: str  # vsock | unix | tcp
    host: str = ""
    port: int = 0
    path: str = ""
    cid: int = VMADDR_CID_ANY

    def __str__(self) -> str:
        if self.kind == "vsock":
            return f"vsock:{self.port}" if self.cid == VMADDR_CID_ANY else f"vsock:{self.cid}:{self.port}"
        if self.kind == "unix":
            return f"unix:{self.path}"
        return f"tcp:{self.host}:{self.port}"

    @property
    def grpc_target(self) -> str:
        """The address string grpc's add_*_port / channel constructors take (not for vsock)."""
        if self.kind == "unix":
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        if self.kind != "tcp":
            return True
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def _number(text: str, what: str, address: str, forms: str, limit: int = 0xFFFFFFFF) -> int:
    if not text.isdigit() or not 0 <= int(text) <= limit:
        raise EndpointError(
            f"address {address!r}: {what} {text!r} is not a number in 0..{limit}; use {forms}"
        )
    return int(text)


def _host_port(rest: str, address: str, forms: str) -> tuple[str, int]:
    host, sep, port = rest.rpartition(":")
    host = host.strip("[]")
    if not sep or not host:
        raise EndpointError(f"address {address!r}: expected HOST:PORT; use {forms}")
    return host, _number(port, "port", address, forms, 65535)


def parse_listen(address: str) -> Endpoint:
    text = address.strip()
    kind, sep, rest = text.partition(":")
    if not sep or not rest:
        raise EndpointError(f"listen address {address!r} not understood; use {LISTEN_FORMS}")
    if kind == "vsock":
        cid_text, sep, port_text = rest.rpartition(":")
        cid = _number(cid_text, "CID", address, LISTEN_FORMS) if sep else VMADDR_CID_ANY
        return Endpoint("vsock", port=_number(port_text, "port", address, LISTEN_FORMS), cid=cid)
    if kind == "unix":
        if not rest.startswith("/"):
            raise EndpointError(f"listen address {address!r}: unix: needs an absolute path")
        return Endpoint("unix", path=rest)
    if kind == "tcp":
        host, port = _host_port(rest, address, LISTEN_FORMS)
        return Endpoint("tcp", host=host, port=port)
    raise EndpointError(f"listen address {address!r}: unknown kind {kind!r}; use {LISTEN_FORMS}")


def parse_client(address: str) -> Endpoint:
    text = address.strip()
    if text.startswith("/"):
        return Endpoint("unix", path=text)
    kind, sep, rest = text.partition(":")
    if kind == "vsock" and sep:
        cid_text, sep, port_text = rest.partition(":")
        if not sep:
            raise EndpointError(f"address {address!r}: expected vsock:CID:PORT")
        cid = _number(cid_text, "CID", address, CLIENT_FORMS)
        return Endpoint("vsock", cid=cid, port=_number(port_text, "port", address, CLIENT_FORMS))
    if kind == "unix" and sep:
        if not rest.startswith("/"):
            raise EndpointError(f"address {address!r}: unix: needs an absolute path")
        return Endpoint("unix", path=rest)
    if kind == "tcp" and sep:
        text = rest
    host, port = _host_port(text, address, CLIENT_FORMS)
    return Endpoint("tcp", host=host, port=port)
