/* kata-agent stand-in: the ttrpc server side of grpc.Health (Check, Version).
 *
 * Framing (containerd/ttrpc PROTOCOL.md): a 10-byte big-endian header {u32 data length,
 * u32 stream id, u8 type (1 request, 2 response, 3 data), u8 flags}, data at most 4 MiB.
 * A request's data is a protobuf ttrpc.Request {1 service, 2 method, 3 payload,
 * 4 timeout_nano, 5 metadata}; the answer is ttrpc.Response {1 google.rpc.Status {1 code,
 * 2 message}, 2 payload}. Health messages (kata-containers src/libs/protocols/protos/health.proto):
 * CheckRequest {1 service}, HealthCheckResponse {1 status: SERVING = 1},
 * VersionCheckResponse {1 grpc_version, 2 agent_version}. */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "standin.h"

#define HEADER_LEN 10
#define MAX_DATA (4u << 20)
#define MAX_CLIENTS 16
#define TYPE_REQUEST 1
#define TYPE_RESPONSE 2
#define CODE_INVALID_ARGUMENT 3
#define CODE_UNIMPLEMENTED 12

struct client {
    int fd;
    unsigned char header[HEADER_LEN];
    size_t have; /* bytes of header + data read so far */
    unsigned char *data;
    uint32_t length;
};

double monotonic_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* --- protobuf, the few wire types needed --- */

static int read_varint(const unsigned char **p, const unsigned char *end, uint64_t *out) {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (*p >= end) return -1;
        unsigned char c = *(*p)++;
        v |= (uint64_t)(c & 0x7f) << shift;
        if (!(c & 0x80)) {
            *out = v;
            return 0;
        }
    }
    return -1;
}

static void put_varint(struct buf *b, uint64_t v) {
    unsigned char tmp[10];
    size_t n = 0;
    do {
        tmp[n] = (unsigned char)(v & 0x7f);
        v >>= 7;
        if (v) tmp[n] |= 0x80;
        n++;
    } while (v);
    buf_put(b, tmp, n);
}

static void put_bytes(struct buf *b, unsigned field, const void *data, size_t len) {
    put_varint(b, (uint64_t)(field << 3 | 2));
    put_varint(b, len);
    buf_put(b, data, len);
}

struct request {
    char service[256], method[256];
    const unsigned char *payload;
    size_t payload_len;
};

static void copy_field(char *dst, size_t cap, const unsigned char *src, size_t len) {
    if (len >= cap) len = cap - 1;
    memcpy(dst, src, len);
    dst[len] = 0;
}

/* Decode a protobuf message, keeping fields 1..3 as length-delimited values; every other field
 * of a known wire type is skipped (as protobuf does with unknown fields). */
static int decode_request(const unsigned char *p, size_t len, struct request *r) {
    const unsigned char *end = p + len;
    memset(r, 0, sizeof(*r));
    while (p < end) {
        uint64_t key, n;
        if (read_varint(&p, end, &key)) return -1;
        unsigned field = (unsigned)(key >> 3), wire = (unsigned)(key & 7);
        switch (wire) {
        case 0:
            if (read_varint(&p, end, &n)) return -1;
            break;
        case 1:
            if (end - p < 8) return -1;
            p += 8;
            break;
        case 5:
            if (end - p < 4) return -1;
            p += 4;
            break;
        case 2:
            if (read_varint(&p, end, &n) || n > (uint64_t)(end - p)) return -1;
            if (field == 1) copy_field(r->service, sizeof(r->service), p, n);
            if (field == 2) copy_field(r->method, sizeof(r->method), p, n);
            if (field == 3) {
                r->payload = p;
                r->payload_len = n;
            }
            p += n;
            break;
        default:
            return -1;
        }
    }
    return 0;
}

/* --- the service --- */

static void answer(struct buf *resp, const struct request *r, int decoded) {
    struct buf status = {0}, payload = {0};
    struct request check;
    if (!decoded) {
        put_varint(&status, 1 << 3 | 0);
        put_varint(&status, CODE_INVALID_ARGUMENT);
        put_bytes(&status, 2, "cannot decode the request", 25);
    } else if (strcmp(r->service, "grpc.Health") == 0 &&
               (strcmp(r->method, "Check") == 0 || strcmp(r->method, "Version") == 0)) {
        if (decode_request(r->payload, r->payload_len, &check) != 0) {
            put_varint(&status, 1 << 3 | 0);
            put_varint(&status, CODE_INVALID_ARGUMENT);
            put_bytes(&status, 2, "cannot decode CheckRequest", 26);
        } else if (strcmp(r->method, "Check") == 0) {
            put_varint(&payload, 1 << 3 | 0); /* HealthCheckResponse.status = SERVING */
            put_varint(&payload, 1);
        } else {
            put_bytes(&payload, 1, STANDIN_API_VERSION, strlen(STANDIN_API_VERSION));
            put_bytes(&payload, 2, STANDIN_VERSION, strlen(STANDIN_VERSION));
        }
    } else {
        char msg[600];
        int n = snprintf(msg, sizeof(msg), "/%s/%s is not supported", r->service, r->method);
        put_varint(&status, 1 << 3 | 0);
        put_varint(&status, CODE_UNIMPLEMENTED);
        put_bytes(&status, 2, msg, (size_t)n < sizeof(msg) ? (size_t)n : sizeof(msg) - 1);
    }
    put_bytes(resp, 1, status.data ? status.data : "", status.len);
    if (payload.len) put_bytes(resp, 2, payload.data, payload.len);
    buf_free(&status);
    buf_free(&payload);
}

