"""Hugepage pools (per size and per NUMA node), THP mode, and the guest's own reservation.

``guestinit.hugepages=2M:512,1G:4`` reserves pools at boot; ``SIZE:COUNT@NODE`` reserves on
one NUMA node (``1G:2@0,1G:2@1``). 1 GiB pages are reserved before 2 MiB ones (they need
contiguous memory, which only gets scarcer). The kernel may give fewer pages than asked: the
count it really holds is read back and a shortfall is reported, never fatal.
``guestinit.thp=always|madvise|never`` sets transparent hugepages (``keep``: leave it).
Both keys, their parsers and ``Request`` live in gpu_params (part of the one key table).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from guestinit.init.gpu.params import Request, size_name
from guestinit.init.root import Root

GLOBAL_DIR = "/sys/kernel/mm/hugepages"
NODE_DIR = "/sys/devices/system/node"
THP_DIR = "/sys/kernel/mm/transparent_hugepage"


@dataclass(frozen=True)
class Pool:
    size_kb: int
    node: int | None  # None: the system-wide pool
    total: int
    free: int | None
    reserved: int | None = None
    surplus: int | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "size": size_name(self.size_kb),
            "node": self.node,
            "total": self.total,
            "free": self.free,
            "reserved": self.reserved,
            "surplus": self.surplus,
        }


def _read_int(root: Root, path: str) -> int | None:
    try:
        return int(root.read_text(path).strip())
    except (OSError, ValueError):
        return None


def _sizes(root: Root, directory: str) -> list[int]:
    out = []
    for entry in root.listdir(directory):
        m = re.match(r"^hugepages-(\d+)kB$", entry)
        if m:
            out.append(int(m.group(1)))
    return sorted(out)


def nodes(root: Root) -> list[int]:
    return sorted(int(e[4:]) for e in root.listdir(NODE_DIR) if re.match(r"^node\d+$", e))


def read_pools(root: Root) -> list[Pool]:
    """System-wide pools first, then per-node pools, each by size."""
    pools: list[Pool] = []
    for kb in _sizes(root, GLOBAL_DIR):
        d = f"{GLOBAL_DIR}/hugepages-{kb}kB"
        total = _read_int(root, f"{d}/nr_hugepages")
        if total is None:
            continue
        pools.append(
            Pool(
                kb,
                None,
                total,
                _read_int(root, f"{d}/free_hugepages"),
                _read_int(root, f"{d}/resv_hugepages"),
                _read_int(root, f"{d}/surplus_hugepages"),
            )
        )
    for node in nodes(root):
        base = f"{NODE_DIR}/node{node}/hugepages"
        for kb in _sizes(root, base):
            d = f"{base}/hugepages-{kb}kB"
            total = _read_int(root, f"{d}/nr_hugepages")
            if total is not None:
                pools.append(
                    Pool(
                        kb,
                        node,
                        total,
                        _read_int(root, f"{d}/free_hugepages"),
                        None,
                        _read_int(root, f"{d}/surplus_hugepages"),
                    )
                )
    return pools


def parse_bracketed(text: str) -> str | None:
    """'always [madvise] never' -> 'madvise'."""
    m = re.search(r"\[([^\]]+)\]", text)
    return m.group(1) if m else None


def thp(root: Root) -> dict[str, str | None]:
    return {
        "enabled": parse_bracketed(root.read_text(f"{THP_DIR}/enabled", "")),
        "defrag": parse_bracketed(root.read_text(f"{THP_DIR}/defrag", "")),
    }


@dataclass(frozen=True)
class Reserved:
    request: Request
    got: int
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and self.got == self.request.count

    def __str__(self) -> str:
        if self.error:
            return f"hugepages {self.request}: {self.error}"
        if self.got != self.request.count:
            return f"hugepages {self.request}: the kernel holds {self.got}"
        return f"hugepages {self.request}: ok"


def pool_path(req: Request) -> str:
    base = GLOBAL_DIR if req.node is None else f"{NODE_DIR}/node{req.node}/hugepages"
    return f"{base}/hugepages-{req.size_kb}kB/nr_hugepages"


def reserve(root: Root, requests: tuple[Request, ...] | list[Request]) -> list[Reserved]:
    """Write each pool's nr_hugepages (largest pages first) and read back what the kernel holds."""
    results: list[Reserved] = []
    for req in sorted(requests, key=lambda r: (-r.size_kb, r.node if r.node is not None else -1)):
        path = pool_path(req)
        if not root.exists(path):
            where = "" if req.node is None else f" on node {req.node}"
            results.append(Reserved(req, 0, f"no {size_name(req.size_kb)} pool{where} in this kernel"))
            continue
        try:
            root.write_text(path, f"{req.count}\n")
        except OSError as exc:
            results.append(Reserved(req, _read_int(root, path) or 0, f"write failed: {exc.strerror or exc}"))
            continue
        results.append(Reserved(req, _read_int(root, path) or 0))
    return results


def set_thp(root: Root, mode: str) -> str:
    """Write the THP mode ('keep' leaves it); returns a problem or ''."""
    if mode == "keep":
        return ""
    try:
        root.write_text(f"{THP_DIR}/enabled", f"{mode}\n")
    except OSError as exc:
        return f"thp {mode}: {exc.strerror or exc}"
    now = parse_bracketed(root.read_text(f"{THP_DIR}/enabled", ""))
    return "" if now in (mode, None) else f"thp {mode}: the kernel shows {now}"
