"""A container end to end: the image `guestctl build` makes (with the node's own kata-agent),
deployed by `guestctl deploy` into a temporary Kata prefix, runs a container through containerd's
Kata shim and prints what the container printed.

It needs what a Kata node has and this project's CI machines do not: KVM that really boots a
guest, containerd running, Kata installed (containerd-shim-kata-v2 and an agent to take, under
/opt/kata), and a busybox-like image (pulled if missing). Each missing piece skips the test with
the reason; on a KVM host, as root:

    make setup
    PYTEST_ADDOPTS="-m kata" .venv/bin/pytest tests/e2e -rs

(GUESTINIT_E2E_IMAGE overrides the container image, default docker.io/library/busybox:latest.)
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.kata

IMAGE = os.environ.get("GUESTINIT_E2E_IMAGE", "docker.io/library/busybox:latest")
CONTAINERD_SOCKET = Path("/run/containerd/containerd.sock")
KATA_PREFIX = Path("/opt/kata")


def _missing() -> str | None:
    """Why this machine cannot run the test, or None."""
    if os.geteuid() != 0:
        return "needs root (containerd and /dev/kvm)"
    for tool in ("ctr", "containerd-shim-kata-v2"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (containerd and Kata Containers are needed)"
    if not CONTAINERD_SOCKET.exists():
        return f"containerd is not running ({CONTAINERD_SOCKET} is missing)"
    if not (KATA_PREFIX / "share" / "kata-containers").is_dir():
        return f"no Kata install under {KATA_PREFIX} to take the kata-agent from"
    from guestinit.host import qemu
    from guestinit.host.build.images import repo_root

    kernels = sorted((repo_root() / "build").glob("kata*/guestinit-kata.vmlinuz"))
    probe_kernel = kernels[0] if kernels else None
    if probe_kernel is None:
        vmlinuz = sorted(Path("/boot").glob("vmlinuz-*"))
        probe_kernel = vmlinuz[-1] if vmlinuz else None
    if probe_kernel is None:
        return "no kernel to probe KVM with"
    usable, why = qemu.probe_kvm(probe_kernel)
    if not usable:
        return f"KVM does not boot guests here ({why})"
    return None


@pytest.fixture(scope="module")
def node() -> None:
    why = _missing()
    if why:
        pytest.skip(f"needs a Kata node: {why}")


def _ctr(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ctr", *args], capture_output=True, text=True, timeout=timeout, check=False)


@pytest.mark.parametrize("form", ["initrd", "erofs"])
def test_a_container_runs_in_the_guest(node: None, tmp_path: Path, form: str) -> None:
    from guestinit.host.build.builder import build
    from guestinit.host.kata import deploy
    from guestinit.host.kata.layout import Layout

    manifest = build("kata", form=form, if_needed=True, log=io.StringIO())  # the agent: /opt/kata's
    prefix = tmp_path / "opt-kata"
    code = deploy.deploy_main(["--manifest", os.fspath(manifest), "--prefix", os.fspath(prefix)])
    assert code == 0
    layout = Layout(prefix, deploy.DEFAULT_FLAVOUR)
    config = layout.public()[layout.config_member]
    if _ctr("images", "check", f"name=={IMAGE}").stdout.count("\n") < 2:
        pulled = _ctr("images", "pull", IMAGE)
        if pulled.returncode != 0:
            pytest.skip(f"cannot pull {IMAGE}: {pulled.stderr.strip()[-200:]}")
    name = f"guestinit-e2e-{uuid.uuid4().hex[:8]}"
    run = _ctr(
        "run", "--rm", "--runtime", "io.containerd.kata.v2", "--runtime-config-path", os.fspath(config),
        IMAGE, name, "sh", "-c", "echo hello-from-kata; uname -r",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.split()
    assert lines[0] == "hello-from-kata"
    assert lines[1] == _manifest_kernel(manifest)  # the container ran on the guest's kernel


def _manifest_kernel(manifest: Path) -> str:
    import json

    return str(json.loads(manifest.read_text())["kernel_version"])
