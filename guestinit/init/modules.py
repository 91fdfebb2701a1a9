"""Kernel module loading without forking modprobe: finit_module(2) in modules.dep order.

Names resolve through modules.dep (and modules.alias for aliases); dependencies load first;
modules already present (loaded or built in) are skipped; each load is timed. Compressed
modules go to the kernel as they are (MODULE_INIT_COMPRESSED_FILE) when it can decompress
them, else they are decompressed here. ``modprobe`` is the fallback when all else fails.
"""

from __future__ import annotations

import errno
import os
from _thread import allocate_lock, start_new_thread

from guestinit.init import syscalls
from guestinit.init.clock import boottime
from guestinit.init.root import Root

MODULE_INIT_COMPRESSED_FILE = 4
# Errors from the module's own init or the kernel's policy, not from how it was loaded:
# no modprobe fallback for these (an NVIDIA module without a GPU fails with ENODEV).
FINAL_ERRNOS = frozenset({errno.ENODEV, errno.ENXIO, errno.EPERM, errno.ENOMEM, errno.EBUSY, errno.ENOSPC})


def normalize(name: str) -> str:
    return name.replace("-", "_")


def module_name(path: str) -> str:
    base = os.path.basename(path)
    for suffix in (".ko.xz", ".ko.zst", ".ko.gz", ".ko"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return normalize(base)


class ModuleTree:
    """One kernel's /usr/lib/modules/KVER: dependency graph, aliases, built-ins, options."""

    def __init__(self, root: Root, kver: str | None = None) -> None:
        self.root = root
        self.kver = kver or os.uname().release
        self.base = f"/usr/lib/modules/{self.kver}"
        if not root.exists(self.base) and root.exists(f"/lib/modules/{self.kver}"):
            self.base = f"/lib/modules/{self.kver}"
        self.paths: dict[str, str] = {}
        self.deps: dict[str, list[str]] = {}
        for line in root.read_text(f"{self.base}/modules.dep", "").splitlines():
            path, sep, rest = line.partition(":")
            if not sep:
                continue
            name = module_name(path)
            self.paths[name] = path
            self.deps[name] = [module_name(d) for d in rest.split()]
        self.builtin = {
            module_name(line.strip())
            for line in root.read_text(f"{self.base}/modules.builtin", "").splitlines()
            if line.strip()
        }
        self.aliases: dict[str, str] = {}
        for line in root.read_text(f"{self.base}/modules.alias", "").splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] == "alias" and "*" not in parts[1]:
                self.aliases.setdefault(normalize(parts[1]), normalize(parts[2]))
        self.options = read_options(root)

    def resolve(self, name: str) -> str | None:
        n = normalize(name)
        if n in self.paths or n in self.builtin:
            return n
        return self.aliases.get(n)

    def order(self, names: list[str] | tuple[str, ...]) -> list[str]:
        """Names in load order: every module after the modules it depends on, each once."""
        out: list[str] = []
        seen: set[str] = set()

        def visit(n: str, depth: int) -> None:
            if n in seen or depth > 64:
                return
            seen.add(n)
            # modules.dep lists the full closure, deepest last: load from the end.
            for dep in reversed(self.deps.get(n, [])):
                visit(dep, depth + 1)
            out.append(n)

        for name in names:
            resolved = self.resolve(name)
            visit(resolved or normalize(name), 0)
        return out


def read_options(root: Root) -> dict[str, str]:
    """``options NAME k=v ...`` lines from /etc/modprobe.d and /usr/lib/modprobe.d."""
    options: dict[str, list[str]] = {}
    for directory in ("/usr/lib/modprobe.d", "/etc/modprobe.d"):
        for entry in root.listdir(directory):
            if not entry.endswith(".conf"):
                continue
            for line in root.read_text(f"{directory}/{entry}", "").splitlines():
                parts = line.split("#", 1)[0].split()
                if len(parts) >= 3 and parts[0] == "options":
                    options.setdefault(normalize(parts[1]), []).extend(parts[2:])
    return {name: " ".join(values) for name, values in options.items()}


