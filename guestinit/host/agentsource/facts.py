"""What a build says and records about the agent it took: the default source, the version,
the manifest's ``kata_agent`` object, the one-line summary, the warning when there is none."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import guestinit.host.agentsource.assets as assets
import guestinit.host.agentsource.version as version
from guestinit.host.agentsource.resolve import ResolvedAgent
from guestinit.host.errors import UserError

NO_AGENT_WARNING = (
    "WARNING: no --kata-agent given and no Kata installed under {prefix}: this image has NO "
    "kata-agent and cannot run containers; pass --kata-agent with a kata-agent, a Kata image or "
    "initrd, a kata-static tarball, or a Kata prefix"
)


def default_source(prefix: Path = Path(assets.DEFAULT_PREFIX), profile: str = "default") -> Path | None:
    """The Kata prefix to take the agent from when the user named none: ``prefix`` when one of
    the profile's guest image names is there, else None. A name that is there but broken (a
    dangling link, one out of the prefix) still answers ``prefix``: resolve_agent then says what
    is wrong, rather than the build silently going without an agent."""
    if not prefix.is_dir():
        return None
    for name in assets.candidates(profile):
        if os.path.lexists(prefix / assets.ASSET_DIR / name):
            return prefix
    return None


@dataclasses.dataclass(frozen=True)
class AgentFacts:
    agent: ResolvedAgent
    version: version.VersionInfo | None = None


def probe_on_host(agent: ResolvedAgent) -> AgentFacts:
    """The version of a static agent, run here. A dynamic one needs its libraries: run
    ``version.VERSION_ARGS`` inside the image (or ``version.in_root``), then ``with_version``."""
    if agent.linking != "static":
        raise UserError(
            f"{agent.given}: the agent is dynamically linked; its version is read inside the image",
            hint="call version.in_root(image_root, '/usr/bin/kata-agent', interpreter) after installing it",
        )
    try:
        info = version.on_host(agent.path)
    except version.VersionError as exc:
        raise UserError(f"{agent.given}: {exc}", hint="give a working kata-agent") from None
    return AgentFacts(agent, info)


def with_version(agent: ResolvedAgent, output: str) -> AgentFacts:
    """Facts with the version parsed from ``kata-agent --version``'s output (run anywhere)."""
    try:
        return AgentFacts(agent, version.parse(output))
    except version.VersionError as exc:
        raise UserError(f"{agent.given}: {exc}", hint="give a working kata-agent") from None


def manifest_entry(facts: AgentFacts) -> dict[str, Any]:
    """manifest.json's ``kata_agent`` object."""
    a = facts.agent
    v = facts.version
    return {
        "version": v.version if v else None,
        "version_line": {
            "api_version": v.api_version,
            "commit": v.commit,
            "features": list(v.features),
        }
        if v
        else None,
        "sha256": a.sha256,
        "size": a.size,
        "source": {
            "given": a.given,
            "kind": a.kind,
            "container": a.container,
            "member": a.member,
            "links": list(a.chain),
            "notes": list(a.notes),
        },
        "linking": {
            "type": a.linking,
            "interpreter": a.elf.interpreter,
            "needed": list(a.elf.needed),
        },
        "libraries": dict(sorted(a.libraries.origin.items())),
        "packages": list(a.libraries.packages),
    }


def summary(facts: AgentFacts) -> str:
    """One line for the build log: which file, which version, how linked."""
    a = facts.agent
    where = f"{a.given}" + (f" ({a.member})" if a.member else "")
    ver = facts.version.version if facts.version else "version not read yet"
    link = "static" if a.linking == "static" else f"dynamic: {', '.join(a.elf.needed)}"
    extra = "".join(f"; {n}" for n in a.notes)
    return f"kata-agent {ver} from {where}, {link}, sha256 {a.sha256[:16]}…{extra}"
