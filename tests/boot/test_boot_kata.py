"""Boot the default Kata guest image under the real QEMU and check what reaches the host."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from boot_phases import FIRST_PHASES

from guestinit.host.boot import BootOptions, boot

pytestmark = pytest.mark.boot


def test_kata_image_reports_ready_with_every_phase(kata_image: Path, tmp_path: Path) -> None:
    result = boot(BootOptions(image=kata_image, timeout_s=120, run_dir=tmp_path))
    assert result.ready, f"{result.error}; console: {Path(result.console_log).read_text()[-2000:]}"
    assert result.accel in ("kvm", "tcg")
    assert result.transport == "serial"
    names = [p["name"] for p in result.phases]
    assert names[: len(FIRST_PHASES)] == FIRST_PHASES
    for phase in result.phases:
        assert float(str(phase["end_s"])) >= float(str(phase["start_s"])) > 0
        assert "error" not in phase
    assert result.notify["X_GUESTINIT_VERSION"]
    exec_s = float(result.notify["X_GUESTINIT_EXEC_S"])
    assert result.uptime_at_ready_s is not None and 0 < exec_s < result.uptime_at_ready_s
    # Drivers for the devices this VM has (coldplug.py): QEMU's virtio-rng and ACPI power
    # button; no virtio-vsock device on the serial transport, so no vsock modules; no fw_cfg
    # module, as guestinit.notify= is given.
    modules = {m["name"]: m["how"] for m in json.loads(result.notify["X_GUESTINIT_MODULES"])}
    assert modules == {"virtio_rng": "finit", "button": "finit", "evdev": "finit"}, modules
    assert result.exit_status is None
    d = result.as_dict()
    for key in ("ready", "accel", "transport", "wall_s", "uptime_at_ready_s", "phases", "notify"):
        assert key in d