static int write_all(int fd, const void *data, size_t len) {
    const char *p = data;
    while (len) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static int handle_frame(struct client *c) {
    uint32_t stream = (uint32_t)c->header[4] << 24 | (uint32_t)c->header[5] << 16 |
                      (uint32_t)c->header[6] << 8 | c->header[7];
    if (c->header[8] != TYPE_REQUEST) return 0; /* no streams here: data frames are dropped */
    struct request r;
    int decoded = decode_request(c->data, c->length, &r) == 0;
    struct buf resp = {0}, frame = {0};
    answer(&resp, &r, decoded);
    unsigned char h[HEADER_LEN] = {
        (unsigned char)(resp.len >> 24), (unsigned char)(resp.len >> 16), (unsigned char)(resp.len >> 8),
        (unsigned char)resp.len, (unsigned char)(stream >> 24), (unsigned char)(stream >> 16),
        (unsigned char)(stream >> 8), (unsigned char)stream, TYPE_RESPONSE, 0};
    buf_put(&frame, h, HEADER_LEN);
    buf_put(&frame, resp.data, resp.len);
    int rc = write_all(c->fd, frame.data, frame.len);
    buf_free(&resp);
    buf_free(&frame);
    return rc;
}

static void drop(struct client *c) {
    close(c->fd);
    free(c->data);
    memset(c, 0, sizeof(*c));
    c->fd = -1;
}

/* Read what is there; handle each complete frame. Returns -1 when the client is gone or broke
 * the protocol (a frame over 4 MiB). */
static int on_readable(struct client *c) {
    for (;;) {
        ssize_t n;
        if (c->have < HEADER_LEN) {
            n = recv(c->fd, c->header + c->have, HEADER_LEN - c->have, MSG_DONTWAIT);
        } else {
            size_t at = c->have - HEADER_LEN;
            n = recv(c->fd, c->data + at, c->length - at, MSG_DONTWAIT);
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return 0;
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1; /* closed, or an error */
        c->have += (size_t)n;
        if (c->have == HEADER_LEN && !c->data) {
            c->length = (uint32_t)c->header[0] << 24 | (uint32_t)c->header[1] << 16 |
                        (uint32_t)c->header[2] << 8 | c->header[3];
            if (c->length > MAX_DATA) return -1;
            c->data = malloc(c->length ? c->length : 1);
            if (!c->data) return -1;
        }
        if (c->data && c->have == HEADER_LEN + c->length) {
            int rc = handle_frame(c);
            free(c->data);
            c->data = NULL;
            c->have = 0;
            c->length = 0;
            if (rc) return -1;
        }
    }
}

int ttrpc_serve(int listen_fd, double deadline) {
    struct client clients[MAX_CLIENTS];
    for (int i = 0; i < MAX_CLIENTS; i++) {
        memset(&clients[i], 0, sizeof(clients[i]));
        clients[i].fd = -1;
    }
    for (;;) {
        struct pollfd fds[MAX_CLIENTS + 1];
        int n = 0, timeout = -1;
        if (deadline >= 0) {
            double left = deadline - monotonic_now();
            if (left <= 0) return 0;
            timeout = (int)(left * 1000) + 1;
        }
        if (listen_fd >= 0) fds[n++] = (struct pollfd){.fd = listen_fd, .events = POLLIN};
        for (int i = 0; i < MAX_CLIENTS; i++)
            if (clients[i].fd >= 0) fds[n++] = (struct pollfd){.fd = clients[i].fd, .events = POLLIN};
        int ready = poll(fds, (nfds_t)n, timeout);
        if (ready < 0 && errno == EINTR) continue;
        if (ready < 0) return -1;
        for (int k = 0; k < n; k++) {
            if (!fds[k].revents) continue;
            if (fds[k].fd == listen_fd) {
                int fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
                if (fd < 0) continue;
                int slot = -1;
                for (int i = 0; i < MAX_CLIENTS && slot < 0; i++)
                    if (clients[i].fd < 0) slot = i;
                if (slot < 0) {
                    close(fd);
                    continue;
                }
                clients[slot].fd = fd;
                continue;
            }
            for (int i = 0; i < MAX_CLIENTS; i++)
                if (clients[i].fd == fds[k].fd && on_readable(&clients[i]) < 0) drop(&clients[i]);
        }
    }
}
