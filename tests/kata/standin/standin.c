/* kata-agent stand-in: a test double for the real kata-agent, which cannot be downloaded here.
 *
 * Faithful to what an init sees of the real agent (references §2b):
 *  - `--version` / `-v` prints the agent's line (kata-containers src/agent/src/main.rs):
 *    "kata-agent version V (api version: A, commit version: C, type: rust, extra-features: [...])";
 *  - it makes itself a child subreaper (prctl), as the agent does in either mode;
 *  - it listens on vsock port 1024 (VMADDR_CID_ANY) and answers ttrpc grpc.Health/Check with
 *    SERVING and grpc.Health/Version with its version (ttrpc.c);
 *  - as PID 1 it powers the machine off when it exits, as the agent does.
 * What it does for tests: it records what it was started with (one JSON object) on the console,
 * prefixed by KATA_STANDIN_REPORT, and in /run/kata-standin.json; with `agent.standin_exit=N:S`
 * on the kernel command line it exits with status N after S seconds; with
 * `agent.standin_cgroup=PATH` it first makes a container's cgroup as the agent would (cgroups.c).
 *
 * Host unit tests redirect everything it touches through the environment:
 *   KATA_STANDIN_SOCKET   listen on this Unix socket instead of vsock (tests never use vsock)
 *   KATA_STANDIN_CMDLINE  read this instead of /proc/cmdline
 *   KATA_STANDIN_REPORT   write the report here instead of /run/kata-standin.json
 *   KATA_STANDIN_CONSOLE  append the console line here instead of /dev/console
 *   KATA_STANDIN_CGROUP_ROOT  make agent.standin_cgroup's cgroup under this, not /sys/fs/cgroup
 * Built twice: static (like Kata <= 3.32's static musl agent) and with -DSTANDIN_DYNAMIC, linked
 * against libdevmapper and libseccomp (like Kata >= 4.0's glibc agent). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/vm_sockets.h>
#include <net/if.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/reboot.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <unistd.h>

#include "standin.h"

#ifdef STANDIN_DYNAMIC
#include <libdevmapper.h>
#include <seccomp.h>
#define STANDIN_BUILD "dynamic"
#define STANDIN_FEATURES "[\"seccomp\"]"
#else
#define STANDIN_BUILD "static"
#define STANDIN_FEATURES "[]"
#endif

extern char **environ;

/* --- buffers and JSON --- */

void buf_put(struct buf *b, const void *data, size_t len) {
    if (b->len + len + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + len + 1) cap *= 2;
        char *p = realloc(b->data, cap);
        if (!p) abort();
        b->data = p;
        b->cap = cap;
    }
    if (len) memcpy(b->data + b->len, data, len);
    b->len += len;
    b->data[b->len] = 0;
}

void buf_str(struct buf *b, const char *s) { buf_put(b, s, strlen(s)); }

void buf_printf(struct buf *b, const char *fmt, ...) {
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n > 0) buf_put(b, tmp, (size_t)n < sizeof(tmp) ? (size_t)n : sizeof(tmp) - 1);
}

/* A JSON string; bytes outside printable ASCII become \u00XX (always valid JSON, one line). */
void buf_json_string(struct buf *b, const char *s) {
    if (!s) {
        buf_str(b, "null");
        return;
    }
    buf_str(b, "\"");
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') {
            char esc[2] = {'\\', (char)*p};
            buf_put(b, esc, 2);
        } else if (*p < 0x20 || *p >= 0x7f) {
            buf_printf(b, "\\u%04x", *p);
        } else {
            buf_put(b, p, 1);
        }
    }
    buf_str(b, "\"");
}

void buf_free(struct buf *b) {
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

char *read_text(const char *path) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return NULL;
    struct buf b = {0};
    char tmp[4096];
    ssize_t n;
    while ((n = read(fd, tmp, sizeof(tmp))) > 0) buf_put(&b, tmp, (size_t)n);
    close(fd);
    if (!b.data) buf_put(&b, "", 0);
    return b.data;
}

static const char *env_or(const char *name, const char *fallback) {
    const char *v = getenv(name);
    return v && *v ? v : fallback;
}

/* --- what it was started with --- */

static void json_key(struct buf *b, const char *key) {
    if (b->len > 1) buf_str(b, ",");
    buf_json_string(b, key);
    buf_str(b, ":");
}

static void unescape_octal(char *s) { /* mountinfo writes " " as \040 */
    char *w = s;
    for (char *r = s; *r; r++) {
        if (r[0] == '\\' && r[1] >= '0' && r[1] <= '3' && r[2] >= '0' && r[2] <= '7' && r[3] >= '0' &&
            r[3] <= '7') {
            *w++ = (char)((r[1] - '0') * 64 + (r[2] - '0') * 8 + (r[3] - '0'));
            r += 3;
        } else {
            *w++ = *r;
        }
    }
    *w = 0;
}