def is_loaded(root: Root, name: str) -> bool:
    return root.exists(f"/sys/module/{normalize(name)}")


class LoadResult:
    __slots__ = ("error", "how", "name", "seconds")

    def __init__(self, name: str, how: str, seconds: float, error: str = "") -> None:
        self.name = name
        self.how = how  # finit | init | modprobe | loaded | builtin | failed
        self.seconds = seconds
        self.error = error

    def as_dict(self) -> dict[str, object]:
        d: dict[str, object] = {"name": self.name, "how": self.how, "ms": round(self.seconds * 1000, 2)}
        if self.error:
            d["error"] = self.error
        return d


def _decompress(path: str) -> bytes:
    with open(path, "rb") as f:
        data = f.read()
    if path.endswith(".xz"):
        import lzma

        return lzma.decompress(data)
    if path.endswith(".gz"):
        import gzip

        return gzip.decompress(data)
    if path.endswith(".zst"):
        import subprocess

        try:
            out = subprocess.run(["zstd", "-dc", path], capture_output=True, check=True)
        except subprocess.CalledProcessError as exc:
            raise ValueError(f"zstd -dc {path}: exit {exc.returncode}") from None
        return out.stdout
    return data


def load_one(tree: ModuleTree, name: str, params: str = "") -> LoadResult:
    start = boottime()
    if name in tree.builtin:
        return LoadResult(name, "builtin", 0.0)
    if is_loaded(tree.root, name):
        return LoadResult(name, "loaded", 0.0)
    rel = tree.paths.get(name)
    if rel is None:
        return _modprobe(tree, name, start, "not in modules.dep", params)
    path = tree.root(f"{tree.base}/{rel}")
    full_params = " ".join(p for p in (tree.options.get(name, ""), params) if p)
    compressed = not rel.endswith(".ko")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            syscalls.finit_module(fd, full_params, MODULE_INIT_COMPRESSED_FILE if compressed else 0)
        finally:
            os.close(fd)
        return LoadResult(name, "finit", boottime() - start)
    except OSError as exc:
        if exc.errno == errno.EEXIST:
            return LoadResult(name, "loaded", boottime() - start)
        if compressed and exc.errno in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS):
            try:
                syscalls.init_module(_decompress(path), full_params)
                return LoadResult(name, "init", boottime() - start)
            except (OSError, ValueError) as exc2:
                return _modprobe(tree, name, start, str(exc2), params)
        if exc.errno in FINAL_ERRNOS:
            # The kernel refused the module itself (no such device, modules disabled, no
            # memory): modprobe would fork only to be refused the same way.
            return LoadResult(name, "failed", boottime() - start, str(exc))
        return _modprobe(tree, name, start, str(exc), params)


def _modprobe(tree: ModuleTree, name: str, start: float, why: str, params: str = "") -> LoadResult:
    """The fallback: fork modprobe (it reads modprobe.d itself; our parameters go on its line)."""
    argv = ["modprobe"] if tree.root.is_real else ["modprobe", "-d", tree.root.path, "-S", tree.kver]
    argv += [name, *params.split()]
    import subprocess  # the fallback only: forking is what finit_module avoids

    try:
        subprocess.run(argv, check=True, capture_output=True, timeout=30)
        return LoadResult(name, "modprobe", boottime() - start, why)
    except (OSError, subprocess.SubprocessError) as exc:
        return LoadResult(name, "failed", boottime() - start, f"{why}; modprobe: {exc}")


def load(
    tree: ModuleTree,
    names: list[str] | tuple[str, ...],
    params: dict[str, str] | None = None,
    parallel: bool = False,
    workers: int | None = None,
) -> list[LoadResult]:
    """Load names and their dependencies in order; a failed dependency fails its dependents.
    With ``parallel``, see :class:`Loading`. Results come back in load order either way."""
    if parallel:
        return Loading(tree, names, params, workers).wait()
    params = params or {}
    results: dict[str, LoadResult] = {}
    for name in tree.order(names):
        broken = _failed_dependency(tree, name, results)
        if broken:
            results[name] = LoadResult(name, "failed", 0.0, f"dependency {broken} failed")
        else:
            results[name] = load_one(tree, name, params.get(name, ""))
    return list(results.values())


