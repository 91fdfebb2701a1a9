"""agentsource takes the agent out of every kind of SOURCE, built here from the stand-in the way
Kata lays them out: the bare executable, initrds (gzip, zstd, xz, lz4, plain), disk images (ext4 and
erofs; MBR and GPT; with a dm-verity hash partition; behind a DAX header), release tarballs
(.tar.xz, .tar.zst) and a Kata prefix, following their symlinks."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import kata_sources as ks
import pytest

from guestinit.host.agentsource import (
    default_source,
    libraries,
    manifest_entry,
    probe_on_host,
    resolve_agent,
    summary,
    version,
    with_version,
)
from guestinit.host.errors import UserError


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def take(source: Path | str, tmp_path: Path, profile: str = "default"):  # type: ignore[no-untyped-def]
    agent = resolve_agent(source, tmp_path / "build" / "agent", profile)
    assert agent.path == tmp_path / "build" / "agent" / "kata-agent"
    assert os.access(agent.path, os.X_OK)
    assert sha(agent.path) == agent.sha256
    # Nothing but the result is left beside it.
    assert sorted(p.name for p in (tmp_path / "build").iterdir()) == ["agent"]
    return agent


@pytest.mark.parametrize("kind", ["static", "dynamic"])
def test_a_bare_executable(standins: dict[str, Path], tmp_path: Path, kind: str) -> None:
    agent = take(standins[kind], tmp_path)
    assert agent.kind == "executable" and agent.member == ""
    assert agent.sha256 == sha(standins[kind])
    assert agent.linking == kind
    if kind == "dynamic":
        assert agent.elf.interpreter == "/lib64/ld-linux-x86-64.so.2"
        assert set(agent.libraries.packages) == {"libc6", "libdevmapper1.02.1", "libseccomp2"}
        assert agent.libraries.origin["libdevmapper.so.1.02.1"] == "deb:libdevmapper1.02.1"
        assert agent.libraries.files == {}
    else:
        assert agent.libraries.packages == () and agent.elf.needed == ()


@pytest.mark.parametrize("compression", ["gzip", "zstd", "xz", "lz4", "none"])
def test_an_agent_init_initrd(static_agent: Path, tmp_path: Path, compression: str) -> None:
    root = ks.agent_init_tree(tmp_path / "root", static_agent)
    image = ks.initrd(root, tmp_path / "kata-containers-initrd.img", compression)
    agent = take(image, tmp_path)
    assert (agent.kind, agent.container, agent.member) == ("initrd", "initrd", "/sbin/init")
    assert agent.sha256 == sha(static_agent)


def test_an_initrd_found_through_init_links(static_agent: Path, tmp_path: Path) -> None:
    """/init -> /sbin/init -> ../usr/bin/agent-real: the chain is followed and recorded."""
    root = tmp_path / "root"
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "sbin").mkdir()
    shutil.copyfile(static_agent, root / "usr" / "bin" / "agent-real")
    os.symlink("../usr/bin/agent-real", root / "sbin" / "init")
    os.symlink("/sbin/init", root / "init")
    agent = take(ks.initrd(root, tmp_path / "i.img", "gzip"), tmp_path)
    assert agent.member == "/usr/bin/agent-real"
    assert agent.chain == ("sbin/init -> ../usr/bin/agent-real",)


def test_an_nvidia_initrd_takes_usr_bin_kata_agent_not_nvrc(static_agent: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "sbin").mkdir()
    ks.other_init(root / "bin" / "NVRC")
    os.symlink("/bin/NVRC", root / "init")
    os.symlink("/bin/NVRC", root / "sbin" / "init")
    shutil.copyfile(static_agent, root / "usr" / "bin" / "kata-agent")
    agent = take(ks.initrd(root, tmp_path / "i.img", "zstd"), tmp_path)
    assert agent.member == "/usr/bin/kata-agent"


def test_hard_links_in_a_newc_archive_share_their_data(static_agent: Path, tmp_path: Path) -> None:
    """newc stores a hard-linked file's data once, with its last name: both names read whole."""
    root = tmp_path / "root"
    (root / "sbin").mkdir(parents=True)
    (root / "usr" / "bin").mkdir(parents=True)
    shutil.copyfile(static_agent, root / "sbin" / "init")
    os.link(root / "sbin" / "init", root / "usr" / "bin" / "kata-agent")
    image = ks.initrd(root, tmp_path / "i.img", "none")
    agent = take(image, tmp_path)
    assert agent.sha256 == sha(static_agent)


