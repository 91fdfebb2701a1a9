"""``guestctl build``: build images with mkosi 25.3, put the outputs under build/, write a manifest.

Images and their profiles are one declarative table. Outputs are also kept in
~/.cache/guestinit/images keyed by a digest of every input file, so a fresh clone (CI) or
an unchanged tree reuses them (``--if-needed``) instead of rebuilding.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from guestinit import __version__
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
        "the Kata guest: Debian trixie, guestinit as PID 1, newc cpio + kernel",
        profiles=("gpu",),
    ),
    "servicevm": ImageSpec(
        "servicevm",
        "service-vm",
        "guestinit-servicevm",
        (*GUEST_INPUTS, "service-vm", "guestinit/fabric"),
        "the fabricmanager service VM: guestinit, fabricmanager (user-supplied), fm-controller",
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


def input_digest(root: Path, spec: ImageSpec, profile: str, extra: dict[str, str]) -> str:
    h = hashlib.sha256()
    h.update(f"{spec.name}\0{profile}\0{json.dumps(extra, sort_keys=True)}\0".encode())
    for entry in spec.inputs:
        base = root / entry
        paths = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())
        for p in paths:
            if "__pycache__" in p.parts or p.suffix == ".pyc":
                continue
            h.update(os.fspath(p.relative_to(root)).encode() + b"\0")
            h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def output_dir(root: Path, spec: ImageSpec, profile: str) -> Path:
    return root / "build" / (spec.name if profile == "default" else f"{spec.name}-{profile}")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _artifacts(out: Path, image_id: str) -> list[dict[str, object]]:
    kinds = {
        ".cpio": "initrd",
        ".cpio.zst": "initrd",
        ".vmlinuz": "kernel",
        ".raw": "disk",
        ".erofs": "erofs",
    }
    artifacts = []
    for path in sorted(out.iterdir()):
        if path.is_symlink() or not path.is_file() or not path.name.startswith(image_id):
            continue
        kind = next((k for suffix, k in kinds.items() if path.name.endswith(suffix)), None)
        if kind is None:
            continue
        artifacts.append(
            {"name": path.name, "kind": kind, "sha256": sha256_file(path), "size": path.stat().st_size}
        )
    return artifacts


def _packages(out: Path, image_id: str) -> dict[str, str]:
    manifest = out / f"{image_id}.manifest"
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(manifest.read_text())
        return {p["name"]: p["version"] for p in data.get("packages", []) if "name" in p}
    return {}


def write_manifest(out: Path, spec: ImageSpec, profile: str, digest: str, seconds: float) -> Path:
    kver_file = out / f"{spec.image_id}.kver"
    now = datetime.datetime.now(datetime.UTC)
    manifest = {
        "image": spec.name,
        "profile": profile,
        "version": f"{__version__}-{now.strftime('%Y%m%d%H%M%S')}",
        "built": now.isoformat(timespec="seconds"),
        "build_seconds": round(seconds, 1),
        "input_digest": digest,
        "kernel_version": kver_file.read_text().strip() if kver_file.is_file() else "",
        "artifacts": _artifacts(out, spec.image_id),
        "packages": _packages(out, spec.image_id),
    }
    path = out / "manifest.json"
    write_atomic(path, json.dumps(manifest, indent=2) + "\n")
    return path


def _up_to_date(out: Path, digest: str) -> bool:
    with contextlib.suppress(OSError, ValueError):
        data = json.loads((out / "manifest.json").read_text())
        if data.get("input_digest") != digest:
            return False
        return all(
            (out / a["name"]).is_file() and (out / a["name"]).stat().st_size == a["size"]
            for a in data["artifacts"]
        )
    return False


def _remove_previous_outputs(out: Path) -> None:
    """Delete the artifacts the last build's manifest lists (mkosi is about to write them
    again), so one that mkosi no longer writes, such as an initrd renamed from .cpio.zst to
    .cpio, neither lingers for a tool to pick up nor lands in the new manifest."""
    try:
        artifacts = json.loads((out / "manifest.json").read_text())["artifacts"]
        names = [str(a["name"]) for a in artifacts]
    except (OSError, ValueError, KeyError, TypeError):
        return
    for name in names:
        if name and "/" not in name and name not in (".", ".."):
            (out / name).unlink(missing_ok=True)


def _restore_from_cache(cached: Path, out: Path, digest: str) -> bool:
    if not _up_to_date(cached, digest):
        return False
    tmp = out.with_name(out.name + ".restore")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(cached, tmp, symlinks=True)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return True


def _save_to_cache(out: Path, cached: Path) -> None:
    tmp = cached.with_name(cached.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    cached.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(out, tmp, symlinks=True)
    shutil.rmtree(cached, ignore_errors=True)
    os.replace(tmp, cached)


def mkosi_cache_name(spec: ImageSpec, profile: str) -> str:
    """mkosi 25.3 keys its image cache by distribution~release~arch only: every image and
    profile with other packages needs its own directory, or each build discards (or, run at
    the same time, collides with) the other's cache."""
    if spec.name == "kata":
        return "cache" if profile == "default" else f"cache-{profile}"
    return f"cache-{spec.name}" + ("" if profile == "default" else f"-{profile}")


