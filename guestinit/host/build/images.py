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
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from guestinit import __version__
from guestinit.atomicfile import write_atomic
from guestinit.host.build import reproducible
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


def write_manifest(out: Path, spec: ImageSpec, profile: str, digest: str, seconds: float, epoch: int) -> Path:
    """manifest.json: what was built from what. Everything but build_seconds follows from the
    inputs: the version is the guestinit release, the inputs' date (SOURCE_DATE_EPOCH) and
    their digest, so two builds of the same inputs name the same version."""
    kver_file = out / f"{spec.image_id}.kver"
    when = datetime.datetime.fromtimestamp(epoch, datetime.UTC)
    manifest = {
        "image": spec.name,
        "profile": profile,
        "version": f"{__version__}-{when.strftime('%Y%m%d%H%M%S')}-{digest[:8]}",
        "built": when.isoformat(timespec="seconds"),
        "source_date_epoch": epoch,
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
    epoch: int | None = None,
    fresh: Path | None = None,
) -> list[str]:
    """mkosi's command line for one build. ``fresh`` is a scratch folder for a build from
    nothing (its image and compile caches start empty; downloaded packages are shared)."""
    cache = cache_dir()
    image_cache = fresh / "cache" if fresh else cache / "mkosi" / mkosi_cache_name(spec, profile)
    build_cache = fresh / "build" if fresh else cache / "mkosi" / f"build-{profile}"
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
    if profile != "default":
        # the profile's compile cache (e.g. NVIDIA's modules) lives beside the image cache
        argv += ["--profile", profile, "--build-directory", os.fspath(build_cache)]
    if volatile_packages is not None:
        argv += ["--volatile-package-directory", os.fspath(volatile_packages)]
    if epoch is not None:
        argv += ["--source-date-epoch", str(epoch)]
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
    check_reproducible: bool = False,
) -> Path:
    """Build (or reuse) one image; returns its manifest path. ``packages`` is a directory of
    user-supplied .deb files (NVIDIA's fabricmanager and nscq for the service VM).

    mkosi writes into a staging folder beside build/<image>; only a complete build replaces
    the last one, so a failed or interrupted build leaves the last good one in place."""
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
    if if_needed and not check_reproducible:
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
    epoch, epoch_source = reproducible.source_date_epoch(root, spec.inputs)
    when = datetime.datetime.fromtimestamp(epoch, datetime.UTC).isoformat(timespec="seconds")
    _say(log, f"SOURCE_DATE_EPOCH={epoch} ({when}, {epoch_source})")
    staging = out.with_name(f".{out.name}.staging")
    seconds = _run_mkosi(root, spec, profile, staging, extra_env, packages, epoch, log)
    write_manifest(staging, spec, profile, digest, seconds, epoch)
    _replace_dir(staging, out)
    _save_to_cache(out, cached)
    manifest = out / "manifest.json"
    data = json.loads(manifest.read_text())
    for artifact in data["artifacts"]:
        _say(log, f"  {artifact['name']:<36} {artifact['size'] / 1e6:8.1f} MB  sha256 {artifact['sha256']}")
    _say(log, f"built {name} ({profile}) in {seconds:.0f} s; manifest {manifest.relative_to(root)}")
    if check_reproducible:
        _check_reproducible(root, spec, profile, out, extra_env, packages, epoch, data, log)
    return manifest


def _run_mkosi(
    root: Path,
    spec: ImageSpec,
    profile: str,
    dest: Path,
    extra_env: dict[str, str],
    packages: Path | None,
    epoch: int,
    log: TextIO,
    fresh: Path | None = None,
) -> float:
    """One mkosi build into the empty folder ``dest``; the seconds it took."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    argv = mkosi_command(root, spec, profile, dest, extra_env, packages, epoch, fresh)
    env = dict(os.environ, PYTHONPATH=os.fspath(mkosi_python_path()))
    _say(log, f"$ PYTHONPATH={shlex.quote(env['PYTHONPATH'])} {shlex.join(argv)}")
    start = time.monotonic()
    proc = subprocess.run(argv, env=env, cwd=root, check=False)
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        shutil.rmtree(dest, ignore_errors=True)
        raise UserError(
            f"mkosi failed building {spec.name} (exit {proc.returncode}); the last build is untouched",
            hint="see its output above",
            exit_code=1,
        )
    return seconds


def _replace_dir(new: Path, old: Path) -> None:
    """Put the finished build ``new`` where ``old`` was: two renames, so build/<image> always
    holds one whole build (briefly none, never a mix)."""
    trash = old.with_name(f".{old.name}.old")
    shutil.rmtree(trash, ignore_errors=True)
    if old.exists():
        os.replace(old, trash)
    os.replace(new, old)
    shutil.rmtree(trash, ignore_errors=True)


def _check_reproducible(
    root: Path,
    spec: ImageSpec,
    profile: str,
    out: Path,
    extra_env: dict[str, str],
    packages: Path | None,
    epoch: int,
    first: dict[str, Any],
    log: TextIO,
) -> None:
    """Build once more from nothing (fresh mkosi image and compile caches, the same downloaded
    packages) and compare with the build in ``out``; raise naming the first difference."""
    second = out.with_name(f".{out.name}.repro")
    with tempfile.TemporaryDirectory(prefix="guestinit-repro-", dir=cache_dir()) as scratch:
        _say(log, f"--check-reproducible: building {spec.name} ({profile}) again from nothing")
        seconds = _run_mkosi(root, spec, profile, second, extra_env, packages, epoch, log, Path(scratch))
    write_manifest(second, spec, profile, str(first["input_digest"]), seconds, epoch)
    again = json.loads((second / "manifest.json").read_text())
    problems = reproducible.compare(first["artifacts"], again["artifacts"], out, second)
    if problems:
        raise UserError(
            f"{spec.name} ({profile}) is not reproducible: {problems[0]}"
            + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""),
            hint=f"the second build is kept in {second.relative_to(root)} for comparison",
            exit_code=1,
        )
    shutil.rmtree(second, ignore_errors=True)
    _say(
        log,
        f"reproducible: the second build's {len(again['artifacts'])} artifacts are byte for byte the same",
    )


def _say(log: TextIO, text: str) -> None:
    print(text, file=log, flush=True)
