"""Where a Kata install keeps its guest images, and which one a build profile takes.

Names from Kata's release layout (references §2/§2b): under ``<prefix>/share/kata-containers/``
each public name is a symlink to a versioned file (``kata-<os>-<ver>[-<variant>].image|.initrd``).
A release tarball holds the same tree under ``./opt/kata/``."""

from __future__ import annotations

ASSET_DIR = "share/kata-containers"
TARBALL_ASSET_DIR = "opt/kata/share/kata-containers"
DEFAULT_PREFIX = "/opt/kata"

# Build profile -> the public names to try, in order. The GPU profile falls back to the default
# image (the agent is built once per release; the flavours differ in what surrounds it).
ASSETS: dict[str, tuple[str, ...]] = {
    "default": ("kata-containers.img", "kata-containers-initrd.img"),
    "gpu": (
        "kata-containers-nvidia-gpu.img",
        "kata-containers-initrd-nvidia-gpu.img",
        "kata-containers-nvidia.img",
        "kata-containers.img",
        "kata-containers-initrd.img",
    ),
}

# Inside a guest tree: where the agent lives. /usr/bin/kata-agent in images (started by systemd or
# by NVRC); /sbin/init in an AGENT_INIT=yes initrd (/init -> /sbin/init). An init candidate is
# taken only when it is the agent (not systemd, NVRC or busybox).
AGENT_PATHS = ("usr/bin/kata-agent",)
INIT_PATHS = ("sbin/init", "init")


def candidates(profile: str) -> tuple[str, ...]:
    try:
        return ASSETS[profile]
    except KeyError:
        raise ValueError(f"unknown profile {profile!r} (known: {', '.join(ASSETS)})") from None


def fallback_note(profile: str, taken: str) -> str | None:
    """A sentence when the image taken is not the profile's first choice."""
    first = candidates(profile)[0]
    if taken == first:
        return None
    return f"no {first} there: took {taken}"
