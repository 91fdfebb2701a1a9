/* What the kata-agent does with cgroup v2 when it creates a container, done once at start-up
 * so that a test can check an init leaves it room to (kata-containers src/agent/rustjail
 * cgroups/fs, cgroups-rs fs::cgroup create_v2_cgroup):
 *  - the container's cgroup is /sys/fs/cgroup/<the OCI spec's cgroupsPath>, counted from the
 *    root of the cgroup2 mount, not from the agent's own cgroup; a systemd-style path
 *    "slice:prefix:name" becomes "slice/prefix/name" (the agent's cgroupfs driver);
 *  - "+<controller>" for each controller in the root's cgroup.controllers is written to the
 *    root's cgroup.subtree_control and to each intermediate directory's, refusals ignored;
 *  - the directories are created, and the container's first process, forked by the agent in
 *    the agent's own cgroup, is moved in through cgroup.procs;
 *  - the resources are written to the leaf (memory.max, pids.max here).
 * Asked for with agent.standin_cgroup=PATH on the kernel command line (tests only); the
 * report's "cgroup_probe" says what worked. KATA_STANDIN_CGROUP_ROOT moves the root for host
 * tests (a cgroup of the test's own). What it created is removed again, deepest first. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include "standin.h"

#ifndef CGROUP2_SUPER_MAGIC
#define CGROUP2_SUPER_MAGIC 0x63677270
#endif
#define MAX_DEPTH 16

/* A cgroup file's text without its trailing newline. */
static char *slurp(const char *path) {
    char *text = read_text(path);
    size_t n = text ? strlen(text) : 0;
    while (n && (text[n - 1] == '\n' || text[n - 1] == ' ')) text[--n] = 0;
    return text;
}

/* Write text to a cgroup file; 0, or the errno. */
static int put(const char *dir, const char *file, const char *text) {
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/%s", dir, file);
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return errno;
    int err = write(fd, text, strlen(text)) < 0 ? errno : 0;
    close(fd);
    return err;
}

/* "+c" for each controller, one write each, as cgroups-rs does; refusals go to the report. */
static void enable_all(struct buf *refused, const char *dir, const char *controllers) {
    char *list = strdup(controllers), *save = NULL;
    for (char *c = strtok_r(list, " ", &save); c; c = strtok_r(NULL, " ", &save)) {
        char plus[64];
        snprintf(plus, sizeof(plus), "+%s", c);
        int err = put(dir, "cgroup.subtree_control", plus);
        if (err) {
            char what[PATH_MAX + 128];
            snprintf(what, sizeof(what), "%s in %s: %s", c, dir, strerror(err));
            if (refused->len > 1) buf_str(refused, ",");
            buf_json_string(refused, what);
        }
    }
    free(list);
}

static char *cgroups_path_key(const char *cmdline) {
    const char *key = "agent.standin_cgroup=";
    for (const char *p = cmdline; p && (p = strstr(p, key)) != NULL; p += strlen(key)) {
        if (p != cmdline && p[-1] != ' ' && p[-1] != '\n' && p[-1] != '\t') continue;
        p += strlen(key);
        size_t n = strcspn(p, " \n\t");
        char *path = strndup(p, n);
        for (char *c = path; *c; c++)
            if (*c == ':') *c = '/'; /* the cgroupfs driver's reading of "slice:prefix:name" */
        return path;
    }
    return NULL;
}

static void result(struct buf *b, const char *key, int err) {
    buf_str(b, ",\"");
    buf_str(b, key);
    buf_str(b, "\":");
    buf_json_string(b, err ? strerror(err) : "ok");
}

