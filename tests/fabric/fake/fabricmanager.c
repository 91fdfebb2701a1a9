/* fake-nv-fabricmanager: a test double of nv-fabricmanager in Shared NVSwitch mode (FABRIC_MODE=1),
 * holding the partition state that the fake libnvfm.so.1 queries. Documented behaviour it keeps:
 *   - it reads the same fabricmanager.cfg keys (FABRIC_MODE, FABRIC_MODE_RESTART, STATE_FILE_NAME,
 *     FM_CMD_BIND_INTERFACE, FM_CMD_PORT_NUMBER, FM_CMD_UNIX_SOCKET_PATH, LOG_FILE_NAME);
 *   - for a moment after start every API call returns FM_ST_NOT_CONFIGURED (initializing);
 *   - activating a partition that is active, or shares a GPU with an active one: FM_ST_IN_USE;
 *   - deactivating a partition that is not active: FM_ST_UNINITIALIZED; unknown ids: FM_ST_BADPARAM;
 *   - started with --restart (or FABRIC_MODE_RESTART=1) it needs its state file and then refuses
 *     list/activate/deactivate (NOT_CONFIGURED) until fmSetActivatedFabricPartitions arrives; if that
 *     does not happen within the window (60 s, scaled down in tests) it exits with status 1;
 *   - fmGetNvlinkFailedDevices is not supported in restart mode;
 *   - partitions containing a missing GPU are not listed but reported as unsupported;
 *   - the default partition tables of an 8-GPU H100/H200 baseboard (ids from 0, 18 NVLinks per GPU
 *     in multi-GPU partitions, none in single-GPU ones) and of a B200 (ids from 1).
 * Requests are served one at a time (single thread), as fabricmanager serializes partition changes.
 *
 * Test knobs (environment): FAKE_FM_PLATFORM=h100|b200, FAKE_FM_INIT_MS (default 300),
 * FAKE_FM_RESTART_WINDOW_MS (default 60000), FAKE_FM_MISSING_GPUS="8,7",
 * FAKE_FM_FAILED="g3:0,1;s2:5" (GPU physical id 3 ports 0,1 and NVSwitch 2 port 5 with failed links),
 * FAKE_FM_ACTIVATE_US (time one activation takes, default 0).
 * The state file is this fake's own text format ("platform h100" / "active 3"), written atomically.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "nv_fm_types.h"
#include "protocol.h"

#define MAX_CLIENTS 128
#define MAX_PARTS 64

struct part {
    unsigned int id, ngpus, gpus[FM_MAX_NUM_GPUS], links;
    int active, supported;
};

static struct part parts[MAX_PARTS];
static int nparts;
static const char *platform = "h100";
static int fabric_mode = 1, restart_mode, awaiting_set;
static char state_file[512] = "/tmp/fabricmanager.state";
static char bind_if[64] = "127.0.0.1";
static unsigned int port = FM_CMD_PORT_NUMBER;
static char unix_path[256];
static char log_file[512];
static long long init_done_ms, restart_deadline_ms;
static unsigned int missing[FM_MAX_NUM_GPUS], nmissing;
static long activate_us;

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
}

static void logmsg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void logmsg(const char *fmt, ...) {
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    fprintf(stderr, "fake-nv-fabricmanager: %s\n", line);
    if (*log_file) {
        FILE *f = fopen(log_file, "a");
        if (f) {
            fprintf(f, "%s\n", line);
            fclose(f);
        }
    }
}

static void add(unsigned int id, unsigned int links, int n, ...) {
    struct part *p = &parts[nparts++];
    memset(p, 0, sizeof(*p));
    p->id = id;
    p->links = links;
    p->ngpus = (unsigned int)n;
    p->supported = 1;
    va_list ap;
    va_start(ap, n);
    for (int i = 0; i < n; i++) p->gpus[i] = va_arg(ap, unsigned int);
    va_end(ap);
}

static void build_table(void) {
    if (!strcmp(platform, "b200")) {
        add(1, 18, 8, 1, 2, 3, 4, 5, 6, 7, 8);
        add(2, 18, 4, 1, 2, 3, 4);
        add(3, 18, 4, 5, 6, 7, 8);
        add(4, 18, 2, 1, 2);
        add(5, 18, 2, 3, 4);
        add(6, 18, 2, 5, 6);
        add(7, 18, 2, 7, 8);
        for (unsigned int g = 1; g <= 8; g++) add(7 + g, 0, 1, g);
    } else {
        add(0, 18, 8, 1, 2, 3, 4, 5, 6, 7, 8);
        add(1, 18, 4, 1, 2, 3, 4);
        add(2, 18, 4, 5, 6, 7, 8);
        add(3, 18, 2, 1, 3);
        add(4, 18, 2, 2, 4);
        add(5, 18, 2, 5, 7);
        add(6, 18, 2, 6, 8);
        for (unsigned int g = 1; g <= 8; g++) add(6 + g, 0, 1, g);
    }
    for (int i = 0; i < nparts; i++)
        for (unsigned int g = 0; g < parts[i].ngpus; g++)
            for (unsigned int m = 0; m < nmissing; m++)
                if (parts[i].gpus[g] == missing[m]) parts[i].supported = 0;
}

static struct part *find(unsigned int id) {
    for (int i = 0; i < nparts; i++)
        if (parts[i].id == id && parts[i].supported) return &parts[i];
    return NULL;
}

static int overlaps(const struct part *a, const struct part *b) {
    for (unsigned int i = 0; i < a->ngpus; i++)
        for (unsigned int j = 0; j < b->ngpus; j++)
            if (a->gpus[i] == b->gpus[j]) return 1;
    return 0;
}

static void save_state(void) {
    char tmp[600];
    snprintf(tmp, sizeof(tmp), "%s.tmp", state_file);
    FILE *f = fopen(tmp, "w");
    if (!f) {
        logmsg("cannot write state file %s: %s", tmp, strerror(errno));
        return;
    }
    fprintf(f, "platform %s\n", platform);
    for (int i = 0; i < nparts; i++)
        if (parts[i].active) fprintf(f, "active %u\n", parts[i].id);
    fflush(f);
    fsync(fileno(f));
    fclose(f);
    rename(tmp, state_file);
}

static void trim(char *s) {
    char *e = s + strlen(s);
    while (e > s && (e[-1] == '\n' || e[-1] == '\r' || e[-1] == ' ' || e[-1] == '\t')) *--e = 0;
}

static void read_config(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "fake-nv-fabricmanager: cannot open config %s: %s\n", path, strerror(errno));
        exit(2);
    }
    char line[1024];
    while (fgets(line, sizeof(line), f)) {
        trim(line);
        if (!*line || *line == '#') continue;
        char *eq = strchr(line, '=');
        if (!eq) continue;
        *eq = 0;
        const char *k = line, *v = eq + 1;
        if (!strcmp(k, "FABRIC_MODE")) fabric_mode = atoi(v);
        else if (!strcmp(k, "FABRIC_MODE_RESTART")) restart_mode = restart_mode || atoi(v) == 1;
        else if (!strcmp(k, "STATE_FILE_NAME")) snprintf(state_file, sizeof(state_file), "%s", v);
        else if (!strcmp(k, "FM_CMD_BIND_INTERFACE")) snprintf(bind_if, sizeof(bind_if), "%s", v);
        else if (!strcmp(k, "FM_CMD_PORT_NUMBER")) port = (unsigned int)atoi(v);
        else if (!strcmp(k, "FM_CMD_UNIX_SOCKET_PATH")) snprintf(unix_path, sizeof(unix_path), "%s", v);
        else if (!strcmp(k, "LOG_FILE_NAME")) snprintf(log_file, sizeof(log_file), "%s", v);
    }
    fclose(f);
}

static int listen_socket(void) {
    int fd;
    if (*unix_path) {
        struct sockaddr_un sun = {.sun_family = AF_UNIX};
        if (strlen(unix_path) >= sizeof(sun.sun_path)) return -1;
        memcpy(sun.sun_path, unix_path, strlen(unix_path) + 1);
        unlink(unix_path);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0 || bind(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0) return -1;
    } else {
        struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
        if (inet_pton(AF_INET, bind_if, &sin.sin_addr) != 1) return -1;
        fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (fd < 0 || bind(fd, (struct sockaddr *)&sin, sizeof(sin)) < 0) return -1;
    }
    if (listen(fd, 64) < 0) return -1;
    return fd;
}

static void load_restart_state(void) {
    FILE *f = fopen(state_file, "r");
    if (!f) {
        logmsg("restart mode: cannot read state file %s: %s", state_file, strerror(errno));
        exit(1);
    }
    char line[256];
    while (fgets(line, sizeof(line), f)) {
        trim(line);
        if (!strncmp(line, "platform ", 9) && strcmp(line + 9, platform)) {
            logmsg("restart mode: state file is for %s, this system is %s", line + 9, platform);
            exit(1);
        }
    }
    fclose(f);
}

static int read_all(int fd, void *buf, size_t len) {
    char *p = buf;
    while (len) {
        ssize_t n = recv(fd, p, len, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static int write_all(int fd, const void *buf, size_t len) {
    const char *p = buf;
    while (len) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static void fill_list(fmFabricPartitionList_t *l) {
    memset(l, 0, sizeof(*l));
    l->version = fmFabricPartitionList_version;
    l->maxNumPartitions = (unsigned int)nparts;
    for (int i = 0; i < nparts; i++) {
        if (!parts[i].supported) continue;
        fmFabricPartitionInfo_t *info = &l->partitionInfo[l->numPartitions++];
        info->partitionId = parts[i].id;
        info->isActive = (unsigned int)parts[i].active;
        info->numGpus = parts[i].ngpus;
        for (unsigned int g = 0; g < parts[i].ngpus; g++) {
            fmFabricPartitionGpuInfo_t *gi = &info->gpuInfo[g];
            gi->physicalId = parts[i].gpus[g];
            /* uuid and pciBusId stay empty: so they are inside a service VM on H100/H200. */
            gi->numNvLinksAvailable = parts[i].links;
            gi->maxNumNvLinks = 18;
            gi->nvlinkLineRateMBps = 26562; /* NVLink 4 per-link rate; not asserted by any test */
        }
    }
}

