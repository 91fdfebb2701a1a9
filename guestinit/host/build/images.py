"""What ``guestctl build`` can build, and the mkosi command that builds it.

Images, their profiles and their forms are one declarative table. A build target is an image,
a profile (``gpu`` adds NVIDIA's driver) and a form: ``initrd`` (a cpio the kernel unpacks, the
default) or ``erofs`` (Kata's rootfs-image form: a disk whose first partition is the root
filesystem). Each target builds into its own folder under build/; `guestctl boot` and
`guestctl deploy` take the form built last.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from guestinit.atomicfile import write_atomic
from guestinit.host.errors import UserError


@dataclass(frozen=True)
class ImageSpec:
    name: str
    directory: str  # where its mkosi.conf lives, relative to the repository
    image_id: str
    inputs: tuple[str, ...]  # files and folders whose content decides a rebuild
    help: str
    profiles: tuple[str, ...] = ()
    forms: tuple[str, ...] = ("initrd",)
    # Profiles whose initrd the build packs with lz4 (legacy frames, what the kernel reads) from
    # mkosi's plain cpio (CompressOutput=no): the kernel's fastest decoder, half the plain size
    # or less; measured faster than zstd and than plain for each image (the mkosi.conf files).
    lz4: tuple[str, ...] = ()


GUEST_INPUTS = (
    "mkosi.conf",
    "mkosi.profiles",
    "image",
    "guestinit/__init__.py",
    "guestinit/atomicfile.py",
    "guestinit/init",
    "guestinit/notify",
    "guestinit/host/build/trim.py",
)

IMAGES: dict[str, ImageSpec] = {
    "kata": ImageSpec(
        "kata",
        ".",
        "guestinit-kata",
        GUEST_INPUTS,
        "the Kata guest: Debian trixie, guestinit as PID 1, an initrd or an erofs disk image + kernel",
        profiles=("gpu",),
        forms=("initrd", "erofs"),
        lz4=("default", "gpu"),
    ),
    "servicevm": ImageSpec(
        "servicevm",
        "service-vm",
        "guestinit-servicevm",
        (*GUEST_INPUTS, "service-vm", "guestinit/fabric"),
        "the fabricmanager service VM: guestinit, fabricmanager (user-supplied), fm-controller",
        lz4=("default",),
    ),
}


def repo_root() -> Path:
    here = Path(__file__).resolve().parents[3]
    if (here / "mkosi.conf").is_file():
        return here
    cwd = Path.cwd()
    if (cwd / "mkosi.conf").is_file():
        return cwd
    raise UserError(
        "cannot find the guestinit checkout (mkosi.conf)", hint="run guestctl build from the repository"
    )


def cache_dir() -> Path:
    return Path(os.environ.get("GUESTINIT_CACHE", Path.home() / ".cache" / "guestinit"))


def mkosi_python_path() -> Path:
    return cache_dir() / "tools" / "mkosi" / "usr" / "lib" / "python3" / "dist-packages"


@dataclass(frozen=True)
class Target:
    """One build: an image, a profile and a form."""

    spec: ImageSpec
    profile: str = "default"
    form: str = "initrd"

    @property
    def mkosi_profiles(self) -> list[str]:
        return [p for p in (self.profile, self.form) if p not in ("default", "initrd")]

    @property
    def variant(self) -> str:
        """ "" for the default profile's initrd, else e.g. "gpu", "erofs", "gpu-erofs"."""
        return "-".join(self.mkosi_profiles)

    @property
    def lz4(self) -> bool:
        """Its initrd is packed with lz4 after mkosi (ImageSpec.lz4)."""
        return self.form == "initrd" and self.profile in self.spec.lz4

    @property
    def label(self) -> str:
        return f"{self.spec.name} ({self.profile}, {self.form})"


def target(name: str, profile: str = "default", form: str = "initrd") -> Target:
    """The build target, or a UserError naming what is unknown and the choices."""
    if name not in IMAGES:
        raise UserError(f"unknown image {name!r}", hint=f"choose one of {', '.join(IMAGES)}")
    spec = IMAGES[name]
    if profile != "default" and profile not in spec.profiles:
        choices = ", ".join(("default", *spec.profiles))
        raise UserError(f"image {name} has no profile {profile!r}", hint=f"choose one of {choices}")
    if form not in spec.forms:
        raise UserError(f"image {name} has no form {form!r}", hint=f"choose one of {', '.join(spec.forms)}")
    return Target(spec, profile, form)


