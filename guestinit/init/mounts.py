"""The early mounts PID 1 makes, with NVRC's flags (nosuid, nodev, noexec where they apply)."""

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
)
# Mounted only when /proc/filesystems lists them (as NVRC does).
OPTIONAL: tuple[tuple[str, str, str, int], ...] = (
    ("securityfs", "/sys/kernel/security", "securityfs", NOSUID | NODEV | NOEXEC),
    ("configfs", "/sys/kernel/config", "configfs", NOSUID | NODEV | NOEXEC),
    ("cgroup2", "/sys/fs/cgroup", "cgroup2", NOSUID | NODEV | NOEXEC),
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
        os.makedirs(path, exist_ok=True)
        try:
            syscalls.mount(source, path, fstype, flags, data)
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                continue
            if required:
                raise
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
    return done


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
