"""``guestctl build``: run one build and put its outputs under build/, with a manifest.

mkosi writes into a staging folder beside build/<image>; only a complete build (the erofs form
packed, the manifest written) replaces the last one, so a failed or interrupted build leaves
the last good one in place. Outputs are also kept in ~/.cache/guestinit/images keyed by a digest
of every input file, so a fresh clone (CI) or an unchanged tree reuses them (``--if-needed``).
"""

from __future__ import annotations

import datetime
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

from guestinit.host import streams
from guestinit.host.build import agent, erofs, reproducible
from guestinit.host.build.images import (
    Target,
    cache_dir,
    input_digest,
    mkosi_command,
    mkosi_python_path,
    output_dir,
    record_last,
    repo_root,
    sha256_file,
    target,
)
from guestinit.host.build.manifest import up_to_date, write_manifest
from guestinit.host.errors import UserError


def build(
    name: str = "kata",
    profile: str = "default",
    if_needed: bool = False,
    extra_env: dict[str, str] | None = None,
    log: TextIO = sys.stderr,
    packages: Path | None = None,
    check_reproducible: bool = False,
    form: str = "initrd",
    kata_agent: str | None = None,
    remember: bool = True,
) -> Path:
    """Build (or reuse) one image; returns its manifest path. ``packages`` is a directory of
    user-supplied .deb files (NVIDIA's fabricmanager and nscq for the service VM);
    ``kata_agent`` where the Kata guest's agent comes from (None: the Kata under /opt/kata).
    ``remember=False`` (guestctl bench) leaves which form was built last as it was, so
    `guestctl boot` and `guestctl deploy` keep taking the form the user built."""
    what = target(name, profile, form)
    root = repo_root()
    work = root / "build" / f".agent-{what.spec.name}"
    try:
        staged = agent.stage(kata_agent, what, work, log)
        return _build(root, what, staged, if_needed, extra_env, log, packages, check_reproducible, remember)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _build(
    root: Path,
    what: Target,
    staged: agent.Staged | None,
    if_needed: bool,
    extra_env: dict[str, str] | None,
    log: TextIO,
    packages: Path | None,
    check_reproducible: bool,
    remember: bool = True,
) -> Path:
    name = what.spec.name
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
    if staged is not None:
        digest_env["kata_agent"] = staged.digest_input
    elif name == "servicevm":
        _say(
            log,
            "servicevm: no --fabricmanager DIR given; building without NVIDIA fabricmanager "
            "(no registry here has it): the VM boots with X_GUESTINIT_DEGRADED=fabricmanager",
        )
    digest = input_digest(root, what, digest_env)
    out = output_dir(root, what)
    cached = cache_dir() / "images" / out.name
    if if_needed and not check_reproducible:
        if up_to_date(out, digest):
            _say(log, f"{out.relative_to(root)} is up to date (inputs unchanged)")
            if remember:
                record_last(root, what)
            return out / "manifest.json"
        if _restore_from_cache(cached, out, digest):
            _say(log, f"restored {out.relative_to(root)} from {cached}")
            if remember:
                record_last(root, what)
            return out / "manifest.json"
    if not (mkosi_python_path() / "mkosi").is_dir():
        raise UserError(
            "mkosi 25.3 is not installed in ~/.cache/guestinit/tools", hint="run `make setup` first"
        )
    epoch, epoch_source = reproducible.source_date_epoch(root, what.spec.inputs)
    when = datetime.datetime.fromtimestamp(epoch, datetime.UTC).isoformat(timespec="seconds")
    _say(log, f"SOURCE_DATE_EPOCH={epoch} ({when}, {epoch_source})")
    staging = out.with_name(f".{out.name}.staging")
    extras = staged.mkosi_options if staged is not None else ()
    seconds = _run(root, what, staging, extra_env, packages, epoch, digest, log, extras=extras)
    record = agent.record(staged, staging, what.spec.image_id) if staged is not None else None
    write_manifest(staging, what, digest, seconds, epoch, record)
    _replace_dir(staging, out)
    if remember:
        record_last(root, what)
    _save_to_cache(out, cached)
    manifest = out / "manifest.json"
    data = json.loads(manifest.read_text())
    for artifact in data["artifacts"]:
        _say(log, f"  {artifact['name']:<36} {artifact['size'] / 1e6:8.1f} MB  sha256 {artifact['sha256']}")
    _say(log, f"built {what.label} in {seconds:.0f} s; manifest {manifest.relative_to(root)}")
    if record is not None:
        _say(log, f"kata-agent {record['version']} in the image at /{agent.AGENT_PATH}")
    if check_reproducible:
        _check_reproducible(root, what, out, extra_env, packages, epoch, data, log, extras)
    return manifest


