from __future__ import annotations

import io
import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from pytest_subprocess import FakeProcess

from guestinit.host.build import builder, manifest
from guestinit.host.build import images as build
from guestinit.host.errors import UserError
from guestinit.host.streams import read_all


def _opt(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_each_image_and_profile_has_its_own_mkosi_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GUESTINIT_CACHE", str(tmp_path))
    root = build.repo_root()
    caches = set()
    targets = [("kata", "default", "initrd"), ("kata", "gpu", "initrd"), ("servicevm", "default", "initrd")]
    targets += [("kata", "default", "erofs"), ("kata", "gpu", "erofs")]
    for name, profile, form in targets:
        argv = build.mkosi_command(root, build.target(name, profile, form), tmp_path / "out", {})
        cache = _opt(argv, "--cache-directory")
        assert cache.startswith(str(tmp_path / "mkosi"))
        caches.add(cache)
        assert _opt(argv, "--output-directory") == str(tmp_path / "out")
        assert argv[-2:] == ["-f", "build"]
    assert len(caches) == 5
    gpu = build.mkosi_command(root, build.target("kata", "gpu"), tmp_path, {"A": "b"})
    assert _opt(gpu, "--profile") == "gpu"
    assert _opt(gpu, "--build-directory") == str(tmp_path / "mkosi" / "build-kata")
    assert _opt(gpu, "--environment") == "A=b"
    both = build.mkosi_command(root, build.target("kata", "gpu", "erofs"), tmp_path, {})
    assert _opt(both, "--profile") == "gpu,erofs"
    assert _opt(both, "--build-directory") == str(tmp_path / "mkosi" / "build-kata")
    svm = build.mkosi_command(root, build.target("servicevm"), tmp_path, {}, tmp_path / "debs")
    assert _opt(svm, "--volatile-package-directory") == str(tmp_path / "debs")
    assert _opt(svm, "-C") == str(root / "service-vm")


def test_digest_follows_inputs_and_packages(tmp_path: Path) -> None:
    root = build.repo_root()
    a = build.input_digest(root, build.target("kata"), {})
    assert a == build.input_digest(root, build.target("kata"), {})
    assert a != build.input_digest(root, build.target("kata", "gpu"), {})
    assert a != build.input_digest(root, build.target("kata", form="erofs"), {})
    assert a != build.input_digest(root, build.target("kata"), {"packages": "x.deb:00"})


def test_bad_image_profile_and_package_dir(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unknown image 'nope'"):
        builder.build("nope", log=io.StringIO())
    with pytest.raises(UserError, match="no profile 'gpu'"):
        builder.build("servicevm", "gpu", log=io.StringIO())
    with pytest.raises(UserError, match="no form 'erofs'"):
        builder.build("servicevm", form="erofs", log=io.StringIO())
    with pytest.raises(UserError, match=r"holds no \.deb files"):
        builder.build("servicevm", packages=tmp_path, log=io.StringIO())


def test_manifest_lists_artifacts_with_sha256(tmp_path: Path) -> None:
    (tmp_path / "guestinit-kata.cpio").write_bytes(b"initrd")
    (tmp_path / "guestinit-kata.vmlinuz").write_bytes(b"kernel")
    (tmp_path / "guestinit-kata.kver").write_text("6.12.1\n")
    (tmp_path / "guestinit-kata.manifest").write_text(
        json.dumps({"packages": [{"name": "python3-minimal", "version": "3.13.5-1"}]})
    )
    path = manifest.write_manifest(tmp_path, build.target("kata"), "d" * 64, 12.3, 0)
    data = json.loads(path.read_text())
    assert data["form"] == "initrd" and "kata_agent" not in data
    assert data["kernel_version"] == "6.12.1"
    assert data["packages"] == {"python3-minimal": "3.13.5-1"}
    by_name = {a["name"]: a for a in data["artifacts"]}
    assert by_name["guestinit-kata.vmlinuz"]["kind"] == "kernel"
    assert by_name["guestinit-kata.cpio"]["kind"] == "initrd"
    assert by_name["guestinit-kata.cpio"]["size"] == 6
    assert by_name["guestinit-kata.cpio"]["sha256"] == build.sha256_file(tmp_path / "guestinit-kata.cpio")
    assert manifest.up_to_date(tmp_path, "d" * 64) and not manifest.up_to_date(tmp_path, "e" * 64)


def test_a_zstd_initrd_is_an_initrd_too(tmp_path: Path) -> None:
    (tmp_path / "guestinit-kata.cpio.zst").write_bytes(b"gpu initrd")  # as mkosi writes zstd
    path = manifest.write_manifest(tmp_path, build.target("kata", "gpu"), "d" * 64, 1.0, 0)
    [artifact] = json.loads(path.read_text())["artifacts"]
    assert (artifact["name"], artifact["kind"], artifact["size"]) == ("guestinit-kata.cpio.zst", "initrd", 10)


def _fake_mkosi(stand_in: Callable[..., None], writes: dict[str, bytes] | None, returncode: int = 0) -> None:
    """mkosi stood in for: writes ``writes`` into its --output-directory, exits ``returncode``."""

    def run(process: FakeProcess) -> None:  # pytest-subprocess hands the FakePopen
        argv = [str(a) for a in process.args]
        out = Path(_opt(argv, "--output-directory"))
        for name, data in (writes or {}).items():
            (out / name).write_bytes(data)

    stand_in(run, returncode)


def test_a_failed_build_leaves_the_last_good_one(
    built_kata: Path, stand_in_mkosi: Callable[..., None]
) -> None:
    before = {p.name: p.read_bytes() for p in built_kata.iterdir()}
    _fake_mkosi(stand_in_mkosi, {"guestinit-kata.cpio": b"half"}, returncode=1)
    with pytest.raises(UserError, match="the last build is untouched"):
        builder.build("kata", log=io.StringIO())
    assert {p.name: p.read_bytes() for p in built_kata.iterdir()} == before
    assert sorted(p.name for p in built_kata.parent.iterdir()) == ["kata"]  # no staging left behind


def test_a_good_build_replaces_the_last_one_whole(
    built_kata: Path, stand_in_mkosi: Callable[..., None]
) -> None:
    _fake_mkosi(
        stand_in_mkosi, {"guestinit-kata.cpio": b"new initrd", "guestinit-kata.vmlinuz": b"new kernel"}
    )
    log = io.StringIO()
    path = builder.build("kata", log=log)
    data = json.loads(path.read_text())
    # mkosi's plain cpio is packed with lz4 in legacy frames, the one lz4 format the kernel reads
    assert {a["name"] for a in data["artifacts"]} == {"guestinit-kata.cpio.lz4", "guestinit-kata.vmlinuz"}
    packed = built_kata / "guestinit-kata.cpio.lz4"
    assert packed.read_bytes().startswith(b"\x02\x21\x4c\x18") and read_all(packed) == b"new initrd"
    assert not (built_kata / "guestinit-kata.cpio").exists()
    assert "packed guestinit-kata.cpio.lz4: lz4" in log.getvalue()
    assert data["source_date_epoch"] == 1796349683 and data["built"] == "2026-12-04T02:01:23+00:00"
    assert data["version"].endswith("-20261204020123-" + data["input_digest"][:8])
    assert "SOURCE_DATE_EPOCH=1796349683" in log.getvalue() and "--source-date-epoch" in log.getvalue()
    assert sorted(p.name for p in built_kata.parent.iterdir()) == [".last-kata", "kata"]
    assert build.last_build(built_kata.parent.parent) == built_kata


def test_check_reproducible_names_the_first_difference(
    built_kata: Path, stand_in_mkosi: Callable[..., None]
) -> None:
    from guestinit.host.build.newc import S_IFREG, Entry, write

    first = write([Entry("etc/a", S_IFREG | 0o644, b"x"), Entry("etc/b", S_IFREG | 0o644, b"y")])
    second = write([Entry("etc/a", S_IFREG | 0o644, b"x"), Entry("etc/b", S_IFREG | 0o644, b"z")])
    _fake_mkosi(stand_in_mkosi, {"guestinit-kata.cpio": first, "guestinit-kata.vmlinuz": b"k"})
    _fake_mkosi(stand_in_mkosi, {"guestinit-kata.cpio": second, "guestinit-kata.vmlinuz": b"k"})
    with pytest.raises(
        UserError, match=r"not reproducible: guestinit-kata.cpio.lz4: .*etc/b: content differ"
    ):
        builder.build("kata", log=io.StringIO(), check_reproducible=True)
    assert read_all(built_kata / "guestinit-kata.cpio.lz4") == first  # the first build is the build
    _fake_mkosi(stand_in_mkosi, {"guestinit-kata.cpio": first, "guestinit-kata.vmlinuz": b"k"})
    _fake_mkosi(stand_in_mkosi, {"guestinit-kata.cpio": first, "guestinit-kata.vmlinuz": b"k"})
    log = io.StringIO()
    builder.build("kata", log=log, check_reproducible=True)
    assert "reproducible: the second build's 2 artifacts are byte for byte the same" in log.getvalue()
    assert not (built_kata.parent / ".kata.repro").exists()


@pytest.mark.skipif(not (build.mkosi_python_path() / "mkosi").is_dir(), reason="mkosi not set up")
def test_mkosi_writes_plain_cpio_that_the_build_packs_with_lz4(tmp_path: Path) -> None:
    root = build.repo_root()
    env = dict(os.environ, PYTHONPATH=os.fspath(build.mkosi_python_path()))
    seen = {}
    for name, profile in (("kata", "default"), ("kata", "gpu"), ("servicevm", "default")):
        argv = build.mkosi_command(root, build.target(name, profile), tmp_path, {})
        assert argv[-2:] == ["-f", "build"]
        argv[-2:] = ["--json", "summary"]
        out = subprocess.run(argv, env=env, cwd=root, capture_output=True, text=True, check=False)
        assert out.returncode == 0, out.stderr[-2000:]
        config = json.loads(out.stdout)["Images"][-1]
        assert config["Format"] == "cpio" and config["PostOutputScripts"] == []
        seen[name, profile] = config["CompressOutput"]
    # mkosi writes <id>.cpio, which the build packs with lz4 -l (images.py: lz4): measured
    # faster than zstd for the gpu image and the service VM (their mkosi.conf files)
    assert build.target("kata").lz4 and build.target("kata", "gpu").lz4 and build.target("servicevm").lz4
    assert not build.target("kata", form="erofs").lz4
    assert set(seen.values()) == {"none"}


def test_build_reference_is_generated_from_the_option_table() -> None:
    from guestinit.host.build import cli

    text = cli.reference_markdown()
    for opt in cli.OPTIONS:
        assert opt.help in text
    assert (build.repo_root() / "docs" / "build.md").read_text() == text, "docs/build.md is stale: make docs"
    assert cli.main(["--fabricmanager", "/nonexistent"]) == 2  # kata: the option is for servicevm