def mkosi_command(
    root: Path,
    spec: ImageSpec,
    profile: str,
    out: Path,
    extra_env: dict[str, str],
    volatile_packages: Path | None = None,
) -> list[str]:
    cache = cache_dir()
    argv = [
        "/usr/bin/python3",
        "-m",
        "mkosi",
        "-C",
        os.fspath(root / spec.directory),
        "--output-directory",
        os.fspath(out),
        "--cache-directory",
        os.fspath(cache / "mkosi" / mkosi_cache_name(spec, profile)),
        "--package-cache-dir",
        os.fspath(cache / "mkosi" / "packages"),
        "--manifest-format",
        "json",
    ]
    if profile != "default":
        # the profile's compile cache (e.g. NVIDIA's modules) lives beside the image cache
        argv += ["--profile", profile, "--build-directory", os.fspath(cache / "mkosi" / f"build-{profile}")]
    if volatile_packages is not None:
        argv += ["--volatile-package-directory", os.fspath(volatile_packages)]
    for key, value in sorted(extra_env.items()):
        argv += ["--environment", f"{key}={value}"]
    argv += ["-f", "build"]
    return argv


def build(
    name: str = "kata",
    profile: str = "default",
    if_needed: bool = False,
    extra_env: dict[str, str] | None = None,
    log: TextIO = sys.stderr,
    packages: Path | None = None,
) -> Path:
    """Build (or reuse) one image; returns its manifest path. ``packages`` is a directory of
    user-supplied .deb files (NVIDIA's fabricmanager and nscq for the service VM)."""
    if name not in IMAGES:
        raise UserError(f"unknown image {name!r}", hint=f"choose one of {', '.join(IMAGES)}")
    spec = IMAGES[name]
    if profile != "default" and profile not in spec.profiles:
        choices = ", ".join(("default", *spec.profiles))
        raise UserError(f"image {name} has no profile {profile!r}", hint=f"choose one of {choices}")
    root = repo_root()
    extra_env = dict(extra_env or {})
    digest_env = dict(extra_env)
    if packages is not None:
        debs = sorted(packages.glob("*.deb")) if packages.is_dir() else []
        if not debs:
            raise UserError(
                f"package directory {packages} holds no .deb files",
                hint="give the folder with NVIDIA's nvidia-fabricmanager and libnvidia-nscq .deb files",
            )
        packages = packages.resolve()
        digest_env["packages"] = ",".join(f"{d.name}:{sha256_file(d)}" for d in debs)
    elif spec.name == "servicevm":
        _say(
            log,
            "servicevm: no --fabricmanager DIR given; building without NVIDIA fabricmanager "
            "(no registry here has it): the VM boots with X_GUESTINIT_DEGRADED=fabricmanager",
        )
    digest = input_digest(root, spec, profile, digest_env)
    out = output_dir(root, spec, profile)
    cached = cache_dir() / "images" / out.name
    if if_needed:
        if _up_to_date(out, digest):
            _say(log, f"{out.relative_to(root)} is up to date (inputs unchanged)")
            return out / "manifest.json"
        if _restore_from_cache(cached, out, digest):
            _say(log, f"restored {out.relative_to(root)} from {cached}")
            return out / "manifest.json"
    if not (mkosi_python_path() / "mkosi").is_dir():
        raise UserError(
            "mkosi 25.3 is not installed in ~/.cache/guestinit/tools", hint="run `make setup` first"
        )
    argv = mkosi_command(root, spec, profile, out, extra_env, packages)
    env = dict(os.environ, PYTHONPATH=os.fspath(mkosi_python_path()))
    _say(log, f"$ PYTHONPATH={shlex.quote(env['PYTHONPATH'])} {shlex.join(argv)}")
    out.mkdir(parents=True, exist_ok=True)
    _remove_previous_outputs(out)
    import time

    start = time.monotonic()
    proc = subprocess.run(argv, env=env, cwd=root, check=False)
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        raise UserError(
            f"mkosi failed building {name} (exit {proc.returncode})", hint="see its output above", exit_code=1
        )
    manifest = write_manifest(out, spec, profile, digest, seconds)
    _save_to_cache(out, cached)
    data = json.loads(manifest.read_text())
    for artifact in data["artifacts"]:
        _say(
            log,
            f"  {artifact['name']:<36} {artifact['size'] / 1e6:8.1f} MB  sha256 {artifact['sha256'][:16]}…",
        )
    _say(log, f"built {name} ({profile}) in {seconds:.0f} s; manifest {manifest.relative_to(root)}")
    return manifest


def _say(log: TextIO, text: str) -> None:
    print(text, file=log, flush=True)
