"""Bad agent sources (issue 13.7): each is one UserError line naming the file, with a hint, no
traceback, and nothing left behind: not the output directory, not a temporary file, and an
earlier good result untouched."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import kata_sources as ks
import pytest

from guestinit.host.agentsource import default_source, libraries, resolve_agent
from guestinit.host.errors import UserError


def refused(source: Path | str, tmp_path: Path, profile: str = "default") -> str:
    build = tmp_path / "build"
    build.mkdir(exist_ok=True)
    (build / "agent").mkdir(exist_ok=True)
    (build / "agent" / "kata-agent").write_bytes(b"the previous good agent")
    with pytest.raises(UserError) as err:
        resolve_agent(source, build / "agent", profile)
    line = err.value.line()
    assert "\n" not in line and err.value.hint
    assert str(err.value).startswith(str(source))
    assert sorted(p.name for p in build.iterdir()) == ["agent"], "a temporary file was left behind"
    assert (build / "agent" / "kata-agent").read_bytes() == b"the previous good agent"
    return str(err.value)


def cut(path: Path, keep: float) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def test_a_missing_path(tmp_path: Path) -> None:
    assert "no such file or directory" in refused(tmp_path / "kata-static-3.99.0-amd64.tar.zst", tmp_path)


def test_a_dangling_symlink(tmp_path: Path) -> None:
    os.symlink("nowhere", tmp_path / "agent")
    assert "dangling" in refused(tmp_path / "agent", tmp_path)


def test_a_text_file(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello\n")
    assert "not a kata-agent" in refused(tmp_path / "notes.txt", tmp_path)


def test_an_empty_file(tmp_path: Path) -> None:
    (tmp_path / "kata-agent").write_bytes(b"")
    assert "empty" in refused(tmp_path / "kata-agent", tmp_path)


def test_an_executable_that_is_not_the_agent(tmp_path: Path) -> None:
    shutil.copyfile("/bin/true", tmp_path / "kata-agent")
    assert "not a kata-agent" in refused(tmp_path / "kata-agent", tmp_path)


def test_a_shared_library(tmp_path: Path, dynamic_libs: dict[str, Path]) -> None:
    shutil.copyfile(dynamic_libs["libseccomp.so.2"], tmp_path / "kata-agent")
    assert "not an executable" in refused(tmp_path / "kata-agent", tmp_path)


@pytest.mark.parametrize(("machine", "name"), [(183, "aarch64"), (22, "s390x"), (21, "ppc64")])
def test_an_agent_for_another_architecture(
    static_agent: Path, tmp_path: Path, machine: int, name: str
) -> None:
    data = bytearray(static_agent.read_bytes())
    struct.pack_into("<H", data, 18, machine)
    (tmp_path / "kata-agent").write_bytes(bytes(data))
    message = refused(tmp_path / "kata-agent", tmp_path)
    assert f"an agent for {name}" in message and "x86-64" in message


def test_a_truncated_executable(static_agent: Path, tmp_path: Path) -> None:
    shutil.copyfile(static_agent, tmp_path / "kata-agent")
    (tmp_path / "kata-agent").write_bytes((tmp_path / "kata-agent").read_bytes()[:40])
    assert "truncated" in refused(tmp_path / "kata-agent", tmp_path)


def test_a_upx_packed_agent(static_agent: Path, tmp_path: Path) -> None:
    """UPX hides the agent's strings: say so rather than 'not an agent'."""
    data = bytearray(static_agent.read_bytes())
    at = data.find(b"(api version: ")
    data[at : at + 14] = b"x" * 14
    data[0x100:0x104] = b"UPX!"
    (tmp_path / "kata-agent").write_bytes(bytes(data))
    assert "UPX" in refused(tmp_path / "kata-agent", tmp_path)


@pytest.mark.parametrize("compression", ["gzip", "zstd", "xz", "lz4"])
def test_a_truncated_initrd(static_agent: Path, tmp_path: Path, compression: str) -> None:
    image = ks.initrd(ks.agent_init_tree(tmp_path / "r", static_agent), tmp_path / "i.img", compression)
    assert "truncated" in refused(cut(image, 0.5), tmp_path)


