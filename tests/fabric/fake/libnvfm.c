/* Test double of NVIDIA's libnvfm.so.1: the SDK's documented functions and return codes, talking to
 * fake-nv-fabricmanager (fabricmanager.c) over TCP, a unix socket or vsock, as the real library
 * talks to nv-fabricmanager. State lives in the daemon, so killing and restarting the daemon is a
 * fabricmanager restart: open handles then fail with FM_ST_CONNECTION_NOT_VALID.
 *
 * Knobs (environment, read at fmConnect):
 *   FAKE_NVFM_CONNECT_VERSIONS  which fmConnectParams versions this "library" accepts: "1", "2" or
 *                               "1,2" (default); others get FM_ST_VERSION_MISMATCH, as libraries
 *                               of different releases do.
 *   FAKE_NVFM_TRACE             a file to append one line per fmConnect to (what the caller sent).
 *   FAKE_NVFM_ALLOW_VSOCK=1     really open AF_VSOCK for vsock addresses; by default a vsock
 *                               fmConnect is traced and answered FM_ST_CONNECTION_NOT_VALID, because
 *                               the test machine's own vsock device must never be touched.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "nv_fm_types.h"
#include "protocol.h"

#ifndef AF_VSOCK
#define AF_VSOCK 40
#endif
struct fake_sockaddr_vm {
    unsigned short svm_family, svm_reserved1;
    unsigned int svm_port, svm_cid;
    unsigned char svm_zero[4];
};

#define API __attribute__((visibility("default")))
#define MAX_HANDLES 256
#define HANDLE_MAGIC 0x4e56464dU

struct fm_handle {
    unsigned int magic;
    int fd;
    int dead;
    pthread_mutex_t mu;
};

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static int g_initialized;
static struct fm_handle *g_handles[MAX_HANDLES];

static int accepts_version(int v) {
    const char *env = getenv("FAKE_NVFM_CONNECT_VERSIONS");
    if (!env || !*env) return 1;
    char want = (char)('0' + v);
    for (const char *p = env; *p; p++)
        if (*p == want) return 1;
    return 0;
}

static void trace(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void trace(const char *fmt, ...) {
    const char *path = getenv("FAKE_NVFM_TRACE");
    if (!path || !*path) return;
    FILE *f = fopen(path, "a");
    if (!f) return;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(f, fmt, ap);
    va_end(ap);
    fputc('\n', f);
    fclose(f);
}

static int connect_with_timeout(int fd, const struct sockaddr *sa, socklen_t len, unsigned int timeout_ms) {
    int flags = fcntl(fd, F_GETFL);
    fcntl(fd, F_SETFL, flags | O_NONBLOCK);
    int rc = connect(fd, sa, len);
    if (rc < 0 && errno == EINPROGRESS) {
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        rc = poll(&p, 1, timeout_ms ? (int)timeout_ms : 5000);
        if (rc <= 0) return -1;
        int err = 0;
        socklen_t elen = sizeof(err);
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen);
        rc = err ? -1 : 0;
    }
    fcntl(fd, F_SETFL, flags);
    return rc;
}

static fmReturn_t open_socket(int type, const char *info, unsigned int timeout_ms, int *out) {
    int fd = -1;
    if (type == NV_FM_API_ADDR_TYPE_UNIX) {
        struct sockaddr_un sun = {.sun_family = AF_UNIX};
        if (!*info || strlen(info) >= sizeof(sun.sun_path)) return FM_ST_BADPARAM;
        strcpy(sun.sun_path, info);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) return FM_ST_GENERIC_ERROR;
        if (connect_with_timeout(fd, (struct sockaddr *)&sun, sizeof(sun), timeout_ms) < 0) goto unreachable;
    } else if (type == NV_FM_API_ADDR_TYPE_VSOCK) {
        unsigned int cid, port;
        char tail;
        if (sscanf(info, "%u:%u%c", &cid, &port, &tail) != 2) return FM_ST_BADPARAM;
        const char *allow = getenv("FAKE_NVFM_ALLOW_VSOCK");
        if (!allow || strcmp(allow, "1")) return FM_ST_CONNECTION_NOT_VALID;
        struct fake_sockaddr_vm svm = {.svm_family = AF_VSOCK, .svm_port = port, .svm_cid = cid};
        fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) return FM_ST_CONNECTION_NOT_VALID;
        if (connect_with_timeout(fd, (struct sockaddr *)&svm, sizeof(svm), timeout_ms) < 0) goto unreachable;
    } else if (type == NV_FM_API_ADDR_TYPE_INET) {
        char host[FM_MAX_STR_LENGTH];
        unsigned int port = FM_CMD_PORT_NUMBER;
        snprintf(host, sizeof(host), "%s", info);
        char *colon = strrchr(host, ':');
        if (colon) {
            char *end;
            unsigned long p = strtoul(colon + 1, &end, 10);
            if (*end || p == 0 || p > 65535) return FM_ST_BADPARAM;
            port = (unsigned int)p;
            *colon = 0;
        }
        struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
        if (inet_pton(AF_INET, host, &sin.sin_addr) != 1) return FM_ST_BADPARAM;
        fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) return FM_ST_GENERIC_ERROR;
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        if (connect_with_timeout(fd, (struct sockaddr *)&sin, sizeof(sin), timeout_ms) < 0) goto unreachable;
    } else {
        return FM_ST_BADPARAM;
    }
    *out = fd;
    return FM_ST_SUCCESS;
unreachable:
    close(fd);
    return FM_ST_CONNECTION_NOT_VALID;
}

API fmReturn_t fmLibInit(void) {
    pthread_mutex_lock(&g_mu);
    fmReturn_t rc = g_initialized ? FM_ST_IN_USE : FM_ST_SUCCESS;
    g_initialized = 1;
    pthread_mutex_unlock(&g_mu);
    return rc;
}

API fmReturn_t fmLibShutdown(void) {
    pthread_mutex_lock(&g_mu);
    if (!g_initialized) {
        pthread_mutex_unlock(&g_mu);
        return FM_ST_UNINITIALIZED;
    }
    for (int i = 0; i < MAX_HANDLES; i++) {
        if (g_handles[i]) {
            close(g_handles[i]->fd);
            g_handles[i]->magic = 0;
            free(g_handles[i]);
            g_handles[i] = NULL;
        }
    }
    g_initialized = 0;
    pthread_mutex_unlock(&g_mu);
    return FM_ST_SUCCESS;
}

API fmReturn_t fmConnect(fmConnectParams_t *params, fmHandle_t *out) {
    if (!g_initialized) return FM_ST_UNINITIALIZED;
    if (!params || !out) return FM_ST_BADPARAM;
    unsigned int version = params->version;
    int type;
    char info[FM_MAX_STR_LENGTH];
    unsigned int timeout_ms;
    if (version == fmConnectV2Params_version2 && accepts_version(2)) {
        type = params->addressType;
        if (type == NV_FM_API_ADDR_TYPE_UNKNOWN)
            type = params->addressIsUnixSocket ? NV_FM_API_ADDR_TYPE_UNIX : NV_FM_API_ADDR_TYPE_INET;
    } else if (version == fmConnectV1Params_version1 && accepts_version(1)) {
        fmConnectParams_v1 *v1 = (fmConnectParams_v1 *)params;
        type = v1->addressIsUnixSocket ? NV_FM_API_ADDR_TYPE_UNIX : NV_FM_API_ADDR_TYPE_INET;
    } else {
        trace("connect version=0x%08x rejected", version);
        return FM_ST_VERSION_MISMATCH;
    }
    memcpy(info, params->addressInfo, sizeof(info));
    info[sizeof(info) - 1] = 0;
    timeout_ms = params->timeoutMs;
    trace("connect version=0x%08x type=%d address=%s timeout_ms=%u", version, type, info, timeout_ms);
    int fd;
    fmReturn_t rc = open_socket(type, info, timeout_ms, &fd);
    if (rc != FM_ST_SUCCESS) return rc;
    struct fm_handle *h = calloc(1, sizeof(*h));
    if (!h) {
        close(fd);
        return FM_ST_GENERIC_ERROR;
    }
    h->magic = HANDLE_MAGIC;
    h->fd = fd;
    pthread_mutex_init(&h->mu, NULL);
    pthread_mutex_lock(&g_mu);
    int slot = -1;
    for (int i = 0; i < MAX_HANDLES; i++)
        if (!g_handles[i]) {
            slot = i;
            break;
        }
    if (slot < 0) {
        pthread_mutex_unlock(&g_mu);
        close(fd);
        free(h);
        return FM_ST_GENERIC_ERROR;
    }
    g_handles[slot] = h;
    pthread_mutex_unlock(&g_mu);
    *out = h;
    return FM_ST_SUCCESS;
}

static struct fm_handle *lookup(fmHandle_t handle) {
    struct fm_handle *found = NULL;
    pthread_mutex_lock(&g_mu);
    for (int i = 0; i < MAX_HANDLES && handle; i++)
        if (g_handles[i] == handle && g_handles[i]->magic == HANDLE_MAGIC) found = g_handles[i];
    pthread_mutex_unlock(&g_mu);
    return found;
}

API fmReturn_t fmDisconnect(fmHandle_t handle) {
    if (!g_initialized) return FM_ST_UNINITIALIZED;
    pthread_mutex_lock(&g_mu);
    for (int i = 0; i < MAX_HANDLES; i++) {
        if (handle && g_handles[i] == handle) {
            close(g_handles[i]->fd);
            g_handles[i]->magic = 0;
            free(g_handles[i]);
            g_handles[i] = NULL;
            pthread_mutex_unlock(&g_mu);
            return FM_ST_SUCCESS;
        }
    }
    pthread_mutex_unlock(&g_mu);
    return FM_ST_BADPARAM;
}

static int io_all(int fd, void *buf, size_t len, int writing) {
    char *p = buf;
    while (len) {
        ssize_t n = writing ? send(fd, p, len, MSG_NOSIGNAL) : recv(fd, p, len, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* One request/reply exchange; `out` receives exactly `out_len` bytes when the daemon answers 0. */
