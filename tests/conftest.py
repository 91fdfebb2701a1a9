"""Shared fixtures. Boot tests (``-m boot``) build the image once per session (cached by
input digest under ~/.cache/guestinit) and boot it under the real QEMU."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

# No per-example time limit: a loaded 2-core CI machine must not turn a slow example into a
# failure (speed is measured by benchmarks, never asserted in tests).
settings.register_profile("guestinit", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("guestinit")

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
H200_ROOT = FIXTURES / "h200-firecracker-vm" / "root"


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def kata_image() -> Path:
    """The default Kata guest image, built when its inputs changed (else reused)."""
    import io

    from guestinit.host.bench.images import image_of
    from guestinit.host.build.builder import build

    return image_of(build("kata", if_needed=True, log=io.StringIO()))


@pytest.fixture
def stand_in_mkosi(fp: Any) -> Callable[..., None]:
    """``stand_in_mkosi(run, returncode=0)``: the next mkosi run is stood in for by ``run``
    (pytest-subprocess hands it the FakePopen); the lz4 that packs the Kata initrd after it is
    the real one."""

    def register(run: Callable[[Any], None], returncode: int = 0) -> None:
        fp.pass_command([fp.program("lz4"), fp.any()], occurrences=8)
        fp.register([fp.any()], callback=run, returncode=returncode)

    return register


@pytest.fixture
def built_kata(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A previous good build in a repository copy's build/kata (mkosi stood in for): the
    folder a failed or refused build must leave untouched. Returns that folder."""
    from guestinit.host.build import builder, images
    from guestinit.host.build import manifest as manifests

    monkeypatch.setenv("GUESTINIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1796349683")
    (tmp_path / "cache/tools/mkosi/usr/lib/python3/dist-packages/mkosi").mkdir(parents=True)
    monkeypatch.setattr(builder, "repo_root", lambda: tmp_path)
    out = tmp_path / "build" / "kata"
    out.mkdir(parents=True)
    (out / "guestinit-kata.cpio.lz4").write_bytes(b"good initrd")
    (out / "guestinit-kata.vmlinuz").write_bytes(b"good kernel")
    manifests.write_manifest(out, images.target("kata"), "d" * 64, 1.0, 1796349683)
    return out
