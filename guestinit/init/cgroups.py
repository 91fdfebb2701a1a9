"""Each service in a cgroup v2 of its own: /sys/fs/cgroup/guestinit/NAME.

The arrangement (cgroup v2's rule: a cgroup that hands controllers to its children holds no
processes itself; the root is exempt):

    /sys/fs/cgroup                 init (PID 1) and kernel threads; subtree_control +cpu +memory +pids
    ├── guestinit/                 no processes; subtree_control +cpu +memory +pids
    │   ├── kata-agent/            the agent and what it forks before it moves it
    │   └── NAME/                  every other service: its whole tree, probes included
    └── kubepods/.../CONTAINER     created by the kata-agent itself (below)

The kata-agent (kata-containers src/agent/rustjail, cgroups-rs ``create_v2_cgroup``) puts a
container's cgroup at /sys/fs/cgroup/<the OCI spec's cgroupsPath>, counted from the root of
the cgroup2 mount, not from its own cgroup: it writes ``+<controller>`` for every controller in
the root's cgroup.controllers to the root's subtree_control and to each new intermediate
directory's (ignoring refusals), creates the directories, and moves the container's first
process in through cgroup.procs. So it needs cgroup2 mounted read-write at /sys/fs/cgroup in
the root cgroup namespace, and the root free to enable controllers: both hold here, and the
containers' cgroups are siblings of guestinit/, untouched by what guestinit does to its own.

A service's process moves itself into its cgroup between fork and exec (spawn.py writes its
pid to the cgroup.procs this module opened), so nothing it forks can start outside. Stopping
signals every pid in cgroup.procs and then writes cgroup.kill (Linux >= 5.14), which kills
the whole cgroup, forks in flight included; cgroup.events says when it is empty. Without
cgroup2 (or on an older kernel without cgroup.kill) the supervisor says so once and falls back
to walking the process tree.
"""

from __future__ import annotations

import os

MOUNT = "/sys/fs/cgroup"
PARENT = "guestinit"
# What services use: memory.current / memory.max, cpu.weight, pids.current. cpu.stat's
# usage_usec is there whether or not the cpu controller is enabled.
CONTROLLERS = ("cpu", "memory", "pids")


def _read(path: str) -> str:
    # utf-8, not ascii: the same for these files, and the codec the interpreter has already
    # (an ascii text file imports encodings.ascii on the boot path)
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def enable(directory: str, controllers: tuple[str, ...]) -> list[str]:
    """Write ``+c`` for each controller to directory/cgroup.subtree_control (one write, or one
    each when the kernel refuses the set); return the ones it refused, with why."""
    path = os.path.join(directory, "cgroup.subtree_control")
    try:
        _write(path, " ".join(f"+{c}" for c in controllers))
        return []
    except OSError:
        pass
    refused = []
    for c in controllers:
        try:
            _write(path, f"+{c}")
        except OSError as exc:
            refused.append(f"{c} ({exc.strerror})")
    return refused


class CgroupTree:
    """guestinit's part of the cgroup2 hierarchy mounted at ``mount`` (a host path: the real
    /sys/fs/cgroup, another cgroup2 mount in a test, or a plain directory standing in for one)."""

    def __init__(self, mount: str, parent: str = PARENT) -> None:
        self.mount = mount
        self.base = os.path.join(mount, parent)
        self.controllers: tuple[str, ...] = ()  # enabled for the services
        self.can_kill = False  # cgroup.kill exists (Linux >= 5.14)

    def path(self, name: str, file: str = "") -> str:
        return os.path.join(self.base, name, file) if file else os.path.join(self.base, name)

    def create(self, name: str) -> None:
        os.makedirs(self.path(name), exist_ok=True)

    def open_procs(self, name: str) -> int:
        """An fd on NAME's cgroup.procs for the child to write its pid to (close-on-exec)."""
        return os.open(self.path(name, "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC)

    def pids(self, name: str) -> list[int]:
        try:
            return [int(p) for p in _read(self.path(name, "cgroup.procs")).split()]
        except (OSError, ValueError):
            return []

    def populated(self, name: str) -> bool:
        """Whether a process is left in NAME's cgroup (cgroup.events; the pid list where a
        stand-in tree has no events file)."""
        try:
            events = _read(self.path(name, "cgroup.events"))
        except OSError:
            return bool(self.pids(name))
        for line in events.splitlines():
            key, _, value = line.partition(" ")
            if key == "populated":
                return value.strip() != "0"
        return bool(self.pids(name))

    def kill(self, name: str) -> bool:
        """SIGKILL everything in NAME's cgroup at once; False where cgroup.kill is missing."""
        if not self.can_kill:
            return False
        try:
            _write(self.path(name, "cgroup.kill"), "1")
            return True
        except OSError:
            return False

    def limit(self, name: str, memory_max: int | None, cpu_weight: int | None) -> list[str]:
        """Write memory.max and cpu.weight, those that are set; return one line per value
        that could not be set."""
        problems = []
        wanted = (("memory", "memory.max", memory_max), ("cpu", "cpu.weight", cpu_weight))
        for controller, file, value in wanted:
            if value is None:
                continue
            if controller not in self.controllers:
                problems.append(f"{file} not set: no {controller} controller for services")
                continue
            try:
                _write(self.path(name, file), str(value))
            except OSError as exc:
                problems.append(f"{file}={value}: {exc.strerror}")
        return problems

    def stats(self, name: str) -> dict[str, int]:
        """memory.current (bytes) and cpu.stat's usage_usec, those that can be read."""
        out: dict[str, int] = {}
        try:
            out["memory_current"] = int(_read(self.path(name, "memory.current")))
        except (OSError, ValueError):
            pass
        try:
            for line in _read(self.path(name, "cpu.stat")).splitlines():
                key, _, value = line.partition(" ")
                if key == "usage_usec":
                    out["cpu_usec"] = int(value)
                    break
        except (OSError, ValueError):
            pass
        return out


def setup(mount: str, parent: str = PARENT) -> tuple[CgroupTree | None, list[str]]:
    """Enable the services' controllers in the root and in guestinit/ (which holds no
    process); return the tree (None without cgroup2 at ``mount``) and the problems found."""
    try:
        available = _read(os.path.join(mount, "cgroup.controllers")).split()
    except OSError:
        return None, [f"no cgroup2 at {mount}: services run without cgroups (stopped by their process tree)"]
    tree = CgroupTree(mount, parent)
    wanted = tuple(c for c in CONTROLLERS if c in available)
    problems = []
    refused = enable(mount, wanted)
    try:
        os.makedirs(tree.base, exist_ok=True)
    except OSError as exc:
        return None, [f"cannot create {tree.base}: {exc.strerror}: services run without cgroups"]
    refused += [r for r in enable(tree.base, wanted) if r not in refused]
    tree.controllers = tuple(c for c in wanted if not any(r.startswith(f"{c} ") for r in refused))
    missing = [c for c in CONTROLLERS if c not in available]
    if missing or refused:
        problems.append("cgroup controllers not available to services: " + ", ".join(missing + refused))
    tree.can_kill = os.path.exists(os.path.join(tree.base, "cgroup.kill"))
    if not tree.can_kill:
        problems.append("no cgroup.kill (Linux < 5.14): a stopped service's processes are killed one by one")
    return tree, problems