static fmReturn_t call(fmHandle_t handle, uint32_t op, uint32_t arg, const void *in, uint32_t in_len, void *out,
                       uint32_t out_len) {
    if (!g_initialized) return FM_ST_UNINITIALIZED;
    struct fm_handle *h = lookup(handle);
    if (!h) return FM_ST_BADPARAM;
    pthread_mutex_lock(&h->mu);
    fmReturn_t rc = FM_ST_CONNECTION_NOT_VALID;
    struct fake_request req = {.op = op, .arg = arg, .len = in_len};
    struct fake_reply rep;
    if (h->dead) goto out;
    if (io_all(h->fd, &req, sizeof(req), 1) || (in_len && io_all(h->fd, (void *)in, in_len, 1))) goto broken;
    if (io_all(h->fd, &rep, sizeof(rep), 0)) goto broken;
    if (rep.len) {
        if (rep.len != out_len || !out) goto broken;
        if (io_all(h->fd, out, out_len, 0)) goto broken;
    }
    rc = (fmReturn_t)rep.rc;
    goto out;
broken:
    h->dead = 1;
out:
    pthread_mutex_unlock(&h->mu);
    return rc;
}

API fmReturn_t fmGetSupportedFabricPartitions(fmHandle_t handle, fmFabricPartitionList_t *list) {
    if (!g_initialized) return FM_ST_UNINITIALIZED;
    if (!list) return FM_ST_BADPARAM;
    if (list->version != fmFabricPartitionList_version) return FM_ST_VERSION_MISMATCH;
    return call(handle, OP_LIST, 0, NULL, 0, list, sizeof(*list));
}

