from __future__ import annotations

import io
import json
import os
import subprocess
from pathlib import Path

import pytest

from guestinit.host.build import images as build
from guestinit.host.errors import UserError


def _opt(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_each_image_and_profile_has_its_own_mkosi_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GUESTINIT_CACHE", str(tmp_path))
    root = build.repo_root()
    caches = set()
    for name, profile in (("kata", "default"), ("kata", "gpu"), ("servicevm", "default")):
        argv = build.mkosi_command(root, build.IMAGES[name], profile, tmp_path / "out", {})
        cache = _opt(argv, "--cache-directory")
        assert cache.startswith(str(tmp_path / "mkosi"))
        caches.add(cache)
        assert _opt(argv, "--output-directory") == str(tmp_path / "out")
        assert argv[-2:] == ["-f", "build"]
    assert len(caches) == 3
    gpu = build.mkosi_command(root, build.IMAGES["kata"], "gpu", tmp_path, {"A": "b"})
    assert _opt(gpu, "--profile") == "gpu"
    assert _opt(gpu, "--build-directory") == str(tmp_path / "mkosi" / "build-gpu")
    assert _opt(gpu, "--environment") == "A=b"
    svm = build.mkosi_command(root, build.IMAGES["servicevm"], "default", tmp_path, {}, tmp_path / "debs")
    assert _opt(svm, "--volatile-package-directory") == str(tmp_path / "debs")
    assert _opt(svm, "-C") == str(root / "service-vm")


def test_digest_follows_inputs_and_packages(tmp_path: Path) -> None:
    root = build.repo_root()
    spec = build.IMAGES["kata"]
    a = build.input_digest(root, spec, "default", {})
    assert a == build.input_digest(root, spec, "default", {})
    assert a != build.input_digest(root, spec, "gpu", {})
    assert a != build.input_digest(root, spec, "default", {"packages": "x.deb:00"})


def test_bad_image_profile_and_package_dir(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unknown image 'nope'"):
        build.build("nope", log=io.StringIO())
    with pytest.raises(UserError, match="no profile 'gpu'"):
        build.build("servicevm", "gpu", log=io.StringIO())
    with pytest.raises(UserError, match=r"holds no \.deb files"):
        build.build("servicevm", packages=tmp_path, log=io.StringIO())


def test_manifest_lists_artifacts_with_sha256(tmp_path: Path) -> None:
    (tmp_path / "guestinit-kata.cpio").write_bytes(b"initrd")
    (tmp_path / "guestinit-kata.vmlinuz").write_bytes(b"kernel")
    (tmp_path / "guestinit-kata.kver").write_text("6.12.1\n")
    (tmp_path / "guestinit-kata.manifest").write_text(
        json.dumps({"packages": [{"name": "python3-minimal", "version": "3.13.5-1"}]})
    )
    path = build.write_manifest(tmp_path, build.IMAGES["kata"], "default", "d" * 64, 12.3)
    data = json.loads(path.read_text())
    assert data["kernel_version"] == "6.12.1"
    assert data["packages"] == {"python3-minimal": "3.13.5-1"}
    by_name = {a["name"]: a for a in data["artifacts"]}
    assert by_name["guestinit-kata.vmlinuz"]["kind"] == "kernel"
    assert by_name["guestinit-kata.cpio"]["kind"] == "initrd"
    assert by_name["guestinit-kata.cpio"]["size"] == 6
    assert by_name["guestinit-kata.cpio"]["sha256"] == build.sha256_file(tmp_path / "guestinit-kata.cpio")
    assert build._up_to_date(tmp_path, "d" * 64) and not build._up_to_date(tmp_path, "e" * 64)


def test_a_zstd_initrd_is_an_initrd_too(tmp_path: Path) -> None:
    (tmp_path / "guestinit-kata.cpio.zst").write_bytes(b"gpu initrd")  # the gpu profile's output
    path = build.write_manifest(tmp_path, build.IMAGES["kata"], "gpu", "d" * 64, 1.0)
    [artifact] = json.loads(path.read_text())["artifacts"]
    assert (artifact["name"], artifact["kind"], artifact["size"]) == ("guestinit-kata.cpio.zst", "initrd", 10)


def test_a_rebuild_first_removes_what_the_last_manifest_listed(tmp_path: Path) -> None:
    (tmp_path / "guestinit-kata.cpio.zst").write_bytes(b"old initrd")
    (tmp_path / "guestinit-kata.vmlinuz").write_bytes(b"kernel")
    build.write_manifest(tmp_path, build.IMAGES["kata"], "default", "d" * 64, 1.0)
    (tmp_path / "notes.txt").write_text("not an artifact\n")
    build._remove_previous_outputs(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json", "notes.txt"]
    # the next manifest names only what the new build wrote
    (tmp_path / "guestinit-kata.cpio").write_bytes(b"new initrd")
    path = build.write_manifest(tmp_path, build.IMAGES["kata"], "default", "d" * 64, 1.0)
    assert [a["name"] for a in json.loads(path.read_text())["artifacts"]] == ["guestinit-kata.cpio"]


def test_removing_previous_outputs_ignores_a_missing_or_bad_manifest(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "guestinit-kata.cpio").write_bytes(b"initrd")
    build._remove_previous_outputs(out)
    (out / "manifest.json").write_text('{"artifacts": [{"name": "../escape"}, {"name": ""}]}')
    (tmp_path / "escape").write_text("outside\n")
    build._remove_previous_outputs(out)
    (out / "manifest.json").write_text("not json")
    build._remove_previous_outputs(out)
    assert (out / "guestinit-kata.cpio").is_file() and (tmp_path / "escape").is_file()


@pytest.mark.skipif(not (build.mkosi_python_path() / "mkosi").is_dir(), reason="mkosi not set up")
def test_default_image_is_uncompressed_and_the_gpu_profile_keeps_zstd(tmp_path: Path) -> None:
    root = build.repo_root()
    env = dict(os.environ, PYTHONPATH=os.fspath(build.mkosi_python_path()))
    seen = {}
    for profile in ("default", "gpu"):
        argv = build.mkosi_command(root, build.IMAGES["kata"], profile, tmp_path, {})
        assert argv[-2:] == ["-f", "build"]
        argv[-2:] = ["--json", "summary"]
        out = subprocess.run(argv, env=env, cwd=root, capture_output=True, text=True, check=False)
        assert out.returncode == 0, out.stderr[-2000:]
        config = json.loads(out.stdout)["Images"][-1]
        assert config["Format"] == "cpio" and config["PostOutputScripts"] == []
        seen[profile] = config["CompressOutput"]
    # guestinit-kata.cpio, read by the kernel with no decoder; the gpu image stays .cpio.zst
    assert seen == {"default": "none", "gpu": "zstd"}
