"""Hugepage pools (per size and per NUMA node), THP mode, and the guest's own reservation.

``guestinit.hugepages=2M:512,1G:4`` reserves pools at boot; ``SIZE:COUNT@NODE`` reserves on
one NUMA node (``1G:2@0,1G:2@1``). 1 GiB pages are reserved before 2 MiB ones (they need
contiguous memory, which only gets scarcer). The kernel may give fewer pages than asked: the
count it really holds is read back and a shortfall is reported, never fatal.
``guestinit.thp=always|madvise|never`` sets transparent hugepages (``keep``: leave it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from guestinit.init.params import Param, ParamError
from guestinit.init.root import Root

GLOBAL_DIR = "/sys/kernel/mm/hugepages"
NODE_DIR = "/sys/devices/system/node"
THP_DIR = "/sys/kernel/mm/transparent_hugepage"
THP_MODES = ("keep", "always", "madvise", "never")

_SIZE = re.compile(r"^(\d+)\s*([kKmMgG])(?:i?[bB])?$")
_UNITS = {"k": 1, "m": 1 << 10, "g": 1 << 20}


def size_name(kb: int) -> str:
    if kb % (1 << 20) == 0:
        return f"{kb >> 20}G"
    if kb % (1 << 10) == 0:
        return f"{kb >> 10}M"
    return f"{kb}K"


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
class Request:
    size_kb: int
    count: int
    node: int | None = None

    def __str__(self) -> str:
        at = f"@{self.node}" if self.node is not None else ""
        return f"{size_name(self.size_kb)}:{self.count}{at}"


def parse_size_kb(text: str) -> int:
    m = _SIZE.match(text.strip())
    if not m:
        raise ParamError(f"{text!r} is not a page size (use 2M or 1G)")
    return int(m.group(1)) * _UNITS[m.group(2).lower()]


def parse_requests(text: str) -> tuple[Request, ...]:
    """'2M:512,1G:4@0' -> requests; raises ParamError naming the bad item."""
    out: list[Request] = []
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        size_text, sep, rest = item.partition(":")
        if not sep:
            raise ParamError(f"{item!r} is not SIZE:COUNT[@NODE] (e.g. 2M:512 or 1G:4@0)")
        count_text, at, node_text = rest.partition("@")
        size_kb = parse_size_kb(size_text)
        if not count_text.isdigit():
            raise ParamError(f"{item!r}: count {count_text!r} is not a whole number")
        if at and not node_text.isdigit():
            raise ParamError(f"{item!r}: NUMA node {node_text!r} is not a whole number")
        out.append(Request(size_kb, int(count_text), int(node_text) if at else None))
    keys = [(r.size_kb, r.node) for r in out]
    for r in out:
        if keys.count((r.size_kb, r.node)) > 1:
            raise ParamError(f"{r} is given twice")
        if r.node is not None and (r.size_kb, None) in keys:
            raise ParamError(f"{size_name(r.size_kb)} is given both system-wide and per node: use one form")
    return tuple(out)


def parse_thp(text: str) -> str:
    if text not in THP_MODES:
        raise ParamError(f"{text!r} is not one of {', '.join(THP_MODES)}")
    return text


# fmt: off
PARAMS: tuple[Param, ...] = (
    Param("hugepages", "SIZE:COUNT[@NODE],...", parse_requests, (),
          "Hugepages to reserve at boot, e.g. 2M:512,1G:4 or per NUMA node 1G:2@0,1G:2@1."),
    Param("thp", "|".join(THP_MODES), parse_thp, "keep",
          "Transparent hugepages mode written to /sys/kernel/mm/transparent_hugepage/enabled."),
)
# fmt: on


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