static void fill_failed(fmNvlinkFailedDevices_t *d) {
    memset(d, 0, sizeof(*d));
    d->version = fmNvlinkFailedDevices_version;
    const char *env = getenv("FAKE_FM_FAILED");
    if (!env) return;
    char buf[512];
    snprintf(buf, sizeof(buf), "%s", env);
    for (char *save = NULL, *item = strtok_r(buf, ";", &save); item; item = strtok_r(NULL, ";", &save)) {
        char kind = item[0];
        unsigned int which = (unsigned int)strtoul(item + 1, NULL, 10);
        char *ports = strchr(item, ':');
        fmNvlinkFailedDeviceInfo_t *info;
        if (kind == 'g' && d->numGpus < FM_MAX_NUM_GPUS) {
            info = &d->gpuInfo[d->numGpus++];
            (void)which; /* GPUs are not identified by uuid/pciBusId inside the service VM */
        } else if (kind == 's' && d->numSwitches < FM_MAX_NUM_NVSWITCHES) {
            info = &d->switchInfo[d->numSwitches++];
            snprintf(info->pciBusId, sizeof(info->pciBusId), "00000000:%02x:00.0", 0x05 + which);
        } else {
            continue;
        }
        for (char *s2 = NULL, *p = ports ? strtok_r(ports + 1, ",", &s2) : NULL; p && info->numPorts < 64;
             p = strtok_r(NULL, ",", &s2))
            info->portNum[info->numPorts++] = (unsigned int)atoi(p);
    }
}