void report_cgroup_probe(struct buf *b, const char *cmdline) {
    buf_str(b, ",\"cgroup_probe\":");
    char *cpath = cgroups_path_key(cmdline);
    if (!cpath) {
        buf_str(b, "null");
        return;
    }
    const char *root = getenv("KATA_STANDIN_CGROUP_ROOT");
    if (!root || !*root) root = "/sys/fs/cgroup";
    struct statfs fs;
    int unified = statfs(root, &fs) == 0 && fs.f_type == CGROUP2_SUPER_MAGIC;
    char *controllers = NULL;
    {
        char p[PATH_MAX];
        snprintf(p, sizeof(p), "%s/cgroup.controllers", root);
        controllers = slurp(p);
    }
    struct buf refused = {0};
    buf_str(&refused, "[");
    if (controllers) enable_all(&refused, root, controllers);

    /* Create the path element by element, enabling controllers in every parent. */
    char made[MAX_DEPTH][PATH_MAX];
    int depth = 0, mkdir_err = 0;
    char dir[PATH_MAX];
    snprintf(dir, sizeof(dir), "%s", root);
    char *elements = strdup(cpath), *save = NULL;
    char *next = NULL;
    for (char *e = strtok_r(elements, "/", &save); e && !mkdir_err; e = next) {
        next = strtok_r(NULL, "/", &save);
        size_t len = strlen(dir);
        snprintf(dir + len, sizeof(dir) - len, "/%s", e);
        if (mkdir(dir, 0755) == 0) {
            if (depth < MAX_DEPTH) snprintf(made[depth++], PATH_MAX, "%s", dir);
        } else if (errno != EEXIST) {
            mkdir_err = errno;
        }
        if (next && !mkdir_err && controllers) enable_all(&refused, dir, controllers);
    }
    free(elements);
    buf_str(&refused, "]");

    buf_str(b, "{\"path\":");
    buf_json_string(b, dir);
    buf_str(b, ",\"unified\":");
    buf_str(b, unified ? "true" : "false");
    buf_str(b, ",\"root_controllers\":");
    buf_json_string(b, controllers);
    buf_str(b, ",\"enable_refused\":");
    buf_str(b, refused.data);
    result(b, "mkdir", mkdir_err);
    if (!mkdir_err) {
        char *leaf_controllers;
        {
            char p[PATH_MAX];
            snprintf(p, sizeof(p), "%s/cgroup.controllers", dir);
            leaf_controllers = slurp(p);
        }
        buf_str(b, ",\"controllers\":");
        buf_json_string(b, leaf_controllers);
        free(leaf_controllers);
        /* The container's first process: forked here, in the agent's cgroup, then moved. */
        pid_t child = fork();
        if (child == 0) {
            for (;;) pause();
        }
        char pid[32];
        snprintf(pid, sizeof(pid), "%d", (int)child);
        result(b, "move", child < 0 ? errno : put(dir, "cgroup.procs", pid));
        if (child > 0) {
            char p[64];
            snprintf(p, sizeof(p), "/proc/%d/cgroup", (int)child);
            char *moved = slurp(p); /* its cgroup2 line, "0::/path" (v1 lines on a hybrid host) */
            char *unified = moved ? (strncmp(moved, "0::", 3) == 0 ? moved : strstr(moved, "\n0::")) : NULL;
            if (unified && *unified == '\n') unified++;
            if (unified) unified[strcspn(unified, "\n")] = 0;
            buf_str(b, ",\"moved_to\":");
            buf_json_string(b, unified ? unified + 3 : NULL);
            free(moved);
            result(b, "memory_max", put(dir, "memory.max", "268435456"));
            result(b, "pids_max", put(dir, "pids.max", "1024"));
            kill(child, SIGKILL);
            waitpid(child, NULL, 0);
        }
    }
    int removed = 1;
    for (int i = depth - 1; i >= 0; i--) {
        for (int tries = 0; rmdir(made[i]) != 0; tries++) {
            if (errno != EBUSY || tries > 200) {
                removed = 0;
                break;
            }
            usleep(5000); /* the killed child leaves its cgroup as it exits */
        }
    }
    buf_str(b, ",\"removed\":");
    buf_str(b, removed ? "true" : "false");
    buf_str(b, "}");
    buf_free(&refused);
    free(controllers);
    free(cpath);
}
