"""Does the image serve sandboxes? The kata-agent a build put into the image, against the Kata
shim installed on this node.

A guest without an agent boots, but every sandbox then waits the runtime's dial_timeout
(1,200 s) for an agent that never answers; an agent of another release than the shim speaks a
protocol the shim may not (references §2b: the agent must match the host's shim). Deploy
refuses both unless told otherwise.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from guestinit.host.build.manifest import BuildManifest
from guestinit.host.errors import DeployError

SHIM = "containerd-shim-kata-v2"
# "Kata Containers containerd shim (Golang): id: "io.containerd.kata.v2", version: 3.19.1, commit: ..."
_SHIM_VERSION = re.compile(r"\bversion:?\s+v?(\d+\.\d+\.\d+[0-9A-Za-z.+~-]*?)(?=[,\s]|$)")
_RELEASE = re.compile(r"(\d+)\.(\d+)\.(\d+)")


def find_shim(prefix: Path) -> Path | None:
    """The shim containerd runs for this prefix: <prefix>/bin first (kata-deploy's place), then PATH."""
    candidate = prefix / "bin" / SHIM
    if os.access(candidate, os.X_OK):
        return candidate
    found = shutil.which(SHIM)
    return Path(found) if found else None


def shim_version(shim: Path) -> str | None:
    """The release ``SHIM --version`` reports, or None when it does not say."""
    try:
        out = subprocess.run(
            [os.fspath(shim), "--version"], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    match = _SHIM_VERSION.search(out.stdout + "\n" + out.stderr)
    return match.group(1) if match else None


def release(text: str) -> tuple[int, int, int] | None:
    match = _RELEASE.search(text)
    return (int(match.group(1)), int(match.group(2)), int(match.group(3))) if match else None


def check(manifest: BuildManifest, prefix: Path, *, allow_no_agent: bool, force: bool) -> list[str]:
    """Lines for the deploy report; raises DeployError when the image cannot serve this node."""
    agent = manifest.agent
    if agent is None:
        if not allow_no_agent:
            raise DeployError(
                f"{manifest.path}: the image has no kata-agent, so every sandbox would wait "
                "dial_timeout (1200 s) for it",
                hint="rebuild with `guestctl build kata --kata-agent SOURCE` (a Kata image, initrd, "
                "release tarball or prefix), or pass --allow-no-agent",
            )
        return ["  agent    none in the image (--allow-no-agent): sandboxes will not start"]
    shim = find_shim(prefix)
    shim_release = shim_version(shim) if shim is not None else None
    line = (
        f"  agent    kata-agent {agent.version} ({agent.linking or 'linking unknown'}; from {agent.source})"
    )
    if shim is None:
        return [
            line,
            f"  shim     no {SHIM} in {prefix / 'bin'} or on PATH: the agent's release is not checked",
        ]
    where = f"{shim} {shim_release}" if shim_release else f"{shim} (version unknown)"
    ours, theirs = release(agent.version), release(shim_release or "")
    if ours is not None and theirs is not None and ours != theirs:
        if not force:
            raise DeployError(
                f"kata-agent {agent.version} in {manifest.path.parent} does not match the node's shim "
                f"{where}: the agent must be of the shim's release",
                hint="rebuild with `guestctl build kata --kata-agent` from this node's Kata "
                f"(e.g. --kata-agent {prefix}), or pass --force",
            )
        return [line, f"  shim     {where}: release differs (--force)"]
    verdict = "same release" if ours is not None and ours == theirs else "release not comparable"
    return [line, f"  shim     {where}: {verdict}"]
