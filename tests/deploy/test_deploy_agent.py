"""guestctl deploy and the kata-agent: an image without one is refused (every sandbox would wait
dial_timeout for it), and the agent's release is checked against the node's Kata shim."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from deploy_harness import make_build

from guestinit.host.kata import agent, deploy

GOLANG = 'Kata Containers containerd shim (Golang): id: "io.containerd.kata.v2", version: {v}, commit: abc'
RUST = "Kata Containers containerd shim (Rust): id: io.containerd.kata.v2, version: {v}, commit: 92758a1"


def fake_shim(prefix: Path, text: str) -> Path:
    shim = prefix / "bin" / agent.SHIM
    shim.parent.mkdir(parents=True, exist_ok=True)
    shim.write_text(f"#!/bin/sh\necho '{text}'\n")
    shim.chmod(0o755)
    return shim


def deploy_with(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    code = deploy.deploy_main([os.fspath(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(autouse=True)
def no_shim_on_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", os.fspath(tmp_path / "empty-path"))


def test_an_image_without_an_agent_is_refused_and_nothing_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = make_build(tmp_path / "b", "0.1.0-1", agent=None)
    prefix = tmp_path / "opt-kata"
    code, out, err = deploy_with(capsys, "--manifest", manifest, "--prefix", prefix)
    assert code == 1 and out == ""
    assert len(err.strip().splitlines()) == 1
    assert "the image has no kata-agent" in err and "--kata-agent SOURCE" in err and "--allow-no-agent" in err
    assert not prefix.exists()
    code, out, err = deploy_with(capsys, "--manifest", manifest, "--prefix", prefix, "--allow-no-agent")
    assert code == 0, err
    assert "agent    none in the image (--allow-no-agent)" in out


@pytest.mark.parametrize("form", [GOLANG, RUST])
def test_the_agent_is_reported_beside_the_shim_of_the_same_release(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], form: str
) -> None:
    prefix = tmp_path / "opt-kata"
    shim = fake_shim(prefix, form.format(v="3.99.0"))
    manifest = make_build(tmp_path / "b", "0.1.0-1", agent="3.99.0")
    code, out, err = deploy_with(capsys, "--manifest", manifest, "--prefix", prefix)
    assert code == 0, err
    assert "agent    kata-agent 3.99.0 (static; from kata-static-3.99.0" in out
    assert f"shim     {shim} 3.99.0: same release" in out


def test_another_release_is_refused_unless_forced(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prefix = tmp_path / "opt-kata"
    fake_shim(prefix, GOLANG.format(v="3.19.1"))
    manifest = make_build(tmp_path / "b", "0.1.0-1", agent="3.99.0")
    code, out, err = deploy_with(capsys, "--manifest", manifest, "--prefix", prefix)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "kata-agent 3.99.0" in err and "3.19.1" in err and "--force" in err
    assert not (prefix / "share").exists()
    code, out, err = deploy_with(capsys, "--manifest", manifest, "--prefix", prefix, "--force")
    assert code == 0, err
    assert "release differs (--force)" in out


def test_a_node_without_a_shim_is_said(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = make_build(tmp_path / "b", "0.1.0-1")
    code, out, err = deploy_with(capsys, "--manifest", manifest, "--prefix", tmp_path / "p", "--dry-run")
    assert code == 0, err
    assert f"no {agent.SHIM} in" in out and "not checked" in out


def test_shim_on_path_is_found_when_the_prefix_has_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = fake_shim(tmp_path / "usr-local", RUST.format(v="3.22.0"))
    monkeypatch.setenv("PATH", os.fspath(elsewhere.parent))
    assert agent.find_shim(tmp_path / "opt-kata") == elsewhere
    assert agent.shim_version(elsewhere) == "3.22.0"


@pytest.mark.parametrize(
    ("text", "want"),
    [
        (GOLANG.format(v="3.19.1"), "3.19.1"),
        (RUST.format(v="3.29.0"), "3.29.0"),
        ("containerd-shim-kata-v2 version 3.2.0-rc0 (commit x)", "3.2.0-rc0"),
        ("no version here", None),
    ],
)
def test_shim_version_forms(tmp_path: Path, text: str, want: str | None) -> None:
    assert agent.shim_version(fake_shim(tmp_path, text)) == want


def test_a_manifest_with_a_bad_agent_record_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = make_build(tmp_path / "b", "0.1.0-1")
    manifest.write_text(manifest.read_text().replace('"version": "3.99.0"', '"version": 3'))
    code, _, err = deploy_with(capsys, "--manifest", manifest, "--prefix", tmp_path / "p")
    assert code == 1 and "'version' is missing or not a str" in err and len(err.strip().splitlines()) == 1