def test_a_corrupt_initrd(static_agent: Path, tmp_path: Path) -> None:
    image = ks.initrd(ks.agent_init_tree(tmp_path / "r", static_agent), tmp_path / "i.img", "gzip")
    data = bytearray(image.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 64):
        data[i] ^= 0x5A
    image.write_bytes(bytes(data))
    assert "corrupt" in refused(image, tmp_path)


def test_an_initrd_whose_init_is_not_the_agent(tmp_path: Path) -> None:
    root = tmp_path / "r"
    (root / "sbin").mkdir(parents=True)
    ks.other_init(root / "sbin" / "init")
    os.symlink("/sbin/init", root / "init")
    message = refused(ks.initrd(root, tmp_path / "i.img"), tmp_path)
    assert "no kata-agent in this initrd" in message and "another init" in message


@pytest.mark.parametrize("fs", ["ext4", "erofs"])
def test_an_image_without_an_agent(tmp_path: Path, fs: str) -> None:
    root = tmp_path / "r"
    (root / "sbin").mkdir(parents=True)
    ks.other_init(root / "sbin" / "init")
    assert "no kata-agent" in refused(ks.disk_image(root, tmp_path / "kata.image", fs), tmp_path)


def test_an_image_whose_kata_agent_is_for_another_architecture(static_agent: Path, tmp_path: Path) -> None:
    data = bytearray(static_agent.read_bytes())
    struct.pack_into("<H", data, 18, 183)
    (tmp_path / "arm-agent").write_bytes(bytes(data))
    root = ks.image_tree(tmp_path / "r", tmp_path / "arm-agent")
    image = ks.disk_image(root, tmp_path / "kata.image", "ext4")
    message = refused(image, tmp_path)
    assert message.startswith(f"{image}!/usr/bin/kata-agent: an agent for aarch64")


def test_a_truncated_disk_image(static_agent: Path, tmp_path: Path) -> None:
    root = ks.image_tree(tmp_path / "r", static_agent)
    image = ks.disk_image(root, tmp_path / "kata.image", "ext4")
    assert "truncated" in refused(cut(image, 0.2), tmp_path)


def test_a_disk_image_cut_inside_its_filesystem(static_agent: Path, tmp_path: Path) -> None:
    root = ks.image_tree(tmp_path / "r", static_agent)
    image = ks.disk_image(root, tmp_path / "kata.image", "erofs")
    message = refused(cut(image, 0.6), tmp_path)
    assert "erofs" in message or "truncated" in message


def test_a_disk_with_two_filesystems(static_agent: Path, tmp_path: Path) -> None:
    root = ks.image_tree(tmp_path / "r", static_agent)
    image = ks.disk_image(root, tmp_path / "kata.image", "ext4", hash_partition=True)
    hash_partition = image.stat().st_size - 2 * (1 << 20)  # what disk_image lays out
    other = ks.filesystem(tmp_path / "r", tmp_path / "other.ext4", "ext4")
    with open(image, "r+b") as f:
        f.seek(hash_partition)
        f.write(other.read_bytes()[: 1 << 20])  # a second superblock where the hashes were
    assert "2 partitions hold" in refused(image, tmp_path)


def test_a_disk_with_no_filesystem(tmp_path: Path) -> None:
    image = tmp_path / "blank.img"
    image.write_bytes(bytes(4 << 20))
    subprocess.run(["sfdisk", "--quiet", str(image)], input=b"label: dos\nstart=2048, type=83\n", check=True)
    assert "0 partitions hold an ext4 or erofs filesystem, not one (1: no filesystem)" in refused(
        image, tmp_path
    )


@pytest.mark.parametrize("compression", ["xz", "zst"])
def test_a_truncated_tarball(static_agent: Path, tmp_path: Path, compression: str) -> None:
    staging = tmp_path / "staging"
    image = ks.initrd(ks.agent_init_tree(tmp_path / "r", static_agent), tmp_path / "i")
    ks.kata_asset_dir(
        staging / "opt" / "kata", {"kata-x.initrd": image}, {"kata-containers-initrd.img": "kata-x.initrd"}
    )
    tarball = ks.tarball(staging, tmp_path / f"kata-static-3.99.0-amd64.tar.{compression}", compression)
    assert "truncated" in refused(cut(tarball, 0.5), tmp_path)


