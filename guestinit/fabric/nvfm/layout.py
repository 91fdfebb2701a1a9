"""The SDK's data layouts as ctypes structures (nv_fm_types.h): constants, structures, version words.

Layouts and version words follow the SDK headers exactly; the size table below is checked at
import, so a layout bug stops the import instead of corrupting a call.
"""

from __future__ import annotations

import ctypes

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
