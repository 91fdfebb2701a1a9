"""fabricmanager's return codes (fmReturn_t) as one exception hierarchy.

Every non-zero code becomes a named :class:`FMError` subclass carrying the SDK's name
(``FM_ST_...``), the call that returned it and what the code means.
"""

from __future__ import annotations

from typing import ClassVar


class FMError(Exception):
    """A non-zero fmReturn_t. ``name`` is the SDK's (FM_ST_...), ``call`` the function that returned it."""

    code: ClassVar[int] = 0
    name: ClassVar[str] = "FM_ST_UNKNOWN"
    meaning: ClassVar[str] = "unknown return code"

    def __init__(self, call: str, detail: str = "", code: int | None = None) -> None:
        self.call = call
        self.detail = detail
        if code is not None and code != type(self).code:
            self.code = code  # type: ignore[misc]
        text = f"{call}: {self.name} ({self.code}): {self.meaning}"
        super().__init__(f"{text}; {detail}" if detail else text)


class BadParam(FMError):
    code, name, meaning = -1, "FM_ST_BADPARAM", "a supplied argument is invalid"


class GenericError(FMError):
    code, name, meaning = -2, "FM_ST_GENERIC_ERROR", "a generic, unspecified error"


class NotSupported(FMError):
    code, name, meaning = -3, "FM_ST_NOT_SUPPORTED", "the operation or feature is not supported or enabled"


class Uninitialized(FMError):
    code, name, meaning = (
        -4,
        "FM_ST_UNINITIALIZED",
        "object is uninitialized (or the partition is not active)",
    )


class Timeout(FMError):
    code, name, meaning = -5, "FM_ST_TIMEOUT", "the operation timed out"


class VersionMismatch(FMError):
    code, name, meaning = -6, "FM_ST_VERSION_MISMATCH", "the library does not understand this struct version"


class InUse(FMError):
    code, name, meaning = -7, "FM_ST_IN_USE", "the resource is in use"


class NotConfigured(FMError):
    code, name, meaning = -8, "FM_ST_NOT_CONFIGURED", "fabricmanager is initializing; retry"


class ConnectionNotValid(FMError):
    code, name, meaning = -9, "FM_ST_CONNECTION_NOT_VALID", "the connection to fabricmanager is not valid"


class NvlinkError(FMError):
    code, name, meaning = -10, "FM_ST_NVLINK_ERROR", "NVLink error or training failure"


class ResourceBad(FMError):
    code, name, meaning = -11, "FM_ST_RESOURCE_BAD", "a referenced resource does not exist"


class ResourceInUse(FMError):
    code, name, meaning = -12, "FM_ST_RESOURCE_IN_USE", "a referenced resource is already in use"


class ResourceNotInUse(FMError):
    code, name, meaning = -13, "FM_ST_RESOURCE_NOT_IN_USE", "a referenced resource is not in use"


class ResourceExhausted(FMError):
    code, name, meaning = -14, "FM_ST_RESOURCE_EXHAUSTED", "not enough of a resource could be allocated"


class ResourceNotReady(FMError):
    code, name, meaning = -15, "FM_ST_RESOURCE_NOT_READY", "a resource is not ready to be used"


class PartitionExists(FMError):
    code, name, meaning = -16, "FM_ST_PARTITION_EXISTS", "the partition already exists"


class PartitionIdInUse(FMError):
    code, name, meaning = -17, "FM_ST_PARTITION_ID_IN_USE", "the partition id is used by another partition"


class PartitionIdNotInUse(FMError):
    code, name, meaning = -18, "FM_ST_PARTITION_ID_NOT_IN_USE", "the partition id could not be found"


class PartitionNameInUse(FMError):
    code, name, meaning = -19, "FM_ST_PARTITION_NAME_IN_USE", "the partition name is already used"


class PartitionNameNotInUse(FMError):
    code, name, meaning = -20, "FM_ST_PARTITION_NAME_NOT_IN_USE", "no partition has that name"


class PartitionIdNameMismatch(FMError):
    code, name, meaning = -21, "FM_ST_PARTITION_ID_NAME_MISMATCH", "id and name refer to different partitions"


class NotReady(FMError):
    code, name, meaning = -22, "FM_ST_NOT_READY", "fabricmanager is not ready to serve API requests"


class ResourceUsedInThisPartition(FMError):
    code, name, meaning = (
        -23,
        "FM_ST_RESOURCE_USED_IN_THIS_PARTITION",
        "resource already used in this partition",
    )


class ResourceUsedInAnotherPartition(FMError):
    code, name, meaning = (
        -24,
        "FM_ST_RESOURCE_USED_IN_ANOTHER_PARTITION",
        "resource used in another partition",
    )


class PartitionMiswiredTrunks(FMError):
    code, name, meaning = -25, "FM_ST_PARTITION_MISWIRED_TRUNKS", "the partition has miswired trunks"


class PartitionInsufficientTrunks(FMError):
    code, name, meaning = -26, "FM_ST_PARTITION_INSUFFICIENT_TRUNKS", "the partition has insufficient trunks"


class PartitionMissingSwitches(FMError):
    code, name, meaning = -27, "FM_ST_PARTITION_MISSING_SWITCHES", "the partition has missing switches"


class PartitionNetworkConfigError(FMError):
    code, name, meaning = -28, "FM_ST_PARTITION_NETWORK_CONFIG_ERROR", "network configuration error"


class PartitionRouteProgrammingError(FMError):
    code, name, meaning = -29, "FM_ST_PARTITION_ROUTE_PROGRAMMING_ERROR", "route programming error"


ERRORS: dict[int, type[FMError]] = {
    cls.code: cls
    for cls in (
        BadParam,
        GenericError,
        NotSupported,
        Uninitialized,
        Timeout,
        VersionMismatch,
        InUse,
        NotConfigured,
        ConnectionNotValid,
        NvlinkError,
        ResourceBad,
        ResourceInUse,
        ResourceNotInUse,
        ResourceExhausted,
        ResourceNotReady,
        PartitionExists,
        PartitionIdInUse,
        PartitionIdNotInUse,
        PartitionNameInUse,
        PartitionNameNotInUse,
        PartitionIdNameMismatch,
        NotReady,
        ResourceUsedInThisPartition,
        ResourceUsedInAnotherPartition,
        PartitionMiswiredTrunks,
        PartitionInsufficientTrunks,
        PartitionMissingSwitches,
        PartitionNetworkConfigError,
        PartitionRouteProgrammingError,
    )
}


def check(code: int, call: str, detail: str = "") -> None:
    """Raise the named error for a non-zero fmReturn_t."""
    if code != 0:
        raise ERRORS.get(code, FMError)(call, detail, code=code)


def return_name(code: int) -> str:
    return "FM_ST_SUCCESS" if code == 0 else ERRORS[code].name if code in ERRORS else f"FM_ST_UNKNOWN({code})"
