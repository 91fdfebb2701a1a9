"""Fixtures for the kata-agent tests: the two stand-in builds, compiled once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
from standin_harness import build_standin, host_libraries


@pytest.fixture(scope="session")
def standins(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("standin")
    return {kind: build_standin(out, kind) for kind in ("static", "dynamic")}


@pytest.fixture(scope="session")
def static_agent(standins: dict[str, Path]) -> Path:
    return standins["static"]


@pytest.fixture(scope="session")
def dynamic_agent(standins: dict[str, Path]) -> Path:
    return standins["dynamic"]


@pytest.fixture(scope="session")
def dynamic_libs(dynamic_agent: Path) -> dict[str, Path]:
    """soname -> this host's file, for every library the dynamic stand-in loads."""
    return host_libraries(dynamic_agent)
