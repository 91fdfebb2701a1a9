"""A small ttrpc client for kata-agent's grpc.Health service (Check, Version), standard library
only, so it runs on the host (over a Unix socket) and inside a guest (over vsock, e.g. loopback
CID 1) alike:

    python3 ttrpc_client.py unix:/path/agent.sock check
    python3 ttrpc_client.py vsock:1:1024 version

Framing (containerd/ttrpc PROTOCOL.md): 10-byte big-endian header {u32 length, u32 stream id,
u8 type 1=request 2=response, u8 flags}; data is protobuf ttrpc.Request {1 service, 2 method,
3 payload, 4 timeout_nano, 5 metadata} / ttrpc.Response {1 google.rpc.Status {1 code,
2 message}, 2 payload}. Health messages: kata-containers src/libs/protocols/protos/health.proto.
"""

from __future__ import annotations

import socket
import struct
import sys

HEADER = struct.Struct(">IIBB")
TYPE_REQUEST, TYPE_RESPONSE = 1, 2
MAX_DATA = 4 << 20
SERVING = 1


class TtrpcError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"ttrpc status {code}: {message}")
        self.code = code
        self.message = message


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def field_bytes(number: int, data: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(data)) + data


def field_varint(number: int, value: int) -> bytes:
    return varint(number << 3) + varint(value)


def decode(data: bytes) -> dict[int, list[int | bytes]]:
    """Field number -> values (ints for varints, bytes for length-delimited), unknown kept."""
    fields: dict[int, list[int | bytes]] = {}
    pos = 0

    def read_varint() -> int:
        nonlocal pos
        value = shift = 0
        while True:
            if pos >= len(data) or shift > 63:
                raise ValueError("truncated varint")
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value

    while pos < len(data):
        key = read_varint()
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value = read_varint()
        elif wire == 2:
            length = read_varint()
            if pos + length > len(data):
                raise ValueError("truncated field")
            value = data[pos : pos + length]
            pos += length
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value = data[pos : pos + size]
            pos += size
        else:
            raise ValueError(f"wire type {wire}")
        fields.setdefault(number, []).append(value)
    return fields


def request(service: str, method: str, payload: bytes, timeout_nano: int = 0) -> bytes:
    data = field_bytes(1, service.encode()) + field_bytes(2, method.encode()) + field_bytes(3, payload)
    if timeout_nano:
        data += field_varint(4, timeout_nano)
    return data


def frame(stream_id: int, msg_type: int, data: bytes, flags: int = 0) -> bytes:
    return HEADER.pack(len(data), stream_id, msg_type, flags) + data


def connect(address: str, timeout: float = 5.0) -> socket.socket:
    """unix:PATH or vsock:CID:PORT (vsock only where the caller means it: inside a guest)."""
    kind, _, rest = address.partition(":")
    if kind == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target: object = rest
    elif kind == "vsock":
        cid, _, port = rest.partition(":")
        sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        target = (int(cid), int(port))
    else:
        raise ValueError(f"{address}: expected unix:PATH or vsock:CID:PORT")
    sock.settimeout(timeout)
    sock.connect(target)
    return sock


def _read_exact(sock: socket.socket, n: int) -> bytes:
    chunks = []
    while n:
        chunk = sock.recv(n)
        if not chunk:
            raise ConnectionError("connection closed by the agent")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


class Client:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.next_stream = 1

    def call(self, service: str, method: str, payload: bytes, timeout_nano: int = 0) -> bytes:
        stream = self.next_stream
        self.next_stream += 2  # client streams are odd
        self.sock.sendall(frame(stream, TYPE_REQUEST, request(service, method, payload, timeout_nano)))
        while True:
            length, got_stream, msg_type, _flags = HEADER.unpack(_read_exact(self.sock, HEADER.size))
            if length > MAX_DATA:
                raise ValueError(f"frame of {length} bytes")
            data = _read_exact(self.sock, length)
            if got_stream == stream and msg_type == TYPE_RESPONSE:
                break
        response = decode(data)
        status = decode(bytes(response.get(1, [b""])[0]))  # type: ignore[arg-type]
        code = int(status.get(1, [0])[0])  # type: ignore[arg-type]
        if code:
            raise TtrpcError(code, bytes(status.get(2, [b""])[0]).decode())  # type: ignore[arg-type]
        return bytes(response.get(2, [b""])[0])  # type: ignore[arg-type]

    def check(self, service: str = "") -> int:
        """grpc.Health/Check: the ServingStatus (1 = SERVING)."""
        payload = field_bytes(1, service.encode()) if service else b""
        out = decode(self.call("grpc.Health", "Check", payload))
        return int(out.get(1, [0])[0])  # type: ignore[arg-type]

    def version(self) -> tuple[str, str]:
        """grpc.Health/Version: (grpc_version, agent_version)."""
        out = decode(self.call("grpc.Health", "Version", b""))
        grpc_version = bytes(out.get(1, [b""])[0]).decode()  # type: ignore[arg-type]
        agent_version = bytes(out.get(2, [b""])[0]).decode()  # type: ignore[arg-type]
        return grpc_version, agent_version

    def close(self) -> None:
        self.sock.close()


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[1] not in ("check", "version"):
        print("usage: ttrpc_client.py unix:PATH|vsock:CID:PORT check|version", file=sys.stderr)
        return 2
    client = Client(connect(argv[0]))
    try:
        if argv[1] == "check":
            status = client.check()
            print("SERVING" if status == SERVING else f"status {status}")
            return 0 if status == SERVING else 1
        grpc_version, agent_version = client.version()
        print(f"grpc_version={grpc_version} agent_version={agent_version}")
        return 0
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
