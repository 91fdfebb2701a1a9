"""Shared fixtures. Boot tests (``-m boot``) build the image once per session (cached by
input digest under ~/.cache/guestinit) and boot it under the real QEMU."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures"
H200_ROOT = FIXTURES / "h200-firecracker-vm" / "root"


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def kata_image() -> Path:
    """The default Kata guest image, built when its inputs changed (else reused)."""
    import io

    from guestinit.host.build import build

    manifest = build("kata", if_needed=True, log=io.StringIO())
    return manifest.parent / "guestinit-kata.cpio.zst"
