"""The guest that `guestctl deploy` installs boots: the kernel and initrd its Kata configuration
names (the versioned files behind Kata's names) reach READY under the real QEMU."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from deploy_harness import PUBLIC

from guestinit.host.boot import BootOptions, boot
from guestinit.host.kata import deploy

pytestmark = pytest.mark.boot


def test_deployed_kernel_and_initrd_boot(kata_image: Path, tmp_path: Path) -> None:
    prefix = tmp_path / "opt-kata"
    manifest = kata_image.parent / "manifest.json"
    assert deploy.deploy_main(["--manifest", str(manifest), "--prefix", str(prefix), "--allow-no-agent"]) == 0
    qemu = tomllib.loads((prefix / PUBLIC["config"]).read_text())["hypervisor"]["qemu"]
    kernel, initrd = Path(qemu["kernel"]), Path(qemu["initrd"])
    assert kernel.resolve() == (prefix / PUBLIC["kernel"]).resolve()
    assert initrd.resolve() == (prefix / PUBLIC["initrd"]).resolve()
    result = boot(BootOptions(image=initrd, kernel=kernel, timeout_s=120, run_dir=tmp_path / "run"))
    assert result.ready, f"{result.error}; console: {Path(result.console_log).read_text()[-2000:]}"
