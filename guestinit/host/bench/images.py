"""What ``guestctl bench`` boots: one table of built-in images (name, caption, how to get it) and
``NAME=PATH`` for any other image, and the one kernel every image of a run boots with.

Built-ins: ``guestinit`` (the default Kata initrd), ``guestinit-erofs`` (Kata's rootfs-image form of
the same image: an erofs disk the kernel mounts, with its own kernel), ``guestinit-gpu`` (the GPU
flavour's initrd), ``servicevm`` (the fabricmanager service VM), ``busybox`` (the floor) and
``systemd`` (the baselines). The guestinit images are built when their inputs changed
(``guestctl build --if-needed``), without changing which form `guestctl boot` takes.

One kernel for every image keeps the comparison fair. A disk image needs its own kernel (virtio-blk
and erofs built in, which the initrd forms boot as well), so when one is in the run that kernel
boots every image; otherwise the kernel beside the first guestinit image does; ``--kernel`` wins.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from guestinit.host.errors import UserError

DEFAULT = ("guestinit", "busybox", "systemd")


@dataclass(frozen=True)
class BenchImage:
    name: str
    path: Path  # an initrd (newc cpio, plain or compressed) or a disk image
    caption: str
    form: str  # "initrd" | "image" (guestinit.host.media.image_form)
    kernel: Path | None  # the kernel beside it (its build's), None for the baselines
    own_kernel: bool = False  # it boots only with that kernel (a disk image)


def _built(name: str, profile: str = "default", form: str = "initrd") -> Callable[[], Path]:
    def get() -> Path:
        from guestinit.host.build.builder import build

        what = f"guestctl build {name}" + (f" --profile {profile}" if profile != "default" else "")
        what += f" --format {form}" if form != "initrd" else ""
        print(f"guestctl bench: checking the image ({what} --if-needed)", file=sys.stderr, flush=True)
        manifest = build(name, profile=profile, form=form, if_needed=True, remember=False)
        return image_of(manifest)

    return get


def _busybox() -> Path:
    from guestinit.host.bench import baselines

    return baselines.busybox_floor()


def _systemd() -> Path:
    from guestinit.host.bench import baselines

    return baselines.systemd_baseline()


@dataclass(frozen=True)
class Builtin:
    name: str
    caption: str
    get: Callable[[], Path]


BUILTINS: dict[str, Builtin] = {
    b.name: b
    for b in (
        Builtin("guestinit", "guestinit as PID 1", _built("kata")),
        Builtin("guestinit-erofs", "guestinit, erofs disk (Kata's image form)", _built("kata", form="erofs")),
        Builtin("guestinit-gpu", "guestinit, GPU flavour", _built("kata", profile="gpu")),
        Builtin("servicevm", "service VM: guestinit + fm-controller", _built("servicevm")),
        Builtin("busybox", "busybox sh /init (floor)", _busybox),
        Builtin("systemd", "systemd as init", _systemd),
    )
}


def image_of(manifest: Path) -> Path:
    """The rootfs artifact (initrd or disk image) a build's manifest names."""
    try:
        artifacts = json.loads(manifest.read_text())["artifacts"]
        name = next(str(a["name"]) for a in artifacts if a["kind"] in ("initrd", "image"))
    except (OSError, ValueError, KeyError, TypeError, StopIteration):
        raise UserError(
            f"{manifest} names no initrd or disk image", hint="rebuild with guestctl build"
        ) from None
    return manifest.parent / name


def parse_specs(specs: list[str] | None) -> list[tuple[str, Path | None]]:
    """``NAME`` (a built-in) or ``NAME=PATH``; names are unique."""
    out: list[tuple[str, Path | None]] = []
    for spec in specs or list(DEFAULT):
        name, sep, path = spec.partition("=")
        if not name or not all(c.isalnum() or c in "-_." for c in name):
            raise UserError(f"--image {spec!r}: bad name", hint="use letters, digits, - _ . (e.g. guestinit)")
        if sep and not path:
            raise UserError(f"--image {spec!r}: empty path", hint="use NAME=PATH")
        if not sep and name not in BUILTINS:
            raise UserError(
                f"--image {spec!r} is not a built-in image", hint=f"use {', '.join(BUILTINS)} or NAME=PATH"
            )
        if any(name == n for n, _ in out):
            raise UserError(f"--image {name} given twice", hint="name each image once")
        out.append((name, Path(path) if sep else None))
    return out


def resolve(specs: list[tuple[str, Path | None]]) -> list[BenchImage]:
    """Each image's file (built-ins built or taken from the cache), form and kernel."""
    from guestinit.host.media import image_form

    images = []
    for name, given in specs:
        path = BUILTINS[name].get() if given is None else given
        if not path.is_file():
            raise UserError(
                f"--image {name}={path}: file not found", hint="give an existing initrd or disk image"
            )
        form = image_form(path)
        kernel = _kernel_beside(path)
        if form == "image" and kernel is None:
            raise UserError(
                f"--image {name}={path} is a disk image with no kernel beside it",
                hint="give the build's folder as it is (guestctl build kata --format erofs), or --kernel",
            )
        caption = BUILTINS[name].caption if name in BUILTINS and given is None else path.name
        images.append(BenchImage(name, path, caption, form, kernel, own_kernel=form == "image"))
    return images


def _kernel_beside(image: Path) -> Path | None:
    from guestinit.host.media import resolve_kernel

    try:
        return resolve_kernel(image, None)
    except UserError:
        return None


def choose_kernel(images: list[BenchImage], given: Path | None) -> tuple[Path, str]:
    """The one kernel of the run, and why that one."""
    from guestinit.host.media import resolve_kernel

    if given is not None:
        return resolve_kernel(given, given), "--kernel"
    own = [i for i in images if i.own_kernel and i.kernel is not None]
    if own:
        kernel = own[0].kernel
        assert kernel is not None
        other = next((i for i in own[1:] if i.kernel and i.kernel.read_bytes() != kernel.read_bytes()), None)
        if other is not None:
            raise UserError(
                f"{own[0].name} and {other.name} each need their own kernel ({kernel}, {other.kernel})",
                hint="bench them in separate runs, or give --kernel",
            )
        return kernel, f"{own[0].name}'s own kernel (a disk image), for every image"
    for image in images:
        if image.kernel is not None and image.name.startswith("guestinit"):
            return image.kernel, f"beside {image.name}"
    for image in images:
        if image.kernel is not None:
            return image.kernel, f"beside {image.name}"
    kernel = _kernel_beside(_built("kata")())
    if kernel is None:
        raise UserError("no kernel beside the guestinit image", hint="pass --kernel")
    return kernel, "beside the guestinit image"