static void fill_unsupported(fmUnsupportedFabricPartitionList_t *u) {
    memset(u, 0, sizeof(*u));
    u->version = fmUnsupportedFabricPartitionList_version;
    for (int i = 0; i < nparts; i++) {
        if (parts[i].supported) continue;
        fmUnsupportedFabricPartitionInfo_t *info = &u->partitionInfo[u->numPartitions++];
        info->partitionId = parts[i].id;
        info->numGpus = parts[i].ngpus;
        memcpy(info->gpuPhysicalIds, parts[i].gpus, sizeof(info->gpuPhysicalIds));
    }
}

static int32_t activate(unsigned int id) {
    struct part *p = find(id);
    if (!p) return FM_ST_BADPARAM;
    if (p->active) return FM_ST_IN_USE;
    for (int i = 0; i < nparts; i++)
        if (parts[i].active && overlaps(&parts[i], p)) return FM_ST_IN_USE;
    if (activate_us) usleep((useconds_t)activate_us);
    p->active = 1;
    save_state();
    logmsg("partition %u activated", id);
    return FM_ST_SUCCESS;
}

static int32_t set_activated(const fmActivatedFabricPartitionList_t *l) {
    if (l->version != fmActivatedFabricPartitionList_version || l->numPartitions > FM_MAX_FABRIC_PARTITIONS)
        return FM_ST_BADPARAM;
    for (unsigned int i = 0; i < l->numPartitions; i++) {
        struct part *p = find(l->partitionIds[i]);
        if (!p) return FM_ST_BADPARAM;
        for (unsigned int j = 0; j < i; j++) {
            struct part *q = find(l->partitionIds[j]);
            if (q == p || overlaps(p, q)) return FM_ST_BADPARAM;
        }
    }
    for (int i = 0; i < nparts; i++) parts[i].active = 0;
    for (unsigned int i = 0; i < l->numPartitions; i++) find(l->partitionIds[i])->active = 1;
    awaiting_set = 0;
    save_state();
    logmsg("activated partitions set by the client (%u partitions); restart complete", l->numPartitions);
    return FM_ST_SUCCESS;
}

