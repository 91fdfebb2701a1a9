from __future__ import annotations

from pathlib import Path

from guestinit.init.meminfo import ready_fields
from guestinit.init.root import Root


def test_ready_fields_carry_total_and_available(tmp_path: Path) -> None:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/meminfo").write_text(
        "MemTotal:        2014432 kB\nMemFree:         1863204 kB\n"
        "MemAvailable:    1866088 kB\nBuffers: 0 kB\n"
    )
    assert ready_fields(Root(tmp_path)) == {
        "X_GUESTINIT_MEM_TOTAL_KIB": "2014432",
        "X_GUESTINIT_MEM_AVAILABLE_KIB": "1866088",
    }


def test_no_meminfo_or_a_garbled_one_gives_no_fields(tmp_path: Path) -> None:
    assert ready_fields(Root(tmp_path)) == {}
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/meminfo").write_text("MemTotal: lots kB\nMemAvailable:\n")
    assert ready_fields(Root(tmp_path)) == {}
