"""The stand-in's record of what an init left it (cgroups.c and the report's "ptmx"): on the
host, in a cgroup of the test's own standing in for /sys/fs/cgroup where this machine allows
one, it makes a container's cgroup as the kata-agent would (cgroupsPath from the root,
controllers enabled on the way, the first process moved in) and removes it again."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from cgroup2_host import make_test_cgroup, remove_test_cgroup
from standin_harness import Run


@pytest.fixture
def cgroup_root() -> Iterator[Path]:
    path, why = make_test_cgroup()
    if path is None:
        pytest.skip(f"no real cgroup test here: {why}")
    try:
        yield path
    finally:
        remove_test_cgroup(path)


def probe(exe: Path, workdir: Path, root: Path, cmdline: str) -> dict[str, object]:
    run = Run(exe, workdir, cmdline=cmdline).start(env={"KATA_STANDIN_CGROUP_ROOT": str(root)})
    try:
        report = run.report()
    finally:
        run.stop()
    assert isinstance(report, dict)
    return report


@pytest.mark.parametrize("kind", ["static", "dynamic"])
def test_the_standin_makes_a_container_cgroup_where_the_agent_would(
    standins: dict[str, Path], tmp_path: Path, cgroup_root: Path, kind: str
) -> None:
    path = "kubepods/besteffort/pod7e57/ctr1"
    report = probe(standins[kind], tmp_path / "run", cgroup_root, f"quiet agent.standin_cgroup=/{path}")
    cg = report["cgroup_probe"]
    assert isinstance(cg, dict)
    assert cg["path"] == f"{cgroup_root}/{path}" and cg["unified"] is True
    assert cg["mkdir"] == "ok" and cg["move"] == "ok", cg
    moved = str(cg["moved_to"])
    assert moved.startswith("/") and moved.endswith(f"/{cgroup_root.name}/{path}"), cg
    assert cg["removed"] is True and not (cgroup_root / "kubepods").exists()
    controllers = str(cg["root_controllers"]).split()
    assert cg["memory_max"] == ("ok" if "memory" in controllers else "No such file or directory")
    assert cg["enable_refused"] == []
    assert report["ptmx"] == (f"-> {os.readlink('/dev/ptmx')}" if os.path.islink("/dev/ptmx") else "char 5:2")


def test_a_systemd_style_cgroups_path_becomes_directories(
    standins: dict[str, Path], tmp_path: Path, cgroup_root: Path
) -> None:
    """The agent's cgroupfs driver reads "slice:prefix:name" as slice/prefix/name."""
    cmdline = "agent.standin_cgroup=kubepods-besteffort-pod7e57.slice:cri-containerd:ctr1"
    cg = probe(standins["static"], tmp_path / "run", cgroup_root, cmdline)["cgroup_probe"]
    assert isinstance(cg, dict)
    assert cg["path"] == f"{cgroup_root}/kubepods-besteffort-pod7e57.slice/cri-containerd/ctr1"
    assert cg["move"] == "ok" and cg["removed"] is True


def test_no_key_no_probe(standins: dict[str, Path], tmp_path: Path) -> None:
    report = probe(standins["static"], tmp_path / "run", tmp_path / "nowhere", "quiet")
    assert report["cgroup_probe"] is None
