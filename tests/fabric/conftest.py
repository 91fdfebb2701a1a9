"""Fixtures for the fabric tests: generated gRPC code, the compiled C test doubles, a fake
fabricmanager and the real fm-controller."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fabric_harness import ControllerProcess, FakeFabricManager, build_fakes

from guestinit.fabric import protogen


@pytest.fixture(scope="session", autouse=True)
def generated_code() -> None:
    """A fresh clone has no generated modules: make them (as `make proto` would)."""
    protogen.ensure()


@pytest.fixture(scope="session")
def fakes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return build_fakes(tmp_path_factory.mktemp("fakes"))


@pytest.fixture
def fake_lib(fakes: tuple[Path, Path]) -> Path:
    return fakes[0]


@pytest.fixture
def fm(fakes: tuple[Path, Path], tmp_path: Path) -> Iterator[FakeFabricManager]:
    """A running fake fabricmanager (H100 table, 100 ms of NOT_CONFIGURED after start)."""
    fake = FakeFabricManager(fakes[1], tmp_path / "fm")
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def controller(
    fakes: tuple[Path, Path], fm: FakeFabricManager, tmp_path: Path
) -> Iterator[ControllerProcess]:
    ctl = ControllerProcess(fakes[0], tmp_path / "ctl", fm.address)
    ctl.start()
    yield ctl
    ctl.stop()


@pytest.fixture
def unused_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
