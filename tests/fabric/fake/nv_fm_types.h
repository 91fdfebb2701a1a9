/* The Fabric Manager SDK's types, written from the documented ABI (references §4) for the test
 * double. Layout and version words must equal NVIDIA's nv_fm_types.h; the sizes are checked below
 * and by the Python binding's tests. */
#ifndef FAKE_NV_FM_TYPES_H
#define FAKE_NV_FM_TYPES_H

typedef enum {
    FM_ST_SUCCESS = 0,
    FM_ST_BADPARAM = -1,
    FM_ST_GENERIC_ERROR = -2,
    FM_ST_NOT_SUPPORTED = -3,
    FM_ST_UNINITIALIZED = -4,
    FM_ST_TIMEOUT = -5,
    FM_ST_VERSION_MISMATCH = -6,
    FM_ST_IN_USE = -7,
    FM_ST_NOT_CONFIGURED = -8,
    FM_ST_CONNECTION_NOT_VALID = -9,
    FM_ST_NVLINK_ERROR = -10,
    FM_ST_NOT_READY = -22,
} fmReturn_t;

typedef void *fmHandle_t;
typedef unsigned int fmFabricPartitionId_t;

#define FM_MAX_STR_LENGTH 256
#define FM_UUID_BUFFER_SIZE 80
#define FM_DEVICE_PCI_BUS_ID_BUFFER_SIZE 32
#define FM_MAX_NUM_GPUS 16
#define FM_MAX_NUM_NVSWITCHES 12
#define FM_MAX_FABRIC_PARTITIONS 64
#define FM_MAX_NUM_NVLINK_PORTS 64
#define FM_CMD_PORT_NUMBER 6666
#define MAKE_FM_PARAM_VERSION(T, v) (unsigned int)(sizeof(T) | ((v) << 24))

enum nvFmApiAddrTypes {
    NV_FM_API_ADDR_TYPE_UNKNOWN = 0,
    NV_FM_API_ADDR_TYPE_INET = 1,
    NV_FM_API_ADDR_TYPE_UNIX = 2,
    NV_FM_API_ADDR_TYPE_VSOCK = 3,
};

typedef struct {
    unsigned int version;
    char addressInfo[FM_MAX_STR_LENGTH];
    unsigned int timeoutMs;
    unsigned int addressIsUnixSocket;
} fmConnectParams_v1;

typedef struct {
    unsigned int version;
    char addressInfo[FM_MAX_STR_LENGTH];
    unsigned int timeoutMs;
    unsigned int addressIsUnixSocket;
    enum nvFmApiAddrTypes addressType;
} fmConnectParams_v2;
typedef fmConnectParams_v2 fmConnectParams_t;

typedef struct { unsigned int domain, bus, device, function; } fmPciDevice_t;

typedef struct {
    unsigned int physicalId;
    char uuid[FM_UUID_BUFFER_SIZE];
    char pciBusId[FM_DEVICE_PCI_BUS_ID_BUFFER_SIZE];
    unsigned int numNvLinksAvailable;
    unsigned int maxNumNvLinks;
    unsigned int nvlinkLineRateMBps;
} fmFabricPartitionGpuInfo_t;

typedef struct {
    fmFabricPartitionId_t partitionId;
    unsigned int isActive;
    unsigned int numGpus;
    fmFabricPartitionGpuInfo_t gpuInfo[FM_MAX_NUM_GPUS];
} fmFabricPartitionInfo_t;

typedef struct {
    unsigned int version;
    unsigned int numPartitions;
    unsigned int maxNumPartitions;
    fmFabricPartitionInfo_t partitionInfo[FM_MAX_FABRIC_PARTITIONS];
} fmFabricPartitionList_t;

typedef struct {
    unsigned int version;
    unsigned int numPartitions;
    fmFabricPartitionId_t partitionIds[FM_MAX_FABRIC_PARTITIONS];
} fmActivatedFabricPartitionList_t;

typedef struct {
    char uuid[FM_UUID_BUFFER_SIZE];
    char pciBusId[FM_DEVICE_PCI_BUS_ID_BUFFER_SIZE];
    unsigned int numPorts;
    unsigned int portNum[FM_MAX_NUM_NVLINK_PORTS];
} fmNvlinkFailedDeviceInfo_t;

typedef struct {
    unsigned int version;
    unsigned int numGpus;
    unsigned int numSwitches;
    fmNvlinkFailedDeviceInfo_t gpuInfo[FM_MAX_NUM_GPUS];
    fmNvlinkFailedDeviceInfo_t switchInfo[FM_MAX_NUM_NVSWITCHES];
} fmNvlinkFailedDevices_t;

typedef struct {
    fmFabricPartitionId_t partitionId;
    unsigned int numGpus;
    unsigned int gpuPhysicalIds[FM_MAX_NUM_GPUS];
} fmUnsupportedFabricPartitionInfo_t;

typedef struct {
    unsigned int version;
    unsigned int numPartitions;
    fmUnsupportedFabricPartitionInfo_t partitionInfo[FM_MAX_FABRIC_PARTITIONS];
} fmUnsupportedFabricPartitionList_t;

#define fmConnectV1Params_version1 MAKE_FM_PARAM_VERSION(fmConnectParams_v1, 1)
#define fmConnectV2Params_version2 MAKE_FM_PARAM_VERSION(fmConnectParams_v2, 2)
#define fmFabricPartitionList_version MAKE_FM_PARAM_VERSION(fmFabricPartitionList_t, 1)
#define fmActivatedFabricPartitionList_version MAKE_FM_PARAM_VERSION(fmActivatedFabricPartitionList_t, 1)
#define fmNvlinkFailedDevices_version MAKE_FM_PARAM_VERSION(fmNvlinkFailedDevices_t, 1)
#define fmUnsupportedFabricPartitionList_version MAKE_FM_PARAM_VERSION(fmUnsupportedFabricPartitionList_t, 1)

_Static_assert(sizeof(fmFabricPartitionGpuInfo_t) == 128, "gpu info");
_Static_assert(sizeof(fmFabricPartitionInfo_t) == 2060, "partition info");
_Static_assert(sizeof(fmFabricPartitionList_t) == 131852, "partition list");
_Static_assert(sizeof(fmActivatedFabricPartitionList_t) == 264, "activated list");
_Static_assert(sizeof(fmNvlinkFailedDevices_t) == 10428, "failed devices");
_Static_assert(sizeof(fmUnsupportedFabricPartitionList_t) == 4616, "unsupported list");
_Static_assert(sizeof(fmConnectParams_v1) == 268, "connect v1");
_Static_assert(sizeof(fmConnectParams_v2) == 272, "connect v2");

#endif
