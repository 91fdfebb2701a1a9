"""Where fabricmanager's SDK listens, parsed from the user's text, and the fmConnectParams_t
structures (v1 and v2) that carry it to fmConnect."""

from __future__ import annotations

from dataclasses import dataclass

from guestinit.fabric.nvfm.layout import (
    ADDR_TYPE_INET,
    ADDR_TYPE_UNIX,
    ADDR_TYPE_VSOCK,
    CONNECT_PARAMS_V1,
    CONNECT_PARAMS_V2,
    FM_CMD_PORT_NUMBER,
    ConnectParamsV1,
    ConnectParamsV2,
)


class AddressError(ValueError):
    pass


@dataclass(frozen=True)
class FMAddress:
    """Where fabricmanager's SDK listens: ``HOST[:PORT]``, ``unix:PATH`` (or ``/PATH``) or
    ``vsock:CID:PORT``."""

    kind: int  # ADDR_TYPE_*
    info: str  # addressInfo as the SDK wants it

    @classmethod
    def parse(cls, text: str) -> FMAddress:
        forms = "use HOST[:PORT] (default port 6666), unix:PATH or vsock:CID:PORT"
        text = text.strip()
        if not text:
            raise AddressError(f"fabricmanager address is empty: {forms}")
        if text.startswith("/"):
            return cls(ADDR_TYPE_UNIX, text)
        if text.startswith("unix:"):
            path = text[len("unix:") :]
            if not path.startswith("/"):
                raise AddressError(f"fabricmanager address {text!r}: unix: needs an absolute path")
            return cls(ADDR_TYPE_UNIX, path)
        if text.startswith("vsock:"):
            cid, sep, port = text[len("vsock:") :].partition(":")
            if not sep or not cid.isdigit() or not port.isdigit():
                raise AddressError(f"fabricmanager address {text!r}: expected vsock:CID:PORT")
            return cls(ADDR_TYPE_VSOCK, f"{int(cid)}:{int(port)}")
        text = text.removeprefix("tcp:")
        host, sep, port = text.rpartition(":")
        if not sep:
            host, port = text, str(FM_CMD_PORT_NUMBER)
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise AddressError(f"fabricmanager address {text!r} not understood: {forms}")
        return cls(ADDR_TYPE_INET, f"{host}:{int(port)}")

    def __str__(self) -> str:
        if self.kind == ADDR_TYPE_UNIX:
            return f"unix:{self.info}"
        if self.kind == ADDR_TYPE_VSOCK:
            return f"vsock:{self.info}"
        return self.info


def connect_params_v2(address: FMAddress, timeout_ms: int) -> ConnectParamsV2:
    params = ConnectParamsV2()
    params.version = CONNECT_PARAMS_V2
    params.addressInfo = address.info.encode()
    params.timeoutMs = timeout_ms
    params.addressIsUnixSocket = 1 if address.kind == ADDR_TYPE_UNIX else 0
    params.addressType = address.kind
    return params


def connect_params_v1(address: FMAddress, timeout_ms: int) -> ConnectParamsV1:
    if address.kind == ADDR_TYPE_VSOCK:
        raise AddressError(
            f"fabricmanager address {address}: this libnvfm only speaks fmConnectParams_v1, which has "
            "no vsock addresses; use a TCP or unix: address (or a newer fabricmanager)"
        )
    params = ConnectParamsV1()
    params.version = CONNECT_PARAMS_V1
    params.addressInfo = address.info.encode()
    params.timeoutMs = timeout_ms
    params.addressIsUnixSocket = 1 if address.kind == ADDR_TYPE_UNIX else 0
    return params