API fmReturn_t fmActivateFabricPartition(fmHandle_t handle, fmFabricPartitionId_t id) {
    return call(handle, OP_ACTIVATE, id, NULL, 0, NULL, 0);
}

API fmReturn_t fmActivateFabricPartitionWithVFs(fmHandle_t handle, fmFabricPartitionId_t id, fmPciDevice_t *vfs,
                                                 unsigned int num) {
    if (!g_initialized) return FM_ST_UNINITIALIZED;
    if ((!vfs && num) || num > FM_MAX_NUM_GPUS) return FM_ST_BADPARAM;
    return call(handle, OP_ACTIVATE_VFS, id, vfs, (uint32_t)(num * sizeof(fmPciDevice_t)), NULL, 0);
}

API fmReturn_t fmDeactivateFabricPartition(fmHandle_t handle, fmFabricPartitionId_t id) {
    return call(handle, OP_DEACTIVATE, id, NULL, 0, NULL, 0);
}

API fmReturn_t fmSetActivatedFabricPartitions(fmHandle_t handle, fmActivatedFabricPartitionList_t *list) {
    if (!g_initialized) return FM_ST_UNINITIALIZED;
    if (!list) return FM_ST_BADPARAM;
    if (list->version != fmActivatedFabricPartitionList_version) return FM_ST_VERSION_MISMATCH;
    if (list->numPartitions > FM_MAX_FABRIC_PARTITIONS) return FM_ST_BADPARAM;
    return call(handle, OP_SET_ACTIVATED, 0, list, sizeof(*list), NULL, 0);
}

API fmReturn_t fmGetNvlinkFailedDevices(fmHandle_t handle, fmNvlinkFailedDevices_t *devices) {
    if (!g_initialized) return FM_ST_UNINITIALIZED;
    if (!devices) return FM_ST_BADPARAM;
    if (devices->version != fmNvlinkFailedDevices_version) return FM_ST_VERSION_MISMATCH;
    return call(handle, OP_FAILED_DEVICES, 0, NULL, 0, devices, sizeof(*devices));
}

API fmReturn_t fmGetUnsupportedFabricPartitions(fmHandle_t handle, fmUnsupportedFabricPartitionList_t *list) {
    if (!g_initialized) return FM_ST_UNINITIALIZED;
    if (!list) return FM_ST_BADPARAM;
    if (list->version != fmUnsupportedFabricPartitionList_version) return FM_ST_VERSION_MISMATCH;
    return call(handle, OP_UNSUPPORTED, 0, NULL, 0, list, sizeof(*list));
}