static void report_mounts(struct buf *b) {
    char *text = read_text("/proc/self/mountinfo");
    buf_str(b, "[");
    int first = 1;
    for (char *line = text ? strtok(text, "\n") : NULL; line; line = strtok(NULL, "\n")) {
        char *fields[6] = {0};
        char *sep = strstr(line, " - ");
        if (!sep) continue;
        *sep = 0;
        char *type = sep + 3, *sp = strchr(type, ' ');
        if (sp) *sp = 0;
        char *save = NULL;
        int i = 0;
        for (char *f = strtok_r(line, " ", &save); f && i < 6; f = strtok_r(NULL, " ", &save)) fields[i++] = f;
        if (i < 5) continue;
        unescape_octal(fields[4]);
        buf_str(b, first ? "{" : ",{");
        first = 0;
        buf_str(b, "\"target\":");
        buf_json_string(b, fields[4]);
        buf_str(b, ",\"type\":");
        buf_json_string(b, type);
        buf_str(b, "}");
    }
    buf_str(b, "]");
    free(text);
}

/* The agent.* keys of the kernel command line (double quotes group a value, as the kernel does). */
static void report_cmdline(struct buf *b, const char *cmdline) {
    buf_str(b, "{");
    int first = 1;
    const char *p = cmdline ? cmdline : "";
    char word[4096];
    while (*p) {
        while (*p == ' ' || *p == '\n' || *p == '\t') p++;
        size_t n = 0;
        int quoted = 0;
        while (*p && (quoted || (*p != ' ' && *p != '\n' && *p != '\t'))) {
            if (*p == '"')
                quoted = !quoted;
            else if (n + 1 < sizeof(word))
                word[n++] = *p;
            p++;
        }
        word[n] = 0;
        if (n < 6 || memcmp(word, "agent.", 6) != 0) continue;
        char *eq = strchr(word, '=');
        if (eq) *eq = 0;
        if (!first) buf_str(b, ",");
        first = 0;
        buf_json_string(b, word);
        buf_str(b, ":");
        buf_json_string(b, eq ? eq + 1 : "");
    }
    buf_str(b, "}");
}

static int lo_is_up(void) {
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return 0;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof(ifr));
    strcpy(ifr.ifr_name, "lo");
    int up = ioctl(fd, SIOCGIFFLAGS, &ifr) == 0 && (ifr.ifr_flags & IFF_UP);
    close(fd);
    return up;
}

static void status_field(struct buf *b, const char *status, const char *name, const char *key) {
    json_key(b, key);
    const char *at = status ? strstr(status, name) : NULL;
    if (!at) {
        buf_str(b, "null");
        return;
    }
    at += strlen(name);
    while (*at == ' ' || *at == '\t') at++;
    char value[64];
    size_t n = 0;
    while (at[n] && at[n] != '\n' && n + 1 < sizeof(value)) {
        value[n] = at[n];
        n++;
    }
    value[n] = 0;
    buf_json_string(b, value);
}

static void report_rlimit(struct buf *b) {
    struct rlimit rl;
    json_key(b, "rlimit_nofile");
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) {
        buf_str(b, "null");
        return;
    }
    buf_str(b, "{\"soft\":");
    buf_printf(b, "%lld", rl.rlim_cur == RLIM_INFINITY ? -1LL : (long long)rl.rlim_cur);
    buf_str(b, ",\"hard\":");
    buf_printf(b, "%lld", rl.rlim_max == RLIM_INFINITY ? -1LL : (long long)rl.rlim_max);
    buf_str(b, "}");
}

