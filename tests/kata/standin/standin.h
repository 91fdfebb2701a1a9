/* kata-agent stand-in: shared declarations (see standin.c). */
#ifndef STANDIN_H
#define STANDIN_H

#include <stddef.h>
#include <stdint.h>

#define STANDIN_VERSION "3.99.0"
#define STANDIN_API_VERSION "0.0.1"
#define STANDIN_COMMIT "3.99.0-5a1d5a1d5a1d5a1d5a1d5a1d5a1d5a1d5a1d5a1d"
#define STANDIN_VSOCK_PORT 1024
#define STANDIN_REPORT_MARKER "KATA_STANDIN_REPORT "
#define STANDIN_EXIT_MARKER "KATA_STANDIN_EXIT "

/* A growable byte buffer. */
struct buf {
    char *data;
    size_t len, cap;
};
void buf_put(struct buf *b, const void *data, size_t len);
void buf_str(struct buf *b, const char *s);
void buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void buf_json_string(struct buf *b, const char *s);
void buf_free(struct buf *b);
/* A file's whole text (NULL when it cannot be opened); the caller frees it. */
char *read_text(const char *path);

/* ttrpc server (ttrpc.c): serve until the deadline (monotonic seconds; <0 = forever).
 * Returns 0 at the deadline, -1 on a fatal error. */
int ttrpc_serve(int listen_fd, double deadline);
double monotonic_now(void);

/* cgroups.c: with agent.standin_cgroup=PATH, make a container's cgroup the way the agent
 * does and report it as "cgroup_probe" (null without the key). */
void report_cgroup_probe(struct buf *b, const char *cmdline);

#endif
