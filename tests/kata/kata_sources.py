"""Builds every kind of agent SOURCE the way Kata's own tools lay them out (references §2/§2b),
around a given agent executable, with the real tools (cpio, gzip/zstd, mkfs.ext4, mkfs.erofs,
sfdisk, tar): a guest initrd, a guest disk image, a kata-static release tarball, a Kata prefix."""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from pathlib import Path

MiB = 1 << 20
LINUX_GUID = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"


def other_init(dest: Path) -> None:
    """An executable that is not the agent (stands for systemd, NVRC or busybox)."""
    shutil.copyfile("/bin/true", dest)
    dest.chmod(0o755)


def agent_init_tree(root: Path, agent: Path) -> Path:
    """AGENT_INIT=yes initrd root: the agent is /sbin/init, /init -> /sbin/init."""
    (root / "sbin").mkdir(parents=True)
    shutil.copyfile(agent, root / "sbin" / "init")
    (root / "sbin" / "init").chmod(0o755)
    os.symlink("/sbin/init", root / "init")
    for d in ("proc", "sys", "dev", "run", "tmp", "etc"):
        (root / d).mkdir()
    return root


def image_tree(root: Path, agent: Path, libs: dict[str, Path] | None = None) -> Path:
    """Image root: /usr/bin/kata-agent, /sbin/init -> another init, merged /usr (lib -> usr/lib)."""
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "usr" / "lib" / "systemd").mkdir(parents=True)
    (root / "usr" / "sbin").mkdir(parents=True)
    shutil.copyfile(agent, root / "usr" / "bin" / "kata-agent")
    (root / "usr" / "bin" / "kata-agent").chmod(0o755)
    other_init(root / "usr" / "lib" / "systemd" / "systemd")
    os.symlink("usr/lib", root / "lib")
    os.symlink("usr/sbin", root / "sbin")
    os.symlink("/lib/systemd/systemd", root / "usr" / "sbin" / "init")
    libdir = root / "usr" / "lib" / "x86_64-linux-gnu"
    libdir.mkdir(parents=True)
    for soname, path in (libs or {}).items():
        real = libdir / path.resolve().name
        if not real.exists():
            shutil.copyfile(path.resolve(), real)
        if real.name != soname:
            os.symlink(real.name, libdir / soname)
    return root


def initrd(root: Path, dest: Path, compression: str = "gzip") -> Path:
    """A newc cpio of ``root``, compressed like Kata's initrd builder does (gzip; zstd too), or
    as guestctl build packs its own (lz4)."""
    names = subprocess.run(["find", "."], cwd=root, capture_output=True, check=True).stdout
    archive = subprocess.run(
        ["cpio", "-o", "-H", "newc", "--quiet"], cwd=root, input=names, capture_output=True, check=True
    ).stdout
    compressors = {
        "gzip": ["gzip", "-9c"],
        "zstd": ["zstd", "-q", "-c"],
        "xz": ["xz", "-c", "--check=crc32"],
        "lz4": ["lz4", "-q", "-l", "-9", "-c"],  # legacy frames: what guestctl build writes
    }
    data = archive
    if compression in compressors:
        data = subprocess.run(compressors[compression], input=archive, capture_output=True, check=True).stdout
    dest.write_bytes(data)
    return dest


def filesystem(root: Path, dest: Path, fs: str) -> Path:
    if fs == "ext4":
        used = sum(f.stat().st_size for f in root.rglob("*") if f.is_file() and not f.is_symlink())
        size = max(8, 4 + used // MiB * 2)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(root), str(dest), f"{size}M"], check=True)
    else:
        subprocess.run(["mkfs.erofs", "-zlz4hc", str(dest), str(root)], check=True, capture_output=True)
    return dest


def disk_image(
    root: Path,
    dest: Path,
    fs: str = "ext4",
    label: str = "dos",
    hash_partition: bool = False,
    start_mib: int = 1,
) -> Path:
    """A Kata guest disk image: one partition (from ``start_mib``) holding the filesystem, and with
    ``hash_partition`` a second one without a filesystem (a measured rootfs's dm-verity hashes)."""
    fs_file = filesystem(root, dest.with_suffix(".fs"), fs)
    fs_size = (fs_file.stat().st_size + MiB - 1) // MiB * MiB
    hash_size = MiB if hash_partition else 0
    total = start_mib * MiB + fs_size + hash_size + MiB  # room for a GPT backup header
    with open(dest, "wb") as f:
        f.truncate(total)
    kind = "83" if label == "dos" else LINUX_GUID
    script = f"label: {label}\nstart={start_mib * 2048}, size={fs_size // 512}, type={kind}\n"
    if hash_partition:
        script += f"start={(start_mib * MiB + fs_size) // 512}, size={hash_size // 512}, type={kind}\n"
    subprocess.run(["sfdisk", "--quiet", str(dest)], input=script.encode(), check=True)
    with open(dest, "r+b") as out, open(fs_file, "rb") as src:
        out.seek(start_mib * MiB)
        shutil.copyfileobj(src, out)
        if hash_partition:
            out.seek(start_mib * MiB + fs_size)
            out.write(b"\x5a" * 4096)  # hash blocks: no superblock (veritysetup --no-superblock)
    fs_file.unlink()
    return dest


def kata_asset_dir(base: Path, files: dict[str, Path], links: dict[str, str]) -> Path:
    """``base``/share/kata-containers with versioned files and the public symlinks to them."""
    assets = base / "share" / "kata-containers"
    assets.mkdir(parents=True)
    for name, src in files.items():
        shutil.copyfile(src, assets / name)
    for link, target in links.items():
        os.symlink(target, assets / link)
    return assets


def tarball(staging: Path, dest: Path, compression: str) -> Path:
    """kata-static-<ver>-amd64.tar.xz|.tar.zst of ``staging`` (holding opt/kata/...), members
    named ./opt/kata/... as Kata's release tooling writes them."""
    if compression == "xz":
        with tarfile.open(dest, "w:xz") as tar:
            tar.add(staging, arcname=".")
    else:
        plain = dest.with_suffix("")
        with tarfile.open(plain, "w") as tar:
            tar.add(staging, arcname=".")
        subprocess.run(["zstd", "-q", "-f", "--rm", str(plain), "-o", str(dest)], check=True)
    return dest