@pytest.mark.parametrize(
    ("fs", "label", "hash_partition", "start_mib"),
    [
        ("ext4", "dos", False, 1),  # Kata's image builder: MBR, one partition 1 MiB in
        ("ext4", "gpt", True, 1),  # GPT, with a dm-verity hash partition (no superblock)
        ("erofs", "dos", True, 3),  # measured erofs rootfs behind a 2 MiB DAX header
        ("erofs", "gpt", False, 1),
    ],
)
def test_a_disk_image(
    dynamic_agent: Path,
    dynamic_libs: dict[str, Path],
    tmp_path: Path,
    fs: str,
    label: str,
    hash_partition: bool,
    start_mib: int,
) -> None:
    root = ks.image_tree(tmp_path / "root", dynamic_agent, dynamic_libs)
    image = ks.disk_image(root, tmp_path / "kata-ubuntu-noble.image", fs, label, hash_partition, start_mib)
    agent = take(image, tmp_path)
    assert (agent.kind, agent.container, agent.member) == ("image", f"{fs} image", "/usr/bin/kata-agent")
    assert agent.sha256 == sha(dynamic_agent)
    assert agent.linking == "dynamic"
    assert "libseccomp2" in agent.libraries.packages


def test_a_bare_ext4_filesystem_and_links_in_it(static_agent: Path, tmp_path: Path) -> None:
    """An absolute link and a slow (over 60 bytes) link inside ext4, read through debugfs."""
    root = tmp_path / "root"
    deep = root / "opt" / ("kata-agent-installation-directory-" * 2) / "bin"
    deep.mkdir(parents=True)
    (root / "usr" / "bin").mkdir(parents=True)
    shutil.copyfile(static_agent, deep / "kata-agent")
    target = "/" + str((deep / "kata-agent").relative_to(root))
    assert len(target) > 60
    os.symlink(target, root / "usr" / "bin" / "kata-agent")
    image = ks.filesystem(root, tmp_path / "rootfs.ext4", "ext4")
    agent = take(image, tmp_path)
    assert agent.chain == (f"usr/bin/kata-agent -> {target}",)
    assert agent.sha256 == sha(static_agent)


def _release(tmp_path: Path, static_agent: Path, dynamic_agent: Path, gpu: bool) -> Path:
    """opt/kata/share/kata-containers as a kata-static tarball has it: versioned files and the
    public names linking to them. The default image carries the static agent, the GPU one the
    dynamic agent, so the test can tell which was taken."""
    staging = tmp_path / "staging"
    default_root = ks.image_tree(tmp_path / "r-default", static_agent)
    files = {
        "kata-ubuntu-noble.image": ks.disk_image(default_root, tmp_path / "default.img", "ext4"),
        "kata-ubuntu-noble.initrd": ks.initrd(
            ks.agent_init_tree(tmp_path / "r-initrd", static_agent), tmp_path / "i"
        ),
    }
    links = {
        "kata-containers.img": "kata-ubuntu-noble.image",
        "kata-containers-initrd.img": "kata-ubuntu-noble.initrd",
    }
    if gpu:
        gpu_root = ks.image_tree(tmp_path / "r-gpu", dynamic_agent)
        files["kata-ubuntu-noble-nvidia-gpu-580.95.05.image"] = ks.disk_image(
            gpu_root, tmp_path / "g.img", "erofs"
        )
        links["kata-containers-nvidia-gpu.img"] = "kata-ubuntu-noble-nvidia-gpu-580.95.05.image"
    ks.kata_asset_dir(staging / "opt" / "kata", files, links)
    (staging / "opt" / "kata" / "bin").mkdir()
    return staging


