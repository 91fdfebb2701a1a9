"""The guest's services as the host prints them: X_GUESTINIT_SERVICES (READY's report, one
object a service) as a table of state, restarts, memory.current and CPU time of each
service's cgroup, and the error of a failed one."""

from __future__ import annotations

import json


def parse(text: str | None) -> list[dict[str, object]]:
    """The services of an X_GUESTINIT_SERVICES value; [] when absent or not a JSON list."""
    if not text:
        return []
    try:
        loaded = json.loads(text)
    except (ValueError, RecursionError):
        return []
    return [s for s in loaded if isinstance(s, dict)] if isinstance(loaded, list) else []


def _mib(value: object) -> str:
    return f"{value / 1048576:.1f} MiB" if isinstance(value, int) and not isinstance(value, bool) else ""


def _cpu(value: object) -> str:
    return f"{value / 1e6:.3f} s" if isinstance(value, int) and not isinstance(value, bool) else ""


def format_table(services: list[dict[str, object]]) -> str:
    """One line a service: name, state, restarts, memory, CPU time, error."""
    if not services:
        return ""
    lines = [f"{'service':<24} {'state':<9} {'restarts':>8} {'memory':>11} {'cpu':>10}  error"]
    for s in services:
        error = "".join(c if c.isprintable() else "?" for c in str(s.get("error") or ""))
        lines.append(
            f"{str(s.get('name', '?'))[:24]:<24} {str(s.get('state', '?'))[:9]:<9} "
            f"{s.get('restarts', 0)!s:>8} {_mib(s.get('memory_current')):>11} "
            f"{_cpu(s.get('cpu_usec')):>10}  {error[:80]}".rstrip()
        )
    return "\n".join(lines)
