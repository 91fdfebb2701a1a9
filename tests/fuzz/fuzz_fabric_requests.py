"""Fuzz target: fm-controller's request validation (guestinit.fabric.validate) on arbitrary bytes.

The bytes are decoded as each request message of the API, as the gRPC server would; a message
that decodes is validated. Decoding may fail (DecodeError) and validation may refuse
(InvalidRequest, with a short message), but nothing else may happen, and what validation accepts
keeps its promises: ids in range, each once, at most FM_MAX_FABRIC_PARTITIONS, one id exactly for
a PartitionRequest, which must carry one.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.message import DecodeError

from guestinit.fabric import api, protogen, statuses
from guestinit.fabric.nvfm.layout import FM_MAX_FABRIC_PARTITIONS
from guestinit.fabric.validate import MAX_PARTITION_ID, InvalidRequest, validate

protogen.ensure()  # a fresh clone has no generated modules yet
_pb = api.messages()
REQUEST_TYPES: list[Any] = [
    _pb.PartitionRequest,
    _pb.SetActivatedRequest,
    _pb.ListPartitionsRequest,
    _pb.WatchRequest,
    _pb.Empty,
]

SEEDS: list[bytes] = [
    _pb.PartitionRequest(id=3).SerializeToString(),
    _pb.PartitionRequest(id=0).SerializeToString(),  # present, and zero
    _pb.SetActivatedRequest(ids=[7, 8, 14]).SerializeToString(),  # packed
    b"\x08\x01\x08\x05",  # the same ids unpacked, as an old encoder may send them
    b"",
]


def TestOneInput(data: bytes) -> None:
    for message_type in REQUEST_TYPES:
        try:
            request = message_type.FromString(data)
        except DecodeError:
            continue
        try:
            ids = validate(request)
        except InvalidRequest as exc:
            assert len(str(exc).encode()) <= statuses.MAX_DETAILS, str(exc)[:100]
            continue
        assert all(0 <= i <= MAX_PARTITION_ID for i in ids), ids
        assert len(set(ids)) == len(ids) <= FM_MAX_FABRIC_PARTITIONS
        name = request.DESCRIPTOR.name
        if name == "PartitionRequest":
            assert request.HasField("id") and ids == (request.id,)
        elif name == "SetActivatedRequest":
            assert ids == tuple(request.ids)
        else:
            assert ids == ()
