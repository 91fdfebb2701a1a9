"""The binding itself: ``libnvfm.so.1`` loaded with ctypes, and one fmConnect handle's calls.

Both ``fmConnectParams_t`` versions are spoken: v2 (address types inet, unix, vsock) first, and v1
(inet, unix) when the library answers VERSION_MISMATCH. The library path is a parameter. Thread
safety of the SDK is not documented; callers serialize calls on one connection.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterable

from guestinit.fabric.nvfm.addresses import FMAddress, connect_params_v1, connect_params_v2
from guestinit.fabric.nvfm.layout import (
    ACTIVATED_LIST_VERSION,
    ADDR_TYPE_VSOCK,
    FABRIC_PARTITION_LIST_VERSION,
    FM_MAX_FABRIC_PARTITIONS,
    FM_MAX_NUM_GPUS,
    FM_MAX_NUM_NVLINK_PORTS,
    FM_MAX_NUM_NVSWITCHES,
    NVLINK_FAILED_DEVICES_VERSION,
    UNSUPPORTED_LIST_VERSION,
    ActivatedFabricPartitionList,
    FabricPartitionList,
    NvlinkFailedDeviceInfo,
    NvlinkFailedDevices,
    PciDevice,
    UnsupportedFabricPartitionList,
)
from guestinit.fabric.nvfm.results import (
    FailedDevice,
    FailedDevices,
    Gpu,
    Partition,
    PartitionTable,
    UnsupportedPartition,
)
from guestinit.fabric.nvfm.returncodes import BadParam, FMError, VersionMismatch, check

DEFAULT_LIBRARY = "libnvfm.so.1"
_uint = ctypes.c_uint


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
