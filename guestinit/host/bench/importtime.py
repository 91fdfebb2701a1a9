"""The guest's boot path imports, measured inside the guest: the image boots with ``-X importtime``
added to its ``/init`` line (an extra initrd holding only that file, which wins over the image's
own), and the interpreter's report is read back from the console log.

The report covers every import from the interpreter's start to READY (the boot stops there), so
it is the boot path as the guest really takes it: lazy imports included, on the guest's own
interpreter and under the same accelerator. Each line costs a few console bytes, so the times
run somewhat high; the module list is exact.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from guestinit.host.build import newc
from guestinit.host.errors import UserError

FLAG = "-X importtime"
# "import time:       139 |        139 |   linecache" (microseconds; depth from the indent)
LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)\s*$")
# The modules the boot path must not import: each costs a TCG boot tens of milliseconds and
# the boot never needs it (the guest side imports them, if at all, only on rare paths).
HEAVY = frozenset(
    {
        "argparse", "ast", "asyncio", "ctypes", "dataclasses", "datetime", "enum", "functools", "hashlib",
        "inspect", "ipaddress", "json", "locale", "logging", "pathlib", "psutil", "pyinotify",
        "random", "re", "selectors", "shutil", "socket", "subprocess", "tempfile", "textwrap",
        "threading", "tokenize", "tomllib", "traceback", "typing", "weakref", "collections",
    }
)  # fmt: skip


@dataclass(frozen=True)
class Import:
    name: str
    self_us: int
    cumulative_us: int
    depth: int  # 0: imported by the script itself


def parse(text: str) -> list[Import]:
    """The ``-X importtime`` lines of a console log, in the order the interpreter wrote them
    (children before their parent); the header line and everything else are skipped."""
    out = []
    for raw in text.splitlines():
        m = LINE.search(raw)
        if m:
            out.append(Import(m.group(4), int(m.group(1)), int(m.group(2)), len(m.group(3)) // 2))
    return out


def heavy(imports: list[Import], denied: frozenset[str] = HEAVY) -> list[str]:
    """The denied modules (or their submodules) among ``imports``, sorted."""
    return sorted({i.name for i in imports if i.name.partition(".")[0] in denied})


def total_us(imports: list[Import]) -> int:
    """Time in every import: the sum of self times (each module counted once)."""
    return sum(i.self_us for i in imports)


def init_line(image: Path) -> str:
    """The image's ``/init`` line with ``-X importtime`` put after the interpreter's flags."""
    try:
        entries = list(newc.read_file(image))
    except newc.NewcError as exc:  # e.g. an lz4 image on a host without lz4: say so, never a traceback
        raise UserError(str(exc), hint="the bench's boots did not need it; --imports does") from None
    for entry in entries:
        if entry.name == "init" and entry.kind == newc.S_IFLNK:
            target = entry.data.decode(errors="replace")
            raise UserError(
                f"{image}: /init is a link to {target}, not the one line this report can add "
                "-X importtime to",
                hint="give an image whose /init runs python3 -IS (guestctl build kata)",
            )
        if entry.name == "init" and entry.kind == newc.S_IFREG:
            line = entry.data.decode(errors="replace").splitlines()[0]
            break
    else:
        raise UserError(f"{image} has no /init file", hint="give a guestinit initrd (guestctl build kata)")
    head, sep, tail = line.partition(" -IS ")
    if not sep or "python3" not in head:
        raise UserError(
            f"{image}: /init ({line[:80]!r}) does not run python3 -IS",
            hint="give a guestinit initrd (guestctl build kata)",
        )
    return f"{head}{sep}{FLAG} {tail}\n"


def overlay(image: Path, out: Path) -> Path:
    """An extra initrd replacing the image's /init by one that runs with ``-X importtime``."""
    entry = newc.Entry("init", newc.S_IFREG | 0o755, init_line(image).encode())
    out.write_bytes(newc.write([entry]))
    return out


def report(imports: list[Import], top: int = 12) -> str:
    """The number of modules, the total, and the costliest by self time."""
    lines = [
        f"boot path imports: {len(imports)} modules, {total_us(imports) / 1000:.1f} ms in all (self times)"
    ]
    lines.append(f"  {'module':<40} {'self ms':>8} {'cumul. ms':>10}")
    for i in sorted(imports, key=lambda i: -i.self_us)[:top]:
        lines.append(f"  {i.name:<40} {i.self_us / 1000:>8.1f} {i.cumulative_us / 1000:>10.1f}")
    return "\n".join(lines)
