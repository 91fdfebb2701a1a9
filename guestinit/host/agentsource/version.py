"""The agent's version, from what ``kata-agent --version`` prints:

    kata-agent version 3.2.0 (api version: 0.0.1, commit version: 3.2.0-<sha>, type: rust)
    kata-agent version 3.5.0 (api version: 0.0.1, commit version: ..., type: rust, extra-features: [...])

(kata-containers src/agent/src/main.rs). A static agent runs on this host; a dynamic one runs
where its libraries are: ``in_root`` starts it through the image tree's own dynamic loader
with that tree's library directories (no chroot, no privilege), or the caller runs
``VERSION_ARGS`` inside the image by its own means and hands the output to ``parse``."""

from __future__ import annotations

import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from guestinit.host.agentsource.libraries import LIBRARY_DIRS
from guestinit.host.agentsource.trees import DirTree, TreeError, resolve

VERSION_ARGS = ("--version",)
TIMEOUT_S = 20
LINE = re.compile(
    r"^kata-agent version (?P<version>[0-9][0-9A-Za-z.+~-]*)"
    r" \(api version: (?P<api>[^,)]*), commit version: (?P<commit>[^,)]*), type: (?P<type>[^,)]*)"
    r"(?:, extra-features: \[(?P<features>[^\]]*)\])?\)\s*$",
    re.M,
)


class VersionError(ValueError):
    """The executable did not print an agent version (the message says what it did)."""


@dataclass(frozen=True)
class VersionInfo:
    version: str
    api_version: str
    commit: str
    features: tuple[str, ...]


def parse(text: str) -> VersionInfo:
    match = LINE.search(text)
    if match is None:
        shown = text.strip().splitlines()[0][:120] if text.strip() else "nothing"
        raise VersionError(f"`--version` printed {shown!r}, not a kata-agent version line")
    features = tuple(f.strip().strip('"') for f in (match["features"] or "").split(",") if f.strip())
    return VersionInfo(match["version"], match["api"], match["commit"], features)


def _run(argv: list[str]) -> VersionInfo:
    with tempfile.TemporaryDirectory(prefix="agent-version-") as cwd:
        try:
            proc = subprocess.run(
                argv,
                cwd=cwd,
                env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"},
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise VersionError(f"`--version` did not finish within {TIMEOUT_S} s") from None
        except OSError as exc:
            raise VersionError(f"cannot run it ({exc.strerror})") from None
    out = proc.stdout.decode("utf-8", "replace")
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise VersionError(f"`--version` exited {proc.returncode}: {err[-1] if err else out.strip()[:120]}")
    return parse(out)


def on_host(agent: Path) -> VersionInfo:
    """Run a static agent here (a dynamic one would take this host's libraries: use in_root)."""
    return _run([str(agent), *VERSION_ARGS])


def in_root(root: Path, agent: str, interpreter: str | None) -> VersionInfo:
    """Run ``agent`` (a path inside the guest tree ``root``) with the tree's own loader and
    libraries; ``interpreter`` is the agent's PT_INTERP (None for a static agent)."""
    tree = DirTree(root)
    try:
        exe = tree.path(resolve(tree, agent).path)
        if interpreter is None:
            return _run([str(exe), *VERSION_ARGS])
        loader = tree.path(resolve(tree, interpreter).path)
    except TreeError as exc:
        raise VersionError(f"{root}: {exc}") from None
    dirs: list[str] = []
    for d in LIBRARY_DIRS:
        try:
            found = resolve(tree, d)
        except TreeError:  # absent (or a link out of the tree): not searched
            continue
        if found.entry.kind == "dir" and str(tree.path(found.path)) not in dirs:
            dirs.append(str(tree.path(found.path)))
    return _run([str(loader), "--inhibit-cache", "--library-path", ":".join(dirs), str(exe), *VERSION_ARGS])
