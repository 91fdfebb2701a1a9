"""The kata-agent a Kata guest build carries: taken from the Kata the user runs (agentsource/
finds and checks it), put into the image by mkosi with the libraries it needs, its version read
inside the finished image, and recorded in the manifest.

Without --kata-agent the build takes the agent of the Kata installed under /opt/kata (the
agent must match the node's shim); with none there, it builds without one and says so loudly.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from guestinit.host.agentsource import (
    NO_AGENT_WARNING,
    ResolvedAgent,
    default_source,
    manifest_entry,
    resolve_agent,
    summary,
    with_version,
)
from guestinit.host.agentsource.facts import AgentFacts
from guestinit.host.build.images import Target
from guestinit.host.errors import UserError

KATA_PREFIX = Path("/opt/kata")
AGENT_PATH = "usr/bin/kata-agent"
LIBDIR = "usr/lib/x86_64-linux-gnu"


@dataclass(frozen=True)
class Staged:
    agent: ResolvedAgent
    tree: Path  # an extra tree for mkosi: usr/bin/kata-agent and libraries the source brought

    @property
    def mkosi_options(self) -> tuple[str, ...]:
        packages = self.agent.libraries.packages
        return (
            "--extra-tree",
            f"{os.fspath(self.tree)}:/",
            *(("--package", ",".join(packages)) if packages else ()),
        )

    @property
    def digest_input(self) -> str:
        """What of the agent decides a rebuild: its bytes and the libraries' sources."""
        libraries = ",".join(f"{k}={v}" for k, v in sorted(self.agent.libraries.origin.items()))
        return f"{self.agent.sha256};{libraries}"


def stage(source: str | None, what: Target, work: Path, log: TextIO) -> Staged | None:
    """Resolve the agent (before anything is built: bad input fails here, the last build
    untouched) and lay out its tree under ``work``; None when the image gets no agent."""
    if what.spec.name != "kata":
        if source is not None:
            raise UserError(
                f"--kata-agent is for the kata image, not {what.spec.name}", hint="drop --kata-agent"
            )
        return None
    if source is None:
        found = default_source(KATA_PREFIX, what.profile)
        if found is None:
            print(NO_AGENT_WARNING.format(prefix=KATA_PREFIX), file=log, flush=True)
            return None
        source = os.fspath(found)
        print(f"kata-agent: no --kata-agent given; taking the agent of the Kata under {found}", file=log)
    agent = resolve_agent(source, work / "agent", what.profile)
    tree = work / "tree"
    shutil.rmtree(tree, ignore_errors=True)
    (tree / AGENT_PATH).parent.mkdir(parents=True)
    shutil.copy2(agent.path, tree / AGENT_PATH)
    (tree / AGENT_PATH).chmod(0o755)
    for soname, path in sorted(agent.libraries.files.items()):
        (tree / LIBDIR).mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, tree / LIBDIR / soname)
    line = summary(AgentFacts(agent))
    print(f"kata-agent: {line}", file=log, flush=True)
    if agent.libraries.packages:
        print(f"kata-agent: its libraries from Debian: {', '.join(agent.libraries.packages)}", file=log)
    return Staged(agent, tree)


def record(staged: Staged, dest: Path, image_id: str) -> dict[str, Any]:
    """The manifest's kata_agent, with the version the finished image's own agent reported
    (image/mkosi.finalize runs it inside the trimmed tree)."""
    version_file = dest / f"{image_id}.agent-version"
    try:
        line = version_file.read_text().strip()
    except OSError:
        raise UserError(
            f"the image's /{AGENT_PATH} did not report a version ({version_file.name} missing)",
            hint="see image/mkosi.finalize's output above",
            exit_code=1,
        ) from None
    version_file.unlink()
    return manifest_entry(with_version(staged.agent, line))