def _failed_dependency(tree: ModuleTree, name: str, results: dict[str, LoadResult]) -> str:
    for dep in tree.deps.get(name, []):
        done = results.get(dep)
        if done is not None and done.how == "failed":
            return dep
    return ""


def spare_cpus() -> int:
    """CPUs this process may run on, less the one the init keeps for itself; at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)) - 1)
    except OSError:
        return 1


class Loading:
    """Module loads under way in the background, started by the constructor, collected by
    :meth:`wait`. Each module starts in a thread of its own as soon as the modules it depends
    on are in (finit_module releases the GIL, and the kernel links independent modules on
    other CPUs meanwhile); a failed dependency fails its dependents without a load.

    At most ``workers`` loads run at once, by default one per CPU beyond the one the init
    keeps (spare_cpus()): a load is kernel work on whichever CPU its thread runs (tens of
    milliseconds each under TCG: relocation, the module's init), and on a 2-vCPU guest three
    at once took the CPU the init's own imports needed: one at a time there, the imports that
    run beside them took 0.088 s instead of 0.123 s (TCG, medians of 9 boots).

    Threads come from ``_thread``: ``threading`` costs 13 ms of a TCG boot to import.
    """

    def __init__(
        self,
        tree: ModuleTree,
        names: list[str] | tuple[str, ...],
        params: dict[str, str] | None = None,
        workers: int | None = None,
    ) -> None:
        self.tree = tree
        self.params = params or {}
        self.order = tree.order(names)
        self.workers = max(1, workers if workers is not None else spare_cpus())
        self._running = 0
        self._members = set(self.order)
        self._results: dict[str, LoadResult] = {}
        self._started: set[str] = set()
        self._lock = allocate_lock()
        self._finished = allocate_lock()
        self._finished.acquire()  # released once every module has a result
        self.finished_s: float | None = None  # when the last one had its result
        with self._lock:
            self._launch()

    def _launch(self) -> None:
        """Start what can start now; the caller holds the lock. ``order`` has every module
        after its dependencies, so one pass sees the failures it records itself."""
        for name in self.order:
            if name in self._started:
                continue
            deps = [d for d in self.tree.deps.get(name, []) if d in self._members]
            if any(d not in self._results for d in deps):
                continue
            broken = _failed_dependency(self.tree, name, self._results)
            if broken:
                self._started.add(name)
                self._results[name] = LoadResult(name, "failed", 0.0, f"dependency {broken} failed")
                continue
            if self._running >= self.workers:
                continue  # a failed dependency further on is still recorded in this pass
            self._started.add(name)
            self._running += 1
            try:
                start_new_thread(self._run, (name,))
            except RuntimeError as exc:  # no thread to be had: load it here instead
                self._running -= 1
                self._results[name] = self._load(name, f"no thread ({exc})")
        if len(self._results) == len(self.order) and self._finished.locked():
            self.finished_s = boottime()
            self._finished.release()

    def _load(self, name: str, why: str = "") -> LoadResult:
        try:
            return load_one(self.tree, name, self.params.get(name, ""))
        except BaseException as exc:  # a thread's exception would be lost, and wait() hang
            return LoadResult(name, "failed", 0.0, f"{why}{'; ' if why else ''}{type(exc).__name__}: {exc}")

    def _run(self, name: str) -> None:
        result = self._load(name)
        with self._lock:
            self._results[name] = result
            self._running -= 1
            self._launch()

    @property
    def done(self) -> bool:
        return not self._finished.locked()

    def wait(self) -> list[LoadResult]:
        """Every result, in load order, once the last load has returned."""
        with self._finished:
            return [self._results[name] for name in self.order]