@pytest.mark.parametrize("compression", ["xz", "zst"])
def test_a_release_tarball(static_agent: Path, dynamic_agent: Path, tmp_path: Path, compression: str) -> None:
    staging = _release(tmp_path, static_agent, dynamic_agent, gpu=True)
    tarball = ks.tarball(staging, tmp_path / f"kata-static-3.99.0-amd64.tar.{compression}", compression)
    agent = take(tarball, tmp_path)
    assert agent.kind == "tarball" and agent.container == "ext4 image"
    assert agent.member == "/opt/kata/share/kata-containers/kata-ubuntu-noble.image!/usr/bin/kata-agent"
    assert agent.chain[0] == "opt/kata/share/kata-containers/kata-containers.img -> kata-ubuntu-noble.image"
    assert agent.sha256 == sha(static_agent) and agent.notes == ()
    gpu = take(tarball, tmp_path / "gpu", profile="gpu")
    assert gpu.container == "erofs image" and gpu.sha256 == sha(dynamic_agent)
    assert "kata-containers-nvidia-gpu.img -> kata-ubuntu-noble-nvidia-gpu-580.95.05.image" in gpu.chain[0]


def test_the_gpu_profile_falls_back_to_the_default_image_and_says_so(
    static_agent: Path, dynamic_agent: Path, tmp_path: Path
) -> None:
    staging = _release(tmp_path, static_agent, dynamic_agent, gpu=False)
    tarball = ks.tarball(staging, tmp_path / "kata-static-3.20.0-amd64.tar.xz", "xz")
    agent = take(tarball, tmp_path, profile="gpu")
    assert agent.sha256 == sha(static_agent)
    assert agent.notes == ("no kata-containers-nvidia-gpu.img there: took kata-containers.img",)


def test_a_kata_prefix(static_agent: Path, dynamic_agent: Path, tmp_path: Path) -> None:
    prefix = _release(tmp_path, static_agent, dynamic_agent, gpu=True) / "opt" / "kata"
    agent = take(prefix, tmp_path)
    assert agent.kind == "prefix"
    assert agent.member == "share/kata-containers/kata-ubuntu-noble.image!/usr/bin/kata-agent"
    assert default_source(prefix) == prefix
    assert default_source(prefix, "gpu") == prefix
    assert default_source(tmp_path / "nothing-here") is None
    empty = tmp_path / "empty-prefix"
    (empty / "share" / "kata-containers").mkdir(parents=True)
    assert default_source(empty) is None


def test_a_prefix_with_absolute_links_into_itself(static_agent: Path, tmp_path: Path) -> None:
    """The public name may be an absolute link to a file under the same prefix (or through a
    guestinit deploy's current/ pointer); it is followed inside the prefix."""
    prefix = tmp_path / "opt" / "kata"
    image = ks.initrd(ks.agent_init_tree(tmp_path / "r", static_agent), tmp_path / "i")
    assets = ks.kata_asset_dir(prefix, {"kata-ubuntu-noble.initrd": image}, {})
    state = prefix / "share" / "guestinit" / "default"
    (state / "versions" / "v1").mkdir(parents=True)
    os.symlink(
        str(assets / "kata-ubuntu-noble.initrd"), state / "versions" / "v1" / "kata-containers-initrd.img"
    )
    os.symlink("versions/v1", state / "current")
    os.symlink(
        "../guestinit/default/current/kata-containers-initrd.img", assets / "kata-containers-initrd.img"
    )
    agent = take(prefix, tmp_path)
    assert agent.container == "initrd" and agent.sha256 == sha(static_agent)
    assert len(agent.chain) == 3


def test_an_extracted_guest_root_directory(
    dynamic_agent: Path, dynamic_libs: dict[str, Path], tmp_path: Path
) -> None:
    root = ks.image_tree(tmp_path / "root", dynamic_agent, dynamic_libs)
    agent = take(root, tmp_path)
    assert agent.kind == "root directory" and agent.member == "/usr/bin/kata-agent"