static char *build_report(int argc, char **argv, const char *cmdline, const char *listen) {
    struct buf b = {0};
    char tmp[PATH_MAX];
    buf_str(&b, "{");
    json_key(&b, "version");
    buf_json_string(&b, STANDIN_VERSION);
    json_key(&b, "build");
    buf_json_string(&b, STANDIN_BUILD);
    json_key(&b, "pid");
    buf_printf(&b, "%d", getpid());
    json_key(&b, "ppid");
    buf_printf(&b, "%d", getppid());
    json_key(&b, "sid");
    buf_printf(&b, "%d", getsid(0));
    json_key(&b, "pgid");
    buf_printf(&b, "%d", getpgid(0));
    json_key(&b, "uid");
    buf_printf(&b, "%u", getuid());
    json_key(&b, "gid");
    buf_printf(&b, "%u", getgid());
    json_key(&b, "argv");
    buf_str(&b, "[");
    for (int i = 0; i < argc; i++) {
        if (i) buf_str(&b, ",");
        buf_json_string(&b, argv[i]);
    }
    buf_str(&b, "]");
    json_key(&b, "environ");
    buf_str(&b, "{");
    for (char **e = environ; e && *e; e++) {
        char *eq = strchr(*e, '=');
        if (!eq) continue;
        if (e != environ) buf_str(&b, ",");
        *eq = 0;
        buf_json_string(&b, *e);
        *eq = '=';
        buf_str(&b, ":");
        buf_json_string(&b, eq + 1);
    }
    buf_str(&b, "}");
    json_key(&b, "cwd");
    buf_json_string(&b, getcwd(tmp, sizeof(tmp)));
    report_rlimit(&b);
    char *oom = read_text("/proc/self/oom_score_adj");
    json_key(&b, "oom_score_adj");
    if (oom)
        buf_printf(&b, "%d", atoi(oom));
    else
        buf_str(&b, "null");
    free(oom);
    char *cgroup = read_text("/proc/self/cgroup");
    if (cgroup && *cgroup && cgroup[strlen(cgroup) - 1] == '\n') cgroup[strlen(cgroup) - 1] = 0;
    json_key(&b, "cgroup");
    buf_json_string(&b, cgroup);
    free(cgroup);
    json_key(&b, "mounts");
    report_mounts(&b);
    json_key(&b, "hostname");
    buf_json_string(&b, gethostname(tmp, sizeof(tmp)) == 0 ? tmp : NULL);
    json_key(&b, "lo_up");
    buf_str(&b, lo_is_up() ? "true" : "false");
    json_key(&b, "resolv_conf");
    buf_str(&b, access("/etc/resolv.conf", F_OK) == 0 ? "true" : "false");
    json_key(&b, "agent_cmdline");
    report_cmdline(&b, cmdline);
    json_key(&b, "path");
    buf_json_string(&b, getenv("PATH"));
    int subreaper = 0;
    prctl(PR_GET_CHILD_SUBREAPER, &subreaper, 0, 0, 0);
    json_key(&b, "child_subreaper");
    buf_str(&b, subreaper ? "true" : "false");
    char *status = read_text("/proc/self/status");
    status_field(&b, status, "SigBlk:", "sig_blocked");
    status_field(&b, status, "SigIgn:", "sig_ignored");
    status_field(&b, status, "CapEff:", "cap_effective");
    free(status);
    json_key(&b, "stdio");
    buf_str(&b, "[");
    for (int fd = 0; fd < 3; fd++) {
        char link[32];
        snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
        ssize_t n = readlink(link, tmp, sizeof(tmp) - 1);
        if (fd) buf_str(&b, ",");
        if (n >= 0) tmp[n] = 0;
        buf_json_string(&b, n >= 0 ? tmp : NULL);
    }
    buf_str(&b, "]");
    json_key(&b, "listen");
    buf_json_string(&b, listen);
    /* /dev/ptmx: "-> pts/ptmx" when it is the link the agent's init mode makes, else the node */
    json_key(&b, "ptmx");
    ssize_t ptmx = readlink("/dev/ptmx", tmp, sizeof(tmp) - 1);
    struct stat st;
    if (ptmx >= 0) {
        tmp[ptmx] = 0;
        buf_printf(&b, "\"-> %s\"", tmp);
    } else if (stat("/dev/ptmx", &st) == 0 && S_ISCHR(st.st_mode)) {
        buf_printf(&b, "\"char %u:%u\"", major(st.st_rdev), minor(st.st_rdev));
    } else {
        buf_str(&b, "null");
    }
    report_cgroup_probe(&b, cmdline);
#ifdef STANDIN_DYNAMIC
    char dm[64] = "";
    dm_get_library_version(dm, sizeof(dm));
    const struct scmp_version *sv = seccomp_version();
    json_key(&b, "libdevmapper");
    buf_json_string(&b, dm);
    json_key(&b, "libseccomp");
    buf_printf(&b, "\"%u.%u.%u\"", sv->major, sv->minor, sv->micro);
#endif
    buf_str(&b, "}");
    return b.data;
}

static void write_console(const char *line) {
    const char *console = env_or("KATA_STANDIN_CONSOLE", "/dev/console");
    int fd = open(console, O_WRONLY | O_NOCTTY | O_APPEND | O_CLOEXEC | (getenv("KATA_STANDIN_CONSOLE") ? O_CREAT : 0),
                  0644);
    if (fd < 0) {
        fprintf(stderr, "kata-standin: %s: %s\n", console, strerror(errno));
        return;
    }
    size_t len = strlen(line);
    if (write(fd, line, len) != (ssize_t)len) fprintf(stderr, "kata-standin: short write to %s\n", console);
    close(fd);
}

