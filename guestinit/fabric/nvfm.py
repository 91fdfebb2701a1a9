"""ctypes binding of NVIDIA's Fabric Manager SDK, ``libnvfm.so.1`` (nv_fm_agent.h, nv_fm_types.h).

Layouts, version words and return codes follow the SDK headers exactly (see the struct size
checks below). Every non-zero ``fmReturn_t`` becomes a named :class:`FMError` subclass. Both
``fmConnectParams_t`` versions are spoken: v2 (address types inet, unix, vsock) first, and v1
(inet, unix) when the library answers VERSION_MISMATCH. The library path is a parameter.

Thread safety of the SDK is not documented; callers serialize calls on one connection.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

DEFAULT_LIBRARY = "libnvfm.so.1"
FM_CMD_PORT_NUMBER = 6666
FM_MAX_STR_LENGTH = 256
FM_UUID_BUFFER_SIZE = 80
FM_DEVICE_PCI_BUS_ID_BUFFER_SIZE = 32
FM_MAX_NUM_GPUS = 16
FM_MAX_NUM_NVSWITCHES = 12
FM_MAX_FABRIC_PARTITIONS = 64
FM_MAX_NUM_NVLINK_PORTS = 64

# enum nvFmApiAddrTypes
ADDR_TYPE_UNKNOWN = 0
ADDR_TYPE_INET = 1
ADDR_TYPE_UNIX = 2
ADDR_TYPE_VSOCK = 3

_uint = ctypes.c_uint


class PciDevice(ctypes.Structure):
    """fmPciDevice_t"""

    _fields_ = (("domain", _uint), ("bus", _uint), ("device", _uint), ("function", _uint))


class FabricPartitionGpuInfo(ctypes.Structure):
    """fmFabricPartitionGpuInfo_t (128 bytes)"""

    _fields_ = (
        ("physicalId", _uint),
        ("uuid", ctypes.c_char * FM_UUID_BUFFER_SIZE),
        ("pciBusId", ctypes.c_char * FM_DEVICE_PCI_BUS_ID_BUFFER_SIZE),
        ("numNvLinksAvailable", _uint),
        ("maxNumNvLinks", _uint),
        ("nvlinkLineRateMBps", _uint),
    )


class FabricPartitionInfo(ctypes.Structure):
    """fmFabricPartitionInfo_t (2060 bytes)"""

    _fields_ = (
        ("partitionId", _uint),
        ("isActive", _uint),
        ("numGpus", _uint),
        ("gpuInfo", FabricPartitionGpuInfo * FM_MAX_NUM_GPUS),
    )


class FabricPartitionList(ctypes.Structure):
    """fmFabricPartitionList_v2 (131852 bytes)"""

    _fields_ = (
        ("version", _uint),
        ("numPartitions", _uint),
        ("maxNumPartitions", _uint),
        ("partitionInfo", FabricPartitionInfo * FM_MAX_FABRIC_PARTITIONS),
    )


class ActivatedFabricPartitionList(ctypes.Structure):
    """fmActivatedFabricPartitionList_v1 (264 bytes)"""

    _fields_ = (
        ("version", _uint),
        ("numPartitions", _uint),
        ("partitionIds", _uint * FM_MAX_FABRIC_PARTITIONS),
    )


class NvlinkFailedDeviceInfo(ctypes.Structure):
    """fmNvlinkFailedDeviceInfo_t"""

    _fields_ = (
        ("uuid", ctypes.c_char * FM_UUID_BUFFER_SIZE),
        ("pciBusId", ctypes.c_char * FM_DEVICE_PCI_BUS_ID_BUFFER_SIZE),
        ("numPorts", _uint),
        ("portNum", _uint * FM_MAX_NUM_NVLINK_PORTS),
    )


class NvlinkFailedDevices(ctypes.Structure):
    """fmNvlinkFailedDevices_v1 (10428 bytes)"""

    _fields_ = (
        ("version", _uint),
        ("numGpus", _uint),
        ("numSwitches", _uint),
        ("gpuInfo", NvlinkFailedDeviceInfo * FM_MAX_NUM_GPUS),
        ("switchInfo", NvlinkFailedDeviceInfo * FM_MAX_NUM_NVSWITCHES),
    )


class UnsupportedFabricPartitionInfo(ctypes.Structure):
    """fmUnsupportedFabricPartitionInfo_t"""

    _fields_ = (
        ("partitionId", _uint),
        ("numGpus", _uint),
        ("gpuPhysicalIds", _uint * FM_MAX_NUM_GPUS),
    )


class UnsupportedFabricPartitionList(ctypes.Structure):
    """fmUnsupportedFabricPartitionList_v1 (4616 bytes)"""

    _fields_ = (
        ("version", _uint),
        ("numPartitions", _uint),
        ("partitionInfo", UnsupportedFabricPartitionInfo * FM_MAX_FABRIC_PARTITIONS),
    )


class ConnectParamsV1(ctypes.Structure):
    """fmConnectParams_v1 (268 bytes)"""

    _fields_ = (
        ("version", _uint),
        ("addressInfo", ctypes.c_char * FM_MAX_STR_LENGTH),
        ("timeoutMs", _uint),
        ("addressIsUnixSocket", _uint),
    )


class ConnectParamsV2(ctypes.Structure):
    """fmConnectParams_v2 (272 bytes); ``addressType`` is enum nvFmApiAddrTypes (an int)."""

    _fields_ = (
        ("version", _uint),
        ("addressInfo", ctypes.c_char * FM_MAX_STR_LENGTH),
        ("timeoutMs", _uint),
        ("addressIsUnixSocket", _uint),
        ("addressType", ctypes.c_int),
    )


def make_version(struct: type[ctypes.Structure], version: int) -> int:
    """MAKE_FM_PARAM_VERSION(T, v) = sizeof(T) | (v << 24)."""
    return ctypes.sizeof(struct) | (version << 24)


CONNECT_PARAMS_V1 = make_version(ConnectParamsV1, 1)  # 0x0100010C
CONNECT_PARAMS_V2 = make_version(ConnectParamsV2, 2)  # 0x02000110
FABRIC_PARTITION_LIST_VERSION = make_version(FabricPartitionList, 1)  # 0x0102030C
ACTIVATED_LIST_VERSION = make_version(ActivatedFabricPartitionList, 1)  # 0x01000108
NVLINK_FAILED_DEVICES_VERSION = make_version(NvlinkFailedDevices, 1)  # 0x010028BC
UNSUPPORTED_LIST_VERSION = make_version(UnsupportedFabricPartitionList, 1)  # 0x01001208

SIZES = {
    FabricPartitionGpuInfo: 128,
    FabricPartitionInfo: 2060,
    FabricPartitionList: 131852,
    ActivatedFabricPartitionList: 264,
    NvlinkFailedDevices: 10428,
    UnsupportedFabricPartitionList: 4616,
    ConnectParamsV1: 268,
    ConnectParamsV2: 272,
}
for _struct, _size in SIZES.items():
    if ctypes.sizeof(_struct) != _size:  # pragma: no cover - a layout bug, caught at import
        raise ImportError(f"{_struct.__name__} is {ctypes.sizeof(_struct)} bytes, the SDK's is {_size}")


# --- return codes --------------------------------------------------------------------------------


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


# --- addresses -----------------------------------------------------------------------------------


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


# --- results -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Gpu:
    physical_id: int
    uuid: str
    pci_bus_id: str
    nvlinks_available: int
    max_nvlinks: int
    nvlink_line_rate_mbps: int


@dataclass(frozen=True)
class Partition:
    id: int
    active: bool
    gpus: tuple[Gpu, ...]

    @property
    def physical_ids(self) -> tuple[int, ...]:
        return tuple(g.physical_id for g in self.gpus)

    @property
    def nvlinks(self) -> int:
        return sum(g.nvlinks_available for g in self.gpus)


@dataclass(frozen=True)
class PartitionTable:
    partitions: tuple[Partition, ...]
    max_partitions: int

    def get(self, partition_id: int) -> Partition | None:
        for p in self.partitions:
            if p.id == partition_id:
                return p
        return None

    @property
    def active_ids(self) -> tuple[int, ...]:
        return tuple(sorted(p.id for p in self.partitions if p.active))


@dataclass(frozen=True)
class FailedDevice:
    uuid: str
    pci_bus_id: str
    ports: tuple[int, ...]


@dataclass(frozen=True)
class FailedDevices:
    gpus: tuple[FailedDevice, ...]
    switches: tuple[FailedDevice, ...]


@dataclass(frozen=True)
class UnsupportedPartition:
    id: int
    physical_ids: tuple[int, ...]


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def _failed(info: NvlinkFailedDeviceInfo) -> FailedDevice:
    ports = min(info.numPorts, FM_MAX_NUM_NVLINK_PORTS)
    return FailedDevice(_text(info.uuid), _text(info.pciBusId), tuple(info.portNum[:ports]))


# --- the library ---------------------------------------------------------------------------------


class LibraryError(OSError):
    """libnvfm could not be loaded (not installed, wrong path, missing symbols)."""


_FUNCTIONS: tuple[tuple[str, tuple[object, ...]], ...] = (
    ("fmLibInit", ()),
    ("fmLibShutdown", ()),
    ("fmConnect", (ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p))),
    ("fmDisconnect", (ctypes.c_void_p,)),
    ("fmGetSupportedFabricPartitions", (ctypes.c_void_p, ctypes.POINTER(FabricPartitionList))),
    ("fmActivateFabricPartition", (ctypes.c_void_p, _uint)),
    ("fmActivateFabricPartitionWithVFs", (ctypes.c_void_p, _uint, ctypes.POINTER(PciDevice), _uint)),
    ("fmDeactivateFabricPartition", (ctypes.c_void_p, _uint)),
    ("fmSetActivatedFabricPartitions", (ctypes.c_void_p, ctypes.POINTER(ActivatedFabricPartitionList))),
    ("fmGetNvlinkFailedDevices", (ctypes.c_void_p, ctypes.POINTER(NvlinkFailedDevices))),
    ("fmGetUnsupportedFabricPartitions", (ctypes.c_void_p, ctypes.POINTER(UnsupportedFabricPartitionList))),
)


class Library:
    """The loaded SDK. ``init()`` once (fmLibInit), then ``connect()``; ``shutdown()`` at the end."""

    def __init__(self, path: str = DEFAULT_LIBRARY) -> None:
        self.path = path
        try:
            self._lib = ctypes.CDLL(path)
        except OSError as exc:
            raise LibraryError(
                f"cannot load {path}: {exc}; install NVIDIA's fabricmanager (it ships libnvfm.so.1) "
                "or give its path with --libnvfm"
            ) from None
        for name, argtypes in _FUNCTIONS:
            try:
                fn = getattr(self._lib, name)
            except AttributeError:
                raise LibraryError(f"{path} has no {name}(): not NVIDIA's libnvfm.so.1?") from None
            fn.restype = ctypes.c_int
            fn.argtypes = list(argtypes)
        self.initialized = False

    def _call(self, name: str, *args: object) -> int:
        return int(getattr(self._lib, name)(*args))

    def init(self) -> None:
        check(self._call("fmLibInit"), "fmLibInit")
        self.initialized = True

    def shutdown(self) -> None:
        check(self._call("fmLibShutdown"), "fmLibShutdown")
        self.initialized = False

    def connect(
        self, address: FMAddress, timeout_ms: int = 5000, versions: Iterable[int] = (2, 1)
    ) -> Connection:
        """fmConnect with v2 params, falling back to v1 on VERSION_MISMATCH (older libraries)."""
        last: FMError | None = None
        for version in versions:
            params: ctypes.Structure
            if version == 2:
                params = connect_params_v2(address, timeout_ms)
            elif address.kind == ADDR_TYPE_VSOCK and last is not None:
                raise VersionMismatch(
                    "fmConnect", f"{address} needs fmConnectParams_v2 (vsock), which this libnvfm rejects"
                )
            else:
                params = connect_params_v1(address, timeout_ms)
            handle = ctypes.c_void_p()
            code = self._call("fmConnect", ctypes.byref(params), ctypes.byref(handle))
            if code == VersionMismatch.code:
                last = VersionMismatch("fmConnect", f"fmConnectParams_v{version} rejected")
                continue
            check(code, "fmConnect", f"address {address}")
            return Connection(self, handle, address, version)
        assert last is not None
        raise last


class Connection:
    """One fmConnect handle. Methods map 1:1 onto the SDK's partition calls."""

    def __init__(self, library: Library, handle: ctypes.c_void_p, address: FMAddress, version: int) -> None:
        self.library = library
        self.handle = handle
        self.address = address
        self.connect_version = version
        self.closed = False

    def _call(self, name: str, *args: object) -> None:
        check(self.library._call(name, self.handle, *args), name)

    def disconnect(self) -> None:
        if not self.closed:
            self.closed = True
            self._call("fmDisconnect")

    def partitions(self) -> PartitionTable:
        out = FabricPartitionList()
        out.version = FABRIC_PARTITION_LIST_VERSION
        self._call("fmGetSupportedFabricPartitions", ctypes.byref(out))
        parts = []
        for info in out.partitionInfo[: min(out.numPartitions, FM_MAX_FABRIC_PARTITIONS)]:
            gpus = tuple(
                Gpu(
                    g.physicalId,
                    _text(g.uuid),
                    _text(g.pciBusId),
                    g.numNvLinksAvailable,
                    g.maxNumNvLinks,
                    g.nvlinkLineRateMBps,
                )
                for g in info.gpuInfo[: min(info.numGpus, FM_MAX_NUM_GPUS)]
            )
            parts.append(Partition(info.partitionId, bool(info.isActive), gpus))
        return PartitionTable(tuple(parts), out.maxNumPartitions)

    def activate(self, partition_id: int) -> None:
        self._call("fmActivateFabricPartition", _uint(partition_id))

    def activate_with_vfs(self, partition_id: int, vfs: Iterable[tuple[int, int, int, int]]) -> None:
        devices = list(vfs)
        array = (PciDevice * max(len(devices), 1))()
        for slot, (domain, bus, device, function) in zip(array, devices, strict=False):
            slot.domain, slot.bus, slot.device, slot.function = domain, bus, device, function
        self._call("fmActivateFabricPartitionWithVFs", _uint(partition_id), array, _uint(len(devices)))

    def deactivate(self, partition_id: int) -> None:
        self._call("fmDeactivateFabricPartition", _uint(partition_id))

    def set_activated(self, partition_ids: Iterable[int]) -> None:
        ids = list(partition_ids)
        if len(ids) > FM_MAX_FABRIC_PARTITIONS:
            raise BadParam("fmSetActivatedFabricPartitions", f"{len(ids)} partitions, at most 64")
        out = ActivatedFabricPartitionList()
        out.version = ACTIVATED_LIST_VERSION
        out.numPartitions = len(ids)
        for i, pid in enumerate(ids):
            out.partitionIds[i] = pid
        self._call("fmSetActivatedFabricPartitions", ctypes.byref(out))

    def nvlink_failed_devices(self) -> FailedDevices:
        out = NvlinkFailedDevices()
        out.version = NVLINK_FAILED_DEVICES_VERSION
        self._call("fmGetNvlinkFailedDevices", ctypes.byref(out))
        gpus = tuple(_failed(d) for d in out.gpuInfo[: min(out.numGpus, FM_MAX_NUM_GPUS)])
        switches = tuple(_failed(d) for d in out.switchInfo[: min(out.numSwitches, FM_MAX_NUM_NVSWITCHES)])
        return FailedDevices(gpus, switches)

    def unsupported_partitions(self) -> tuple[UnsupportedPartition, ...]:
        out = UnsupportedFabricPartitionList()
        out.version = UNSUPPORTED_LIST_VERSION
        self._call("fmGetUnsupportedFabricPartitions", ctypes.byref(out))
        return tuple(
            UnsupportedPartition(p.partitionId, tuple(p.gpuPhysicalIds[: min(p.numGpus, FM_MAX_NUM_GPUS)]))
            for p in out.partitionInfo[: min(out.numPartitions, FM_MAX_FABRIC_PARTITIONS)]
        )


def library_path_exists(path: str) -> bool:
    """True for a bare soname (the loader searches) or an existing file."""
    return "/" not in path or os.path.exists(path)