def test_libraries_outside_the_table_come_from_the_image(
    dynamic_agent: Path, dynamic_libs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A soname no Debian package in the table provides is taken from the image the agent came
    from, with its own DT_NEEDED followed (libseccomp needs libc, which the table has)."""
    monkeypatch.delitem(libraries.SONAME_PACKAGES, "libseccomp.so.2")
    root = ks.image_tree(tmp_path / "root", dynamic_agent, dynamic_libs)
    image = ks.disk_image(root, tmp_path / "kata.image", "erofs")
    agent = take(image, tmp_path)
    real = dynamic_libs["libseccomp.so.2"].resolve()
    assert agent.libraries.origin["libseccomp.so.2"] == f"source:/usr/lib/x86_64-linux-gnu/{real.name}"
    staged = agent.libraries.files["libseccomp.so.2"]
    assert staged == tmp_path / "build" / "agent" / "lib" / "libseccomp.so.2"
    assert sha(staged) == sha(real)
    assert "libseccomp2" not in agent.libraries.packages and "libc6" in agent.libraries.packages


def test_version_of_a_static_agent_runs_here(static_agent: Path, tmp_path: Path) -> None:
    facts = probe_on_host(take(static_agent, tmp_path))
    assert facts.version is not None and facts.version.version == "3.99.0"
    assert summary(facts).startswith(f"kata-agent 3.99.0 from {static_agent}, static, sha256 ")


def test_version_of_a_dynamic_agent_runs_in_its_image_tree(
    dynamic_agent: Path, dynamic_libs: dict[str, Path], tmp_path: Path
) -> None:
    """Through the tree's own loader and libraries (here copies of this host's), no chroot."""
    root = ks.image_tree(tmp_path / "root", dynamic_agent, dynamic_libs)
    loader = dynamic_libs["ld-linux-x86-64.so.2"]
    (root / "lib64").mkdir()
    shutil.copyfile(loader.resolve(), root / "lib64" / "ld-linux-x86-64.so.2")
    (root / "lib64" / "ld-linux-x86-64.so.2").chmod(0o755)
    agent = take(root, tmp_path)
    with pytest.raises(UserError, match="dynamically linked"):
        probe_on_host(agent)
    info = version.in_root(root, "/usr/bin/kata-agent", agent.elf.interpreter)
    assert info.version == "3.99.0" and info.features == ("seccomp",)
    facts = with_version(
        agent, f"kata-agent version {info.version} (api version: 0.0.1, commit version: x, type: rust)"
    )
    entry = manifest_entry(facts)
    assert json.loads(json.dumps(entry)) == entry
    assert entry["version"] == "3.99.0" and entry["sha256"] == sha(dynamic_agent)
    assert entry["linking"]["type"] == "dynamic" and "libdevmapper.so.1.02.1" in entry["linking"]["needed"]
    assert entry["source"]["given"] == str(root) and entry["source"]["member"] == "/usr/bin/kata-agent"
    assert entry["packages"] == ["libc6", "libdevmapper1.02.1", "libseccomp2"]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            "kata-agent version 3.2.0 (api version: 0.0.1, commit version: 3.2.0-abc, type: rust)\n",
            ("3.2.0", ()),
        ),
        (
            "kata-agent version 3.21.0 (api version: 0.0.1, commit version: 3.21.0-0a1b, type: rust, "
            'extra-features: ["agent-policy", "seccomp"])\n',
            ("3.21.0", ("agent-policy", "seccomp")),
        ),
        (
            "kata-agent version 4.0.0-rc0 (api version: 0.0.1, commit version: c, type: rust, "
            "extra-features: [])",
            ("4.0.0-rc0", ()),
        ),
    ],
)
def test_version_lines_of_real_agents_parse(line: str, expected: tuple[str, tuple[str, ...]]) -> None:
    info = version.parse(line)
    assert (info.version, info.features) == expected


@pytest.mark.parametrize("text", ["", "busybox v1.36\n", "kata-agent version  (api version: )"])
def test_other_output_is_not_a_version(text: str) -> None:
    with pytest.raises(version.VersionError):
        version.parse(text)