def _run(
    root: Path,
    what: Target,
    dest: Path,
    extra_env: dict[str, str],
    packages: Path | None,
    epoch: int,
    digest: str,
    log: TextIO,
    fresh: Path | None = None,
    extras: tuple[str, ...] = (),
) -> float:
    """One mkosi build into the empty folder ``dest``, then the erofs form packed; the seconds
    it took. On failure ``dest`` is removed and the error says the last build is untouched."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    argv = mkosi_command(root, what, dest, extra_env, packages, epoch, fresh, extras)
    env = dict(os.environ, PYTHONPATH=os.fspath(mkosi_python_path()))
    _say(log, f"$ PYTHONPATH={shlex.quote(env['PYTHONPATH'])} {shlex.join(argv)}")
    start = time.monotonic()
    proc = subprocess.run(argv, env=env, cwd=root, check=False)
    if proc.returncode != 0:
        shutil.rmtree(dest, ignore_errors=True)
        raise UserError(
            f"mkosi failed building {what.label} (exit {proc.returncode}); the last build is untouched",
            hint="see its output above",
            exit_code=1,
        )
    try:
        if what.form == "erofs":
            tree = dest / what.spec.image_id
            if not tree.is_dir():
                raise UserError(
                    f"mkosi wrote no folder {tree}", hint="check mkosi.profiles/erofs.conf", exit_code=1
                )
            image = erofs.pack(tree, dest / f"{what.spec.image_id}.img", epoch, digest)
            shutil.rmtree(tree)
            _say(log, f"packed {image.name}: erofs (lz4hc) in partition 1 of an MBR disk")
        elif what.lz4:
            packed = _pack_lz4(dest, what.spec.image_id)
            _say(log, f"packed {packed.name}: lz4 (legacy frames, as the kernel reads them)")
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return time.monotonic() - start


def _pack_lz4(dest: Path, image_id: str) -> Path:
    """mkosi's plain ``<id>.cpio`` -> ``<id>.cpio.lz4`` (the plain one removed, mkosi's ``<id>``
    link pointed at the packed one)."""
    plain = dest / f"{image_id}.cpio"
    if not plain.is_file() or plain.is_symlink():
        raise UserError(
            f"mkosi wrote no {plain.name} to pack with lz4",
            hint="the image's mkosi.conf must say Format=cpio and CompressOutput=no",
            exit_code=1,
        )
    packed = plain.with_name(plain.name + ".lz4")
    try:
        packed.write_bytes(streams.compress(plain.read_bytes(), "lz4"))
    except streams.StreamError as exc:
        raise UserError(
            f"packing {plain.name}: {exc}", hint="apt-get install lz4 (or run make setup)"
        ) from None
    plain.unlink()
    link = dest / image_id
    if link.is_symlink():
        link.unlink()
        link.symlink_to(packed.name)
    return packed


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
    what: Target,
    out: Path,
    extra_env: dict[str, str],
    packages: Path | None,
    epoch: int,
    first: dict[str, Any],
    log: TextIO,
    extras: tuple[str, ...] = (),
) -> None:
    """Build once more from nothing (fresh mkosi image and compile caches, the same downloaded
    packages) and compare with the build in ``out``; raise naming the first difference."""
    second = out.with_name(f".{out.name}.repro")
    digest = str(first["input_digest"])
    with tempfile.TemporaryDirectory(prefix="guestinit-repro-", dir=cache_dir()) as scratch:
        _say(log, f"--check-reproducible: building {what.label} again from nothing")
        seconds = _run(root, what, second, extra_env, packages, epoch, digest, log, Path(scratch), extras)
    (second / f"{what.spec.image_id}.agent-version").unlink(missing_ok=True)
    write_manifest(second, what, digest, seconds, epoch)
    again = json.loads((second / "manifest.json").read_text())
    problems = reproducible.compare(first["artifacts"], again["artifacts"], out, second)
    if problems:
        raise UserError(
            f"{what.label} is not reproducible: {problems[0]}"
            + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""),
            hint=f"the second build is kept in {second.relative_to(root)} for comparison",
            exit_code=1,
        )
    shutil.rmtree(second, ignore_errors=True)
    _say(
        log,
        f"reproducible: the second build's {len(again['artifacts'])} artifacts are byte for byte the same",
    )


def _restore_from_cache(cached: Path, out: Path, digest: str) -> bool:
    if not up_to_date(cached, digest):
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


def _say(log: TextIO, text: str) -> None:
    print(text, file=log, flush=True)
