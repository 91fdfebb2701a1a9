"""The shared libraries a dynamically linked agent needs, and where the guest gets each one.

A Debian trixie package when the soname table names one (the image installs it with its own
dependencies); else the library file found in the Kata image or initrd the agent came from
(copied into the guest, its own DT_NEEDED followed the same way); else an error naming it."""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import guestinit.host.agentsource.elf as elf

# soname -> Debian trixie (amd64) binary package shipping it. Package names checked against
# trixie's Packages index, sonames with `dpkg -S` on Debian 12 (unchanged in trixie; libssl3 was
# renamed libssl3t64 there). Kata >= 4.0's agent: glibc + libgcc + libdevmapper (+ libseccomp
# when not linked statically); the rest is what those and a rebuilt agent may pull in.
SONAME_PACKAGES: dict[str, str] = {
    "ld-linux-x86-64.so.2": "libc6",
    "libc.so.6": "libc6",
    "libm.so.6": "libc6",
    "libpthread.so.0": "libc6",
    "libdl.so.2": "libc6",
    "librt.so.1": "libc6",
    "libutil.so.1": "libc6",
    "libresolv.so.2": "libc6",
    "libgcc_s.so.1": "libgcc-s1",
    "libstdc++.so.6": "libstdc++6",
    "libdevmapper.so.1.02.1": "libdevmapper1.02.1",
    "libseccomp.so.2": "libseccomp2",
    "libselinux.so.1": "libselinux1",
    "libudev.so.1": "libudev1",
    "libpcre2-8.so.0": "libpcre2-8-0",
    "libcryptsetup.so.12": "libcryptsetup12",
    "libssl.so.3": "libssl3t64",
    "libcrypto.so.3": "libssl3t64",
    "libz.so.1": "zlib1g",
    "libzstd.so.1": "libzstd1",
    "liblzma.so.5": "liblzma5",
    "libcap.so.2": "libcap2",
    "libblkid.so.1": "libblkid1",
    "libmount.so.1": "libmount1",
    "libkeyutils.so.1": "libkeyutils1",
    "libcrypt.so.1": "libcrypt1",
}

# Where a guest tree keeps its libraries (Debian/Ubuntu multiarch first, then the classic ones).
LIBRARY_DIRS = (
    "usr/lib/x86_64-linux-gnu",
    "lib/x86_64-linux-gnu",
    "usr/lib64",
    "lib64",
    "usr/lib",
    "lib",
)


class MissingLibrary(LookupError):
    def __init__(self, soname: str, needed_by: str) -> None:
        super().__init__(soname)
        self.soname = soname
        self.needed_by = needed_by


@dataclass(frozen=True)
class LibraryPlan:
    """packages: Debian packages to install; files: soname -> file staged from the source (to go
    into the guest's /usr/lib/x86_64-linux-gnu); origin: soname -> 'deb:<package>' or
    'source:/<path in the image>'."""

    packages: tuple[str, ...] = ()
    files: dict[str, Path] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)


# (soname) -> (staged file, its path inside the source tree), or None when the source lacks it.
Finder = Callable[[str], tuple[Path, str] | None]


def plan(info: elf.ElfInfo, find: Finder | None, table: dict[str, str] = SONAME_PACKAGES) -> LibraryPlan:
    """Map every library the agent needs (transitively for files taken from the source) to its
    origin. Raises MissingLibrary for one neither the table nor the source provides."""
    if info.linking == "static":
        return LibraryPlan()
    queue: list[tuple[str, str]] = [(n, "kata-agent") for n in info.needed]
    if info.interpreter is not None:
        queue.insert(0, (posixpath.basename(info.interpreter), "kata-agent (its interpreter)"))
    packages: set[str] = set()
    files: dict[str, Path] = {}
    origin: dict[str, str] = {}
    while queue:
        soname, needed_by = queue.pop(0)
        if soname in origin:
            continue
        if soname in table:
            packages.add(table[soname])
            origin[soname] = f"deb:{table[soname]}"
            continue
        found = find(soname) if find is not None else None
        if found is None:
            raise MissingLibrary(soname, needed_by)
        staged, inside = found
        files[soname] = staged
        origin[soname] = f"source:/{inside}"
        try:
            lib = elf.read(staged)
        except (OSError, elf.ElfError):
            raise MissingLibrary(soname, needed_by) from None
        queue.extend((n, soname) for n in lib.needed)
    return LibraryPlan(tuple(sorted(packages)), files, origin)
