"""How guestctl boot prints the guest's services: X_GUESTINIT_SERVICES as a table with each
cgroup's memory.current and CPU time."""

from __future__ import annotations

import json

from guestinit.host import services


def test_table_shows_memory_and_cpu_of_each_service() -> None:
    report = json.dumps(
        [
            {"name": "fabricmanager", "state": "ready", "memory_current": 44040192, "cpu_usec": 1523001},
            {"name": "crasher", "state": "failed", "restarts": 2, "error": "exited with 3\nbefore"},
            {"name": "kata-agent", "state": "skipped"},
        ]
    )
    lines = services.format_table(services.parse(report)).splitlines()
    assert lines[0].split() == ["service", "state", "restarts", "memory", "cpu", "error"]
    assert lines[1].split() == ["fabricmanager", "ready", "0", "42.0", "MiB", "1.523", "s"]
    assert lines[2].split() == ["crasher", "failed", "2", "exited", "with", "3?before"]
    assert lines[3].split() == ["kata-agent", "skipped", "0"]


def test_nothing_to_print_without_a_report_or_with_a_bad_one() -> None:
    for text in (None, "", "not json", '{"a": 1}', "[[[["):
        assert services.format_table(services.parse(text)) == ""
    assert services.parse('[1, {"name": "x"}]') == [{"name": "x"}]
