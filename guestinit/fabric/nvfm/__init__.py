"""NVIDIA's Fabric Manager SDK, ``libnvfm.so.1`` (nv_fm_agent.h, nv_fm_types.h), through ctypes.

One module per duty; this package re-exports what the controller and its users need
(``nvfm.Library``, ``nvfm.FMAddress``, ``nvfm.InUse``, ``nvfm.Partition``, ...):

- :mod:`.layout`: the SDK's structures, constants and version words;
- :mod:`.returncodes`: every fmReturn_t as a named :class:`FMError` subclass;
- :mod:`.addresses`: fabricmanager's address (``HOST[:PORT]``, ``unix:PATH``, ``vsock:CID:PORT``)
  and the fmConnectParams_t that carry it;
- :mod:`.results`: what the calls return, as frozen dataclasses;
- :mod:`.binding`: the loaded library and a connection's calls.
"""

from __future__ import annotations

from guestinit.fabric.nvfm.addresses import (
    AddressError,
    FMAddress,
)
from guestinit.fabric.nvfm.binding import (
    DEFAULT_LIBRARY,
    Connection,
    Library,
    LibraryError,
)
from guestinit.fabric.nvfm.layout import (
    FM_MAX_FABRIC_PARTITIONS,
)
from guestinit.fabric.nvfm.results import (
    FailedDevice,
    FailedDevices,
    Gpu,
    Partition,
    PartitionTable,
    UnsupportedPartition,
)
from guestinit.fabric.nvfm.returncodes import (
    ERRORS,
    BadParam,
    ConnectionNotValid,
    FMError,
    GenericError,
    InUse,
    NotConfigured,
    NotReady,
    NotSupported,
    NvlinkError,
    PartitionExists,
    PartitionIdInUse,
    PartitionIdNameMismatch,
    PartitionIdNotInUse,
    PartitionInsufficientTrunks,
    PartitionMissingSwitches,
    PartitionMiswiredTrunks,
    PartitionNameInUse,
    PartitionNameNotInUse,
    PartitionNetworkConfigError,
    PartitionRouteProgrammingError,
    ResourceBad,
    ResourceExhausted,
    ResourceInUse,
    ResourceNotInUse,
    ResourceNotReady,
    ResourceUsedInAnotherPartition,
    ResourceUsedInThisPartition,
    Timeout,
    Uninitialized,
    VersionMismatch,
    check,
    return_name,
)

__all__ = [
    "DEFAULT_LIBRARY",
    "ERRORS",
    "FM_MAX_FABRIC_PARTITIONS",
    "AddressError",
    "BadParam",
    "Connection",
    "ConnectionNotValid",
    "FMAddress",
    "FMError",
    "FailedDevice",
    "FailedDevices",
    "GenericError",
    "Gpu",
    "InUse",
    "Library",
    "LibraryError",
    "NotConfigured",
    "NotReady",
    "NotSupported",
    "NvlinkError",
    "Partition",
    "PartitionExists",
    "PartitionIdInUse",
    "PartitionIdNameMismatch",
    "PartitionIdNotInUse",
    "PartitionInsufficientTrunks",
    "PartitionMissingSwitches",
    "PartitionMiswiredTrunks",
    "PartitionNameInUse",
    "PartitionNameNotInUse",
    "PartitionNetworkConfigError",
    "PartitionRouteProgrammingError",
    "PartitionTable",
    "ResourceBad",
    "ResourceExhausted",
    "ResourceInUse",
    "ResourceNotInUse",
    "ResourceNotReady",
    "ResourceUsedInAnotherPartition",
    "ResourceUsedInThisPartition",
    "Timeout",
    "Uninitialized",
    "UnsupportedPartition",
    "VersionMismatch",
    "check",
    "return_name",
]