/* Serve one request; -1 when the client went away. */
static int serve(int fd) {
    struct fake_request req;
    static union {
        fmFabricPartitionList_t list;
        fmNvlinkFailedDevices_t failed;
        fmUnsupportedFabricPartitionList_t unsupported;
        fmActivatedFabricPartitionList_t activated;
        fmPciDevice_t vfs[FM_MAX_NUM_GPUS];
    } in, out;
    if (read_all(fd, &req, sizeof(req))) return -1;
    if (req.len > sizeof(in)) return -1;
    if (req.len && read_all(fd, &in, req.len)) return -1;
    struct fake_reply rep = {.rc = FM_ST_SUCCESS, .len = 0};
    int partition_api = req.op != OP_FAILED_DEVICES;
    if (now_ms() < init_done_ms) {
        rep.rc = FM_ST_NOT_CONFIGURED;
    } else if (partition_api && fabric_mode == 0) {
        rep.rc = FM_ST_NOT_SUPPORTED;
    } else if (awaiting_set && req.op != OP_SET_ACTIVATED && req.op != OP_FAILED_DEVICES) {
        rep.rc = FM_ST_NOT_CONFIGURED;
    } else {
        switch (req.op) {
        case OP_LIST:
            fill_list(&out.list);
            rep.len = sizeof(out.list);
            break;
        case OP_ACTIVATE:
            rep.rc = fabric_mode == 1 ? activate(req.arg) : FM_ST_NOT_SUPPORTED;
            break;
        case OP_ACTIVATE_VFS: {
            struct part *p = find(req.arg);
            if (fabric_mode != 2) rep.rc = FM_ST_NOT_SUPPORTED;
            else if (!p || req.len != p->ngpus * sizeof(fmPciDevice_t)) rep.rc = FM_ST_BADPARAM;
            else rep.rc = activate(req.arg);
            break;
        }
        case OP_DEACTIVATE: {
            struct part *p = find(req.arg);
            if (!p) rep.rc = FM_ST_BADPARAM;
            else if (!p->active) rep.rc = FM_ST_UNINITIALIZED;
            else {
                p->active = 0;
                save_state();
                logmsg("partition %u deactivated", req.arg);
            }
            break;
        }
        case OP_SET_ACTIVATED:
            if (req.len != sizeof(in.activated)) rep.rc = FM_ST_BADPARAM;
            else if (!awaiting_set) rep.rc = FM_ST_NOT_SUPPORTED;
            else rep.rc = set_activated(&in.activated);
            break;
        case OP_FAILED_DEVICES:
            if (restart_mode) {
                rep.rc = FM_ST_NOT_SUPPORTED;
            } else {
                fill_failed(&out.failed);
                rep.len = sizeof(out.failed);
            }
            break;
        case OP_UNSUPPORTED:
            fill_unsupported(&out.unsupported);
            rep.len = sizeof(out.unsupported);
            break;
        default:
            rep.rc = FM_ST_NOT_SUPPORTED;
        }
    }
    if (rep.rc != FM_ST_SUCCESS) rep.len = 0;
    if (write_all(fd, &rep, sizeof(rep))) return -1;
    if (rep.len && write_all(fd, &out, rep.len)) return -1;
    return 0;
}

