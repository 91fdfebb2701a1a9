"""The kata-agent a Kata guest image carries, taken from the Kata the user runs.

    agent = resolve_agent(SOURCE, out_dir, profile)   # executable, initrd, image, tarball, prefix
    facts = probe_on_host(agent)                      # static agents; else version.in_root/with_version
    manifest["kata_agent"] = manifest_entry(facts)

``default_source()`` says whether /opt/kata holds a Kata to take it from; ``NO_AGENT_WARNING``
is what a build without one prints."""

from guestinit.host.agentsource.facts import (
    NO_AGENT_WARNING,
    AgentFacts,
    default_source,
    manifest_entry,
    probe_on_host,
    summary,
    with_version,
)
from guestinit.host.agentsource.libraries import SONAME_PACKAGES, LibraryPlan
from guestinit.host.agentsource.resolve import ResolvedAgent, check_agent, resolve_agent

__all__ = [
    "NO_AGENT_WARNING",
    "SONAME_PACKAGES",
    "AgentFacts",
    "LibraryPlan",
    "ResolvedAgent",
    "check_agent",
    "default_source",
    "manifest_entry",
    "probe_on_host",
    "resolve_agent",
    "summary",
    "with_version",
]
