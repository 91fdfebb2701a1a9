"""What a client of fm-controller sees when a call fails: the gRPC status for each of
fabricmanager's return codes, and a status message bounded in size.

A status message travels in a response header (grpc-message); one that outgrows the peer's
header limit turns the whole answer into RESOURCE_EXHAUSTED. So every message the server sends
is cut to :data:`MAX_DETAILS` bytes, saying how much was left out.
"""

from __future__ import annotations

from typing import Any

from guestinit.fabric import nvfm

MAX_DETAILS = 400  # bytes of UTF-8

# fabricmanager's return codes -> the gRPC status a client sees (the SDK's name is in the message).
FM_STATUS: dict[type[nvfm.FMError], str] = {
    nvfm.BadParam: "INVALID_ARGUMENT",
    nvfm.GenericError: "INTERNAL",
    nvfm.NotSupported: "FAILED_PRECONDITION",
    nvfm.Uninitialized: "FAILED_PRECONDITION",
    nvfm.Timeout: "DEADLINE_EXCEEDED",
    nvfm.VersionMismatch: "FAILED_PRECONDITION",
    nvfm.InUse: "FAILED_PRECONDITION",
    nvfm.NotConfigured: "UNAVAILABLE",
    nvfm.ConnectionNotValid: "UNAVAILABLE",
    nvfm.NvlinkError: "ABORTED",
    nvfm.ResourceBad: "NOT_FOUND",
    nvfm.ResourceInUse: "FAILED_PRECONDITION",
    nvfm.ResourceNotInUse: "FAILED_PRECONDITION",
    nvfm.ResourceExhausted: "RESOURCE_EXHAUSTED",
    nvfm.ResourceNotReady: "UNAVAILABLE",
    nvfm.PartitionExists: "ALREADY_EXISTS",
    nvfm.PartitionIdInUse: "ALREADY_EXISTS",
    nvfm.PartitionIdNotInUse: "NOT_FOUND",
    nvfm.PartitionNameInUse: "ALREADY_EXISTS",
    nvfm.PartitionNameNotInUse: "NOT_FOUND",
    nvfm.PartitionIdNameMismatch: "INVALID_ARGUMENT",
    nvfm.NotReady: "UNAVAILABLE",
    nvfm.ResourceUsedInThisPartition: "ALREADY_EXISTS",
    nvfm.ResourceUsedInAnotherPartition: "FAILED_PRECONDITION",
    nvfm.PartitionMiswiredTrunks: "INTERNAL",
    nvfm.PartitionInsufficientTrunks: "INTERNAL",
    nvfm.PartitionMissingSwitches: "INTERNAL",
    nvfm.PartitionNetworkConfigError: "INTERNAL",
    nvfm.PartitionRouteProgrammingError: "INTERNAL",
}


def status_for(exc: nvfm.FMError) -> str:
    return FM_STATUS.get(type(exc), "UNKNOWN")


def bounded(text: str, limit: int = MAX_DETAILS) -> str:
    """``text`` if it fits in ``limit`` bytes of UTF-8, else its start and how much was left out
    (the whole result within ``limit``, cut between characters)."""
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return text
    # the note's length depends on the number in it: reserve room for the widest it can be
    reserve = len(f" ... ({len(data)} bytes left out)".encode())
    keep = data[: max(0, limit - reserve)].decode("utf-8", "ignore")
    left = len(data) - len(keep.encode("utf-8"))
    return f"{keep} ... ({left} bytes left out)"


def abort(context: Any, status: str, message: str) -> None:
    """End the call with the grpc.StatusCode named ``status`` and a bounded message (raises)."""
    import grpc

    context.abort(getattr(grpc.StatusCode, status), bounded(message))