def input_digest(root: Path, build: Target, extra: dict[str, str]) -> str:
    spec = build.spec
    h = hashlib.sha256()
    h.update(f"{spec.name}\0{build.profile}\0{build.form}\0{json.dumps(extra, sort_keys=True)}\0".encode())
    if build.lz4:  # the same tree packed another way is another build
        h.update(b"lz4\0")
    for entry in spec.inputs:
        base = root / entry
        paths = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())
        for p in paths:
            if "__pycache__" in p.parts or p.suffix == ".pyc":
                continue
            h.update(os.fspath(p.relative_to(root)).encode() + b"\0")
            h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def output_dir(root: Path, build: Target) -> Path:
    """build/<image>[-<profile>][-erofs]: each target has its own folder; ``last_build`` tells
    which of an image's forms was built last."""
    return root / "build" / "-".join(filter(None, (build.spec.name, build.variant)))


def _last_file(root: Path, build: Target) -> Path:
    profile = "" if build.profile == "default" else f"-{build.profile}"
    return root / "build" / f".last-{build.spec.name}{profile}"


def record_last(root: Path, build: Target) -> None:
    """Note that ``build`` is the form of its image and profile that was built (or reused) last."""
    write_atomic(_last_file(root, build), output_dir(root, build).name + "\n")


def last_build(root: Path, name: str = "kata", profile: str = "default") -> Path:
    """The output folder of the form of this image and profile built last (the initrd form's
    folder when none was recorded)."""
    base = target(name, profile)
    try:
        folder = _last_file(root, base).read_text().strip()
    except OSError:
        return output_dir(root, base)
    candidate = root / "build" / folder
    if "/" in folder or not folder.startswith(base.spec.name) or not (candidate / "manifest.json").is_file():
        return output_dir(root, base)
    return candidate


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def mkosi_cache_name(build: Target) -> str:
    """mkosi 25.3 keys its image cache by distribution~release~arch only: every image,
    profile and form with other packages needs its own directory, or each build discards (or,
    run at the same time, collides with) the other's cache."""
    parts = ([] if build.spec.name == "kata" else [build.spec.name]) + build.mkosi_profiles
    return "-".join(["cache", *parts])


def mkosi_command(
    root: Path,
    build: Target,
    out: Path,
    extra_env: dict[str, str],
    volatile_packages: Path | None = None,
    epoch: int | None = None,
    fresh: Path | None = None,
    extras: tuple[str, ...] = (),
) -> list[str]:
    """mkosi's command line for one build. ``fresh`` is a scratch folder for a build from
    nothing (its image and compile caches start empty; downloaded packages are shared);
    ``extras`` are more mkosi options (the kata-agent's tree and packages)."""
    cache = cache_dir()
    spec = build.spec
    image_cache = fresh / "cache" if fresh else cache / "mkosi" / mkosi_cache_name(build)
    # one compile cache for every profile of an image: NVIDIA's modules and the erofs form's
    # kernel are keyed inside it by their own inputs, so gpu-erofs reuses erofs's kernel
    build_cache = fresh / "build" if fresh else cache / "mkosi" / f"build-{spec.name}"
    argv = [
        "/usr/bin/python3",
        "-m",
        "mkosi",
        "-C",
        os.fspath(root / spec.directory),
        "--output-directory",
        os.fspath(out),
        "--cache-directory",
        os.fspath(image_cache),
        "--package-cache-dir",
        os.fspath(cache / "mkosi" / "packages"),
        "--manifest-format",
        "json",
    ]
    if build.mkosi_profiles:
        # the profiles' compile cache (NVIDIA's modules, the erofs form's kernel) lives beside
        # the image cache
        argv += ["--profile", ",".join(build.mkosi_profiles), "--build-directory", os.fspath(build_cache)]
    if volatile_packages is not None:
        argv += ["--volatile-package-directory", os.fspath(volatile_packages)]
    if epoch is not None:
        argv += ["--source-date-epoch", str(epoch)]
    for key, value in sorted(extra_env.items()):
        argv += ["--environment", f"{key}={value}"]
    argv += [*extras, "-f", "build"]
    return argv
