"""SOURCE_DATE_EPOCH for a build, and naming where two builds part."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import pytest

from guestinit.host.build import reproducible
from guestinit.host.build.newc import S_IFREG, Entry, write
from guestinit.host.errors import UserError


def git(repo: Path, *args: str, when: str = "2026-01-02T03:04:05Z") -> None:
    env = {"GIT_AUTHOR_DATE": when, "GIT_COMMITTER_DATE": when, "HOME": str(repo), "PATH": "/usr/bin:/bin"}
    subprocess.run(["git", "-C", str(repo), *args], check=True, env=env, capture_output=True)


def test_the_epoch_is_the_last_commit_touching_the_inputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    git(tmp_path, "init", "-q")
    git(tmp_path, "config", "user.email", "t@example.com")
    git(tmp_path, "config", "user.name", "t")
    (tmp_path / "image").mkdir()
    (tmp_path / "image" / "keep.list").write_text("a\n")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-qm", "image", when="2026-01-02T03:04:05Z")
    (tmp_path / "README.md").write_text("docs\n")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-qm", "docs", when="2026-02-01T00:00:00Z")
    epoch, source = reproducible.source_date_epoch(tmp_path, ("image", "mkosi.conf"))
    assert epoch == 1767323045 and "last commit" in source  # the README commit does not count
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1234")
    assert reproducible.source_date_epoch(tmp_path, ("image",)) == (1234, "$SOURCE_DATE_EPOCH")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "12e3")
    with pytest.raises(UserError, match="not a number of seconds"):
        reproducible.source_date_epoch(tmp_path, ("image",))


def test_outside_git_the_newest_input_decides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    (tmp_path / "image").mkdir()
    for name, when in (("a", 1000), ("b", 2000)):
        (tmp_path / "image" / name).write_text(name)
        os.utime(tmp_path / "image" / name, (when, when))
    assert reproducible.source_date_epoch(tmp_path, ("image",)) == (
        2000,
        "the newest input file (not a git checkout)",
    )


def test_first_difference_names_the_member_and_what_differs(tmp_path: Path) -> None:
    a, b = tmp_path / "a.cpio", tmp_path / "b.cpio"
    a.write_bytes(write([Entry("etc/x", S_IFREG | 0o644, b"1", mtime=5)]))
    b.write_bytes(write([Entry("etc/x", S_IFREG | 0o644, b"1", mtime=6)]))
    assert reproducible.first_difference(a, b) == "etc/x: mtime differ"
    b.write_bytes(write([Entry("etc/x", S_IFREG | 0o644, b"1", mtime=5), Entry("etc/y", S_IFREG, b"")]))
    assert reproducible.first_difference(a, b) == "etc/y is only in the second build"
    raw_a, raw_b = tmp_path / "a.img", tmp_path / "b.img"
    raw_a.write_bytes(bytes(1000))
    raw_b.write_bytes(bytes(999) + b"\x01")
    assert reproducible.first_difference(raw_a, raw_b) == "first differing byte at offset 999"


def test_compare_lists_every_artifact_that_differs(tmp_path: Path) -> None:
    first = [{"name": "k", "sha256": "a" * 64}, {"name": "i", "sha256": "b" * 64}]
    second = [{"name": "k", "sha256": "a" * 64}, {"name": "i", "sha256": "c" * 64}]
    (tmp_path / "1").mkdir()
    (tmp_path / "2").mkdir()
    (tmp_path / "1" / "i").write_bytes(b"x")
    (tmp_path / "2" / "i").write_bytes(b"y")
    problems = reproducible.compare(first, second, tmp_path / "1", tmp_path / "2")
    assert problems == [f"i: sha256 {'b' * 16}… vs {'c' * 16}…; first differing byte at offset 0"]
    assert reproducible.compare(first, first, tmp_path / "1", tmp_path / "1") == []


@pytest.mark.boot
def test_two_builds_of_the_default_image_are_byte_for_byte_the_same() -> None:
    """The real thing: the second build starts from nothing but the downloaded packages."""
    from guestinit.host.build.builder import build

    log = io.StringIO()
    build("kata", check_reproducible=True, log=log)
    assert "byte for byte the same" in log.getvalue()
