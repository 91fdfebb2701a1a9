"""Starting a service's process the way an init must: fork + exec with a clean slate.

The child first moves itself into its service's cgroup (cgroup_fd: the cgroup.procs the
caller opened), so that nothing it ever forks starts outside it. It gets an empty signal mask
and default dispositions (PID 1 blocks its signals for the signalfd, and Python ignores
SIGPIPE: neither may leak into a daemon), a new session, stdin on /dev/null, stdout/stderr on
the pipe init reads, a clean environment, oom_score_adj and RLIMIT_NOFILE set while still
root, then its groups, gid and uid, in that order. An exec failure comes back through a
close-on-exec pipe as a one-line error. The caller registers the pid with the reaper before
returning to the loop, so no exit status is ever lost.
"""

from __future__ import annotations

import os

from guestinit.init.cmodules import signal
from guestinit.init.root import Root

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class SpawnError(OSError):
    """The process could not be started; the message names the step and the cause."""


class Credentials:
    __slots__ = ("gid", "groups", "home", "name", "uid")

    def __init__(self, name: str, uid: int, gid: int, groups: tuple[int, ...], home: str) -> None:
        self.name = name
        self.uid = uid
        self.gid = gid
        self.groups = groups
        self.home = home

    def __repr__(self) -> str:
        return f"Credentials({self.name!r}, uid={self.uid}, gid={self.gid}, groups={self.groups})"


def _table(root: Root, path: str) -> list[list[str]]:
    return [line.split(":") for line in root.read_text(path, "").splitlines() if line and line[0] != "#"]


def resolve(root: Root, user: str, group: str = "") -> Credentials:
    """Look the user and group up in the root's /etc/passwd and /etc/group (numbers are taken
    as they are). Supplementary groups are those /etc/group lists the user in."""
    passwd = _table(root, "/etc/passwd")
    entry = next((e for e in passwd if len(e) >= 7 and e[0] == user), None)
    if entry is None and user.isdigit():
        entry = next((e for e in passwd if len(e) >= 7 and e[2] == user), None)
    if entry is not None:
        name, uid, gid, home = entry[0], int(entry[2]), int(entry[3]), entry[5] or "/"
    elif user.isdigit():
        name, uid, gid, home = user, int(user), int(user), "/"
    else:
        raise SpawnError(f"user {user!r} is not in /etc/passwd: add it to the image or use a number")
    groups_table = _table(root, "/etc/group")
    if group:
        match = next((g for g in groups_table if len(g) >= 3 and g[0] == group), None)
        if match is not None:
            gid = int(match[2])
        elif group.isdigit():
            gid = int(group)
        else:
            raise SpawnError(f"group {group!r} is not in /etc/group: add it to the image or use a number")
    member_of = {
        int(g[2]) for g in groups_table if len(g) >= 4 and g[2].isdigit() and name in g[3].split(",")
    }
    extra = sorted(member_of | {gid})
    return Credentials(name, uid, gid, tuple(extra), home)


def clean_environment(creds: Credentials, extra: dict[str, str]) -> dict[str, str]:
    env = {
        "PATH": DEFAULT_PATH,
        "HOME": creds.home,
        "USER": creds.name,
        "LOGNAME": creds.name,
        "LANG": "C.UTF-8",
    }
    env.update(extra)
    return env


def _child(
    argv: tuple[str, ...],
    env: dict[str, str],
    creds: Credentials,
    stdout: int,
    stderr: int,
    errpipe: int,
    oom_score_adj: int | None,
    rlimit_nofile: int | None,
    cwd: str,
    cgroup_fd: int,
) -> None:
    step = "cgroup"
    try:
        if cgroup_fd >= 0:
            os.write(cgroup_fd, str(os.getpid()).encode())
        step = "signal mask"
        signal.pthread_sigmask(signal.SIG_SETMASK, ())
        for sig in signal.valid_signals():
            if sig not in (signal.SIGKILL, signal.SIGSTOP) and signal.getsignal(sig) == signal.SIG_IGN:
                signal.signal(sig, signal.SIG_DFL)
        step = "setsid"
        os.setsid()
        if os.getpriority(os.PRIO_PROCESS, 0) != 0:
            step = "nice"
            os.setpriority(os.PRIO_PROCESS, 0, 0)  # a service starts at the default weight
        step = "stdio"
        null = os.open("/dev/null", os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(stdout, 1)
        os.dup2(stderr, 2)
        if oom_score_adj is not None:
            step = "oom_score_adj"
            fd = os.open("/proc/self/oom_score_adj", os.O_WRONLY)
            os.write(fd, f"{oom_score_adj}\n".encode())
            os.close(fd)
        if rlimit_nofile is not None:
            step = "rlimit_nofile"
            import resource  # already imported by the parent: no import lock taken here

            resource.setrlimit(resource.RLIMIT_NOFILE, (rlimit_nofile, rlimit_nofile))
        step = f"user {creds.name}"
        if os.getuid() == 0:
            os.setgroups(list(creds.groups))
            os.setresgid(creds.gid, creds.gid, creds.gid)
            os.setresuid(creds.uid, creds.uid, creds.uid)
        elif creds.uid != os.getuid():
            raise PermissionError(1, "init is not root and cannot change user")
        step = f"chdir {cwd}"
        os.chdir(cwd)
        os.umask(0o022)
        step = f"exec {argv[0]}"
        os.execve(argv[0], list(argv), env)
    except BaseException as exc:
        try:
            os.write(errpipe, f"{step}: {exc}".encode(errors="replace")[:1000])
        finally:
            os._exit(127)


def spawn(
    argv: tuple[str, ...],
    env: dict[str, str],
    creds: Credentials,
    stdout: int,
    stderr: int,
    oom_score_adj: int | None = None,
    rlimit_nofile: int | None = None,
    cwd: str = "/",
    cgroup_fd: int = -1,
) -> int:
    """Fork and exec; return the pid, or raise SpawnError (the failed child is reaped here).
    With ``cgroup_fd`` (a cgroup.procs opened for writing) the child enters that cgroup first."""
    if rlimit_nofile is not None:
        import resource  # noqa: F401 - imported before fork so the child never imports

    read_end, write_end = os.pipe()  # both close-on-exec
    try:
        # Python 3.12+ warns about fork() while other threads exist (the notify retry
        # thread may): the child only makes system calls before exec, which makes that safe.
        # (A message= filter would compile a regex and import re on the boot path.)
        import warnings  # not before the first service: a boot with none never imports it

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
    except OSError as exc:
        os.close(read_end)
        os.close(write_end)
        raise SpawnError(f"fork for {argv[0]}: {exc}") from None
    if pid == 0:  # pragma: no cover - the child either execs or _exits
        os.close(read_end)
        _child(argv, env, creds, stdout, stderr, write_end, oom_score_adj, rlimit_nofile, cwd, cgroup_fd)
    os.close(write_end)
    chunks = []
    while True:
        chunk = os.read(read_end, 1024)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(read_end)
    if chunks:
        os.waitpid(pid, 0)
        raise SpawnError(b"".join(chunks).decode(errors="replace"))
    return pid