def test_a_tarball_without_guest_images(tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    (staging / "opt" / "kata" / "bin").mkdir(parents=True)
    (staging / "opt" / "kata" / "bin" / "containerd-shim-kata-v2").write_text("shim")
    tarball = ks.tarball(staging, tmp_path / "kata-static-3.99.0-amd64.tar.xz", "xz")
    assert "no Kata guest image in this tarball" in refused(tarball, tmp_path)


def test_a_prefix_without_guest_images(tmp_path: Path) -> None:
    (tmp_path / "opt" / "kata" / "share" / "kata-containers").mkdir(parents=True)
    assert "no Kata guest image there" in refused(tmp_path / "opt" / "kata", tmp_path)


@pytest.mark.parametrize(
    "make_link",
    [
        lambda assets, outside: os.symlink(str(outside), assets / "kata-containers.img"),
        lambda assets, outside: os.symlink("../../../../outside/kata.img", assets / "kata-containers.img"),
    ],
)
def test_a_prefix_link_out_of_the_prefix(
    static_agent: Path, tmp_path: Path, make_link: Callable[[Path, Path], None]
) -> None:
    outside = tmp_path / "outside" / "kata.img"
    outside.parent.mkdir()
    ks.initrd(ks.agent_init_tree(tmp_path / "r", static_agent), outside)
    prefix = tmp_path / "opt" / "kata"
    assets = ks.kata_asset_dir(prefix, {}, {})
    make_link(assets, outside)
    assert "out" in refused(prefix, tmp_path)


def test_a_link_loop_in_a_prefix(tmp_path: Path) -> None:
    prefix = tmp_path / "opt" / "kata"
    ks.kata_asset_dir(prefix, {}, {"kata-containers.img": "a", "a": "kata-containers.img"})
    assert "links" in refused(prefix, tmp_path)


def test_a_dynamic_agent_whose_library_no_one_provides(
    dynamic_agent: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(libraries.SONAME_PACKAGES, "libdevmapper.so.1.02.1")
    message = refused(dynamic_agent, tmp_path)
    assert "needs libdevmapper.so.1.02.1" in message
    root = ks.image_tree(tmp_path / "r", dynamic_agent)  # an image without the library
    message = refused(ks.disk_image(root, tmp_path / "kata.image", "ext4"), tmp_path)
    assert "needs libdevmapper.so.1.02.1" in message and "does not contain it" in message


def test_an_unknown_profile(static_agent: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown profile"):
        resolve_agent(static_agent, tmp_path / "out", "tpu")


def test_a_corrupt_ext4_filesystem(static_agent: Path, tmp_path: Path) -> None:
    root = ks.image_tree(tmp_path / "r", static_agent)
    image = ks.disk_image(root, tmp_path / "kata.image", "ext4")
    with open(image, "r+b") as f:  # the superblock stays; group descriptors and inodes go
        f.seek((1 << 20) + 4096)
        f.write(bytes(4096 * 200))
    assert "cannot read the ext4 image (unreadable ext4 filesystem" in refused(image, tmp_path)


def test_a_corrupt_cpio_header(tmp_path: Path) -> None:
    image = tmp_path / "i.img"
    image.write_bytes(b"070701" + b"zz" * 60)
    assert "corrupt cpio header" in refused(image, tmp_path)


def test_a_missing_decompressor_names_its_package(
    static_agent: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = ks.initrd(ks.agent_init_tree(tmp_path / "r", static_agent), tmp_path / "i.img", "zstd")
    monkeypatch.setattr(shutil, "which", lambda *args, **kwargs: None)
    assert "needs the zstd program: apt-get install zstd" in refused(image, tmp_path)


def test_a_broken_default_kata_is_reported_not_skipped(tmp_path: Path) -> None:
    """/opt/kata with a dangling public name is still 'a Kata here': the build then says what
    is wrong with it instead of quietly building without an agent."""
    prefix = tmp_path / "opt" / "kata"
    ks.kata_asset_dir(prefix, {}, {"kata-containers.img": "kata-ubuntu-gone.image"})
    assert default_source(prefix) == prefix
    assert "no Kata guest image there" in refused(prefix, tmp_path)