static void write_report_file(const char *json) {
    const char *path = env_or("KATA_STANDIN_REPORT", "/run/kata-standin.json");
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        fprintf(stderr, "kata-standin: %s: %s\n", tmp, strerror(errno));
        return;
    }
    size_t len = strlen(json);
    int ok = write(fd, json, len) == (ssize_t)len && write(fd, "\n", 1) == 1 && fsync(fd) == 0;
    close(fd);
    if (!ok || rename(tmp, path) != 0) fprintf(stderr, "kata-standin: cannot write %s\n", path);
}

/* --- listening --- */

static int listen_socket(char *desc, size_t cap) {
    const char *path = getenv("KATA_STANDIN_SOCKET");
    int fd;
    if (path && *path) {
        struct sockaddr_un sun = {.sun_family = AF_UNIX};
        if (strlen(path) >= sizeof(sun.sun_path)) return -1;
        strcpy(sun.sun_path, path);
        unlink(path);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0 || bind(fd, (struct sockaddr *)&sun, sizeof(sun)) != 0 || listen(fd, 16) != 0) goto fail;
        snprintf(desc, cap, "unix:%s", path);
        return fd;
    }
    fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(desc, cap, "none: no AF_VSOCK (%s)", strerror(errno));
        return -1;
    }
    struct sockaddr_vm svm = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = STANDIN_VSOCK_PORT};
    if (bind(fd, (struct sockaddr *)&svm, sizeof(svm)) != 0 || listen(fd, 16) != 0) goto fail;
    snprintf(desc, cap, "vsock:%u", STANDIN_VSOCK_PORT);
    return fd;
fail:
    snprintf(desc, cap, "none: %s", strerror(errno));
    if (fd >= 0) close(fd);
    return -1;
}

/* agent.standin_exit=N:S (or N): exit status N after S seconds. Returns 1 when present. */
static int exit_key(const char *cmdline, int *status, double *after) {
    const char *key = "agent.standin_exit=";
    const char *p = cmdline;
    while (p && (p = strstr(p, key)) != NULL) {
        if (p == cmdline || p[-1] == ' ' || p[-1] == '\n' || p[-1] == '\t') {
            char *end;
            long n = strtol(p + strlen(key), &end, 10);
            *status = (int)(n & 0xff);
            *after = *end == ':' ? strtod(end + 1, NULL) : 0;
            if (*after < 0) *after = 0;
            return 1;
        }
        p += strlen(key);
    }
    return 0;
}

static int usage_error(const char *arg) {
    fprintf(stderr, "error: unexpected argument '%s' found\n\nUsage: kata-agent [OPTIONS] [COMMAND]\n", arg);
    return 2;
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--version") || !strcmp(argv[i], "-v")) {
            printf("kata-agent version %s (api version: %s, commit version: %s, type: rust, extra-features: %s)\n",
                   STANDIN_VERSION, STANDIN_API_VERSION, STANDIN_COMMIT, STANDIN_FEATURES);
            return 0;
        }
        if (!strcmp(argv[i], "init")) return 0;
        if ((!strcmp(argv[i], "--config") || !strcmp(argv[i], "-c")) && i + 1 < argc) {
            i++;
            continue;
        }
        return usage_error(argv[i]);
    }
    prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    char listen_desc[256];
    int fd = listen_socket(listen_desc, sizeof(listen_desc));
    char *cmdline = read_text(env_or("KATA_STANDIN_CMDLINE", "/proc/cmdline"));
    char *json = build_report(argc, argv, cmdline, listen_desc);
    struct buf line = {0};
    buf_str(&line, STANDIN_REPORT_MARKER);
    buf_str(&line, json);
    buf_str(&line, "\n");
    write_report_file(json);
    write_console(line.data);
    buf_free(&line);
    free(json);

    int status = 0;
    double after = -1;
    int exiting = exit_key(cmdline, &status, &after);
    free(cmdline);
    double deadline = exiting ? monotonic_now() + after : -1;
    if (fd >= 0) {
        if (ttrpc_serve(fd, deadline) != 0) fprintf(stderr, "kata-standin: serving: %s\n", strerror(errno));
    } else if (exiting) {
        double left;
        while ((left = deadline - monotonic_now()) > 0) usleep((useconds_t)(left * 1e6) + 1);
    } else {
        for (;;) pause();
    }
    if (fd >= 0 && getenv("KATA_STANDIN_SOCKET")) unlink(getenv("KATA_STANDIN_SOCKET"));
    if (!exiting) return 1;
    char msg[128];
    snprintf(msg, sizeof(msg), "%sstatus=%d after=%g\n", STANDIN_EXIT_MARKER, status, after);
    write_console(msg);
    if (getpid() == 1) { /* the agent as init powers off when it ends */
        sync();
        reboot(RB_POWER_OFF);
    }
    return status;
}
