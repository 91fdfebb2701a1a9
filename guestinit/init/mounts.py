"""The early mounts PID 1 makes, with NVRC's flags (nosuid, nodev, noexec where they apply).

They are also what the kata-agent's own init mode makes (kata-containers src/agent/src/mount.rs
INIT_ROOTFS_MOUNTS, cgroups_mount), which an agent started as a service expects to find: proc,
sysfs, devtmpfs, /dev/shm, /dev/pts, /run, cgroup2 at /sys/fs/cgroup (nsdelegate, as the agent
mounts it), and /dev/ptmx as a link to pts/ptmx. /tmp is NVRC's."""

from __future__ import annotations

import errno
import os

from guestinit.init import syscalls
from guestinit.init.root import Root

NOSUID, NODEV, NOEXEC = syscalls.MS_NOSUID, syscalls.MS_NODEV, syscalls.MS_NOEXEC

# (source, target, fstype, flags, data, required)
MOUNTS: tuple[tuple[str, str, str, int, str, bool], ...] = (
    ("proc", "/proc", "proc", NOSUID | NODEV | NOEXEC, "", True),
    ("sysfs", "/sys", "sysfs", NOSUID | NODEV | NOEXEC, "", True),
    ("devtmpfs", "/dev", "devtmpfs", NOSUID | NOEXEC, "mode=0755", True),
    ("devpts", "/dev/pts", "devpts", NOSUID | NOEXEC, "gid=5,mode=0620,ptmxmode=0666", False),
    ("tmpfs", "/dev/shm", "tmpfs", NOSUID | NODEV, "mode=1777", False),
    ("tmpfs", "/run", "tmpfs", NOSUID | NODEV, "mode=0755", True),
    ("tmpfs", "/tmp", "tmpfs", NOSUID | NODEV, "mode=1777", True),
    # Always cgroup2 (the agent mounts it only for systemd.unified_cgroup_hierarchy=1 or
    # cgroup_no_v1=all): services get their own cgroups, and the agent makes the containers'.
    # Not required: without it services run, stopped by their process tree (cgroups.setup).
    ("cgroup2", "/sys/fs/cgroup", "cgroup2", NOSUID | NODEV | NOEXEC, "nsdelegate", False),
)
# Mounted only when /proc/filesystems lists them (as NVRC does).
OPTIONAL: tuple[tuple[str, str, str, int], ...] = (
    ("securityfs", "/sys/kernel/security", "securityfs", NOSUID | NODEV | NOEXEC),
    ("configfs", "/sys/kernel/config", "configfs", NOSUID | NODEV | NOEXEC),
)


def mounted_targets(root: Root) -> set[str]:
    text = root.read_text("/proc/self/mounts", "")
    return {line.split()[1] for line in text.splitlines() if len(line.split()) > 2}


def mount_all(root: Root) -> list[str]:
    """Mount what is not mounted yet; return what was mounted. Required mounts raise on failure.

    /proc/self/mounts is read once, and once more right after /proc itself is mounted (before
    that it cannot be read); what we mount is added to the set as we go."""
    done: list[str] = []
    already = mounted_targets(root)
    for source, target, fstype, flags, data, required in MOUNTS:
        if target in already:
            continue
        path = root(target)
        try:
            os.makedirs(path, exist_ok=True)
        except OSError:
            if required:
                raise
            continue  # /sys/fs/cgroup is sysfs's own: missing only without cgroup support
        try:
            syscalls.mount(source, path, fstype, flags, data)
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                continue
            if required:
                raise
            if data:  # an option an older kernel lacks (nsdelegate: Linux 4.13)
                try:
                    syscalls.mount(source, path, fstype, flags)
                    done.append(target)
                except OSError:
                    pass
            continue
        done.append(target)
        already = mounted_targets(root) if target == "/proc" else already | {target}
    filesystems = root.read_text("/proc/filesystems", "")
    available = {line.split()[-1] for line in filesystems.splitlines() if line.strip()}
    for source, target, fstype, flags in OPTIONAL:
        if fstype in available and target not in already and root.exists(target):
            try:
                syscalls.mount(source, root(target), fstype, flags)
                done.append(target)
            except OSError:
                pass
    link_ptmx(root)
    return done


def link_ptmx(root: Root) -> bool:
    """/dev/ptmx -> pts/ptmx, as the agent's init mode makes it: a pseudo-terminal opened
    through /dev/ptmx comes from the devpts at /dev/pts (the one bind-mounted into containers).
    True when the link was made."""
    path = root("/dev/ptmx")
    if os.path.islink(path) or not os.path.isdir(root("/dev/pts")):
        return False
    try:
        if os.path.lexists(path):
            os.unlink(path)
        os.symlink("pts/ptmx", path)
    except OSError:
        return False
    return True


def unmount_all(root: Root) -> None:
    """Unmount everything but the root, deepest first, lazily (shutdown path: never raises)."""
    targets = sorted(mounted_targets(root), key=len, reverse=True)
    for target in targets:
        if target in ("/", "/proc", "/sys", "/dev"):
            continue
        try:
            syscalls.umount(root(target), syscalls.MNT_DETACH)
        except OSError:
            pass
