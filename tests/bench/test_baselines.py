"""Building the baselines: the newc writer read back by the real cpio, the busybox floor's
archive, and the systemd baseline's mkosi configuration as mkosi itself parses it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from guestinit.host.bench import baselines
from guestinit.host.build.images import mkosi_python_path
from guestinit.host.build.newc import S_IFCHR, S_IFDIR, S_IFLNK, S_IFREG, Entry
from guestinit.host.build.newc import write as newc
from guestinit.host.errors import UserError

REPO = Path(__file__).resolve().parents[2]
needs_cpio = pytest.mark.skipif(shutil.which("cpio") is None, reason="cpio not installed")


def _cpio_list(archive: bytes) -> list[str]:
    out = subprocess.run(["cpio", "-itv", "--quiet"], input=archive, capture_output=True, check=True)
    return out.stdout.decode().splitlines()


def _kinds(listing: list[str]) -> dict[str, str]:
    """name -> type letter from `cpio -itv` lines (links end with "-> target")."""
    out = {}
    for line in listing:
        fields = line.split()
        name = fields[-3] if len(fields) > 2 and fields[-2] == "->" else fields[-1]
        out[name] = line[0]
    return out


@needs_cpio
def test_newc_is_read_back_by_cpio(tmp_path: Path) -> None:
    entries = [
        Entry("d", S_IFDIR | 0o755),
        Entry("d/file", S_IFREG | 0o644, b"hello\n" * 3),  # length not a multiple of 4
        Entry("d/odd", S_IFREG | 0o600, b"x"),
        Entry("link", S_IFLNK | 0o777, b"d/file"),
        Entry("console", S_IFCHR | 0o600, rdevmajor=5, rdevminor=1),
    ]
    archive = newc(entries)
    assert len(archive) % 512 == 0
    assert _kinds(_cpio_list(archive)) == {"d": "d", "d/file": "-", "d/odd": "-", "link": "l", "console": "c"}
    subprocess.run(
        ["cpio", "-id", "--quiet", "d/file", "d/odd", "link"], input=archive, cwd=tmp_path, check=True
    )
    assert (tmp_path / "d/file").read_bytes() == b"hello\n" * 3
    assert (tmp_path / "d/odd").read_bytes() == b"x"
    assert os.readlink(tmp_path / "link") == "d/file"


def test_newc_is_deterministic() -> None:
    entries = baselines.busybox_entries(b"\x7fELF fake")
    assert newc(entries) == newc(entries)


@needs_cpio
@pytest.mark.skipif(not baselines.BUSYBOX.is_file(), reason="busybox-static not installed")
def test_busybox_floor_archive(tmp_path: Path) -> None:
    image = baselines.busybox_floor(cache=tmp_path)
    assert image.parent == tmp_path and image.name.endswith(".cpio")
    assert baselines.busybox_floor(cache=tmp_path) == image  # cached
    archive = image.read_bytes()
    assert archive[:6] == b"070701"  # plain newc, like the guestinit image: nothing to decode
    names = _kinds(_cpio_list(archive))
    assert names["init"] == "-" and names["bin/busybox"] == "-"
    assert names["dev/console"] == "c" and names["dev/kmsg"] == "c"
    for applet in baselines.APPLETS:
        assert names[f"bin/{applet}"] == "l"
    subprocess.run(["cpio", "-id", "--quiet", "init"], input=archive, cwd=tmp_path, check=True)
    assert (tmp_path / "init").read_text() == baselines.BUSYBOX_INIT
    assert os.access(tmp_path / "init", os.X_OK)


@pytest.mark.skipif(not baselines.BUSYBOX.is_file(), reason="busybox-static not installed")
def test_floor_init_script_parses_and_names_the_port() -> None:
    subprocess.run([os.fspath(baselines.BUSYBOX), "sh", "-n", "-c", baselines.BUSYBOX_INIT], check=True)
    for key in ("READY=1", "X_GUESTINIT_READY_S=", "X_GUESTINIT_EXEC_S=", "guestinit.notify"):
        assert key in baselines.BUSYBOX_INIT
    # every command the script runs is a linked applet (this busybox does not find them itself)
    for command in ("mount", "dmesg", "sed", "sleep"):
        assert command in baselines.APPLETS


def test_busybox_floor_refuses_a_dynamic_binary(tmp_path: Path) -> None:
    python = Path(os.path.realpath("/usr/bin/python3"))
    with pytest.raises(UserError, match="not a static ELF"):
        baselines.busybox_floor(python, cache=tmp_path)
    with pytest.raises(UserError, match="missing not found") as info:
        baselines.busybox_floor(tmp_path / "missing", cache=tmp_path)
    assert "apt-get install busybox-static" in info.value.hint


def test_systemd_report_script_parses() -> None:
    script = REPO / "baselines/systemd/mkosi.extra/usr/local/sbin/bench-ready"
    assert os.access(script, os.X_OK)
    subprocess.run(["sh", "-n", os.fspath(script)], check=True)
    unit = (REPO / "baselines/systemd/mkosi.extra/etc/systemd/system/bench-ready.service").read_text()
    assert "After=multi-user.target" in unit and "WantedBy=multi-user.target" in unit


def test_systemd_digest_follows_its_inputs(tmp_path: Path) -> None:
    for rel in ("baselines/systemd", "image/mkosi.sandbox", "guestinit/host/build"):
        (tmp_path / rel).mkdir(parents=True)
    (tmp_path / "baselines/systemd/mkosi.conf").write_text("[Output]\n")
    (tmp_path / "image/keep.list").write_text("usr/bin/python3*\n")
    (tmp_path / "image/finalize-common").write_text("")
    (tmp_path / "guestinit/host/build/trim.py").write_text("")
    first = baselines.systemd_digest(tmp_path)
    (tmp_path / "image/keep.list").write_text("usr/bin/python3*\nusr/bin/kmod\n")
    assert baselines.systemd_digest(tmp_path) != first


@pytest.mark.skipif(not (mkosi_python_path() / "mkosi").is_dir(), reason="mkosi not set up (make setup)")
def test_mkosi_parses_the_systemd_baseline_config(tmp_path: Path) -> None:
    import json

    env = dict(os.environ, PYTHONPATH=os.fspath(mkosi_python_path()))
    argv = baselines.systemd_mkosi_argv(REPO, tmp_path, ("--json", "summary"))
    out = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    config = json.loads(out.stdout)["Images"][-1]
    assert config["ImageId"] == baselines.SYSTEMD_ID
    assert config["Format"] == "cpio"
    # uncompressed and not re-framed, like the Kata image
    assert config["CompressOutput"] == "none" and config["PostOutputScripts"] == []
    assert {"systemd", "python3-minimal", "libpython3.13-stdlib", "kmod"} <= set(config["Packages"])
    # the finalize script finds the repository (keep-lists, trim.py) here
    assert {"Source": os.fspath(REPO), "Target": "repo"} in config["BuildSources"]


def test_kernel_version_is_read_beside_a_plain_or_zstd_image(tmp_path: Path) -> None:
    (tmp_path / "baseline-systemd.kver").write_text("6.12.1\n")
    assert baselines.kernel_version_of(tmp_path / "baseline-systemd.cpio") == "6.12.1"
    assert baselines.kernel_version_of(tmp_path / "baseline-systemd.cpio.zst") == "6.12.1"
    assert baselines.kernel_version_of(tmp_path / "other.cpio") == ""