static volatile sig_atomic_t stop;
static void on_signal(int sig) {
    (void)sig;
    stop = 1;
}

int main(int argc, char **argv) {
    const char *config = "/usr/share/nvidia/nvswitch/fabricmanager.cfg";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-c") && i + 1 < argc) config = argv[++i];
        else if (!strcmp(argv[i], "--restart") || !strcmp(argv[i], "-r")) restart_mode = 1;
        else {
            fprintf(stderr, "usage: %s [-c CONFIG] [--restart]\n", argv[0]);
            return 2;
        }
    }
    read_config(config);
    if (getenv("FAKE_FM_PLATFORM")) platform = getenv("FAKE_FM_PLATFORM");
    if (strcmp(platform, "h100") && strcmp(platform, "b200")) {
        fprintf(stderr, "fake-nv-fabricmanager: FAKE_FM_PLATFORM must be h100 or b200\n");
        return 2;
    }
    const char *m = getenv("FAKE_FM_MISSING_GPUS");
    for (char *s = m ? strdup(m) : NULL, *save = NULL, *t = s ? strtok_r(s, ",", &save) : NULL;
         t && nmissing < FM_MAX_NUM_GPUS; t = strtok_r(NULL, ",", &save))
        missing[nmissing++] = (unsigned int)atoi(t);
    activate_us = getenv("FAKE_FM_ACTIVATE_US") ? atol(getenv("FAKE_FM_ACTIVATE_US")) : 0;
    long init_ms = getenv("FAKE_FM_INIT_MS") ? atol(getenv("FAKE_FM_INIT_MS")) : 300;
    long window_ms = getenv("FAKE_FM_RESTART_WINDOW_MS") ? atol(getenv("FAKE_FM_RESTART_WINDOW_MS")) : 60000;
    build_table();
    if (restart_mode) load_restart_state();
    int lfd = listen_socket();
    if (lfd < 0) {
        logmsg("cannot listen on %s: %s", *unix_path ? unix_path : bind_if, strerror(errno));
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    long long start = now_ms();
    init_done_ms = start + init_ms;
    if (restart_mode) {
        awaiting_set = 1;
        restart_deadline_ms = start + window_ms;
        logmsg("started in restart mode (%s); waiting %ld ms for fmSetActivatedFabricPartitions", platform,
               window_ms);
    } else {
        save_state();
        logmsg("started (%s, FABRIC_MODE=%d), listening on %s:%u%s", platform, fabric_mode, bind_if, port,
               *unix_path ? " (unix socket)" : "");
    }
    struct pollfd fds[MAX_CLIENTS + 1];
    int nfds = 1;
    fds[0] = (struct pollfd){.fd = lfd, .events = POLLIN};
    while (!stop) {
        int timeout = 100;
        if (awaiting_set && now_ms() > restart_deadline_ms) {
            logmsg("restart mode: fmSetActivatedFabricPartitions not received within %ld ms; exiting", window_ms);
            return 1;
        }
        int n = poll(fds, (nfds_t)nfds, timeout);
        if (n < 0) continue;
        if (fds[0].revents & POLLIN) {
            int c = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
            if (c >= 0 && nfds <= MAX_CLIENTS) fds[nfds++] = (struct pollfd){.fd = c, .events = POLLIN};
            else if (c >= 0) close(c);
        }
        for (int i = 1; i < nfds; i++) {
            if (!fds[i].revents) continue;
            if (serve(fds[i].fd) < 0) {
                close(fds[i].fd);
                fds[i] = fds[--nfds];
                i--;
            }
        }
    }
    logmsg("stopping on signal");
    if (*unix_path) unlink(unix_path);
    return 0;
}
