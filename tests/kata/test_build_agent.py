"""guestctl build --kata-agent: the agent resolved before anything is built (bad input leaves the
last build untouched), laid out for mkosi with the Debian packages its libraries come from, its
version read in the finished image and recorded in the manifest; and, booted, the stand-in finds
what an agent that is not PID 1 expects."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import kata_sources
import pytest
from pytest_subprocess import FakeProcess
from standin_harness import Vm, console_report

from guestinit.host.bench.images import image_of
from guestinit.host.build import agent, builder, images
from guestinit.host.build import manifest as manifests
from guestinit.host.errors import UserError

LINE = "kata-agent version 3.99.0 (api version: 0.0.1, commit version: 3.99.0-abc, type: rust)"


def test_stage_lays_out_the_agent_and_names_its_packages(dynamic_agent: Path, tmp_path: Path) -> None:
    log = io.StringIO()
    staged = agent.stage(str(dynamic_agent), images.target("kata"), tmp_path / "work", log)
    assert staged is not None
    placed = staged.tree / agent.AGENT_PATH
    assert placed.read_bytes() == dynamic_agent.read_bytes() and placed.stat().st_mode & 0o111
    options = staged.mkosi_options
    assert options[:2] == ("--extra-tree", f"{staged.tree}:/")
    assert options[2] == "--package" and set(options[3].split(",")) >= {"libdevmapper1.02.1", "libseccomp2"}
    assert "dynamic: libdevmapper.so.1.02.1" in log.getvalue()


def test_no_agent_anywhere_builds_without_one_and_says_so_loudly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(agent, "KATA_PREFIX", tmp_path / "no-kata-here")
    log = io.StringIO()
    assert agent.stage(None, images.target("kata"), tmp_path / "work", log) is None
    assert log.getvalue().startswith("WARNING: no --kata-agent given") and "NO kata-agent" in log.getvalue()


def test_the_agent_of_an_installed_kata_is_taken(
    static_agent: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = tmp_path / "opt-kata"
    image = kata_sources.initrd(kata_sources.agent_init_tree(tmp_path / "root", static_agent), tmp_path / "i")
    kata_sources.kata_asset_dir(
        prefix, {"kata-alpine-3.18.initrd": image}, {"kata-containers-initrd.img": "kata-alpine-3.18.initrd"}
    )
    monkeypatch.setattr(agent, "KATA_PREFIX", prefix)
    log = io.StringIO()
    staged = agent.stage(None, images.target("kata"), tmp_path / "work", log)
    assert staged is not None and staged.agent.sha256 and staged.mkosi_options[2:] == ()
    assert f"taking the agent of the Kata under {prefix}" in log.getvalue()


def test_the_service_vm_takes_no_agent(static_agent: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--kata-agent is for the kata image"):
        agent.stage(str(static_agent), images.target("servicevm"), tmp_path / "w", io.StringIO())


@pytest.fixture
def repo(built_kata: Path) -> Path:
    """A repository copy with a good last build in build/kata; mkosi stood in for."""
    return built_kata.parents[1]


def _mkosi(stand_in: Callable[..., None], version_line: str | None) -> None:
    def run(process: FakeProcess) -> None:
        argv = [str(a) for a in process.args]
        out = Path(argv[argv.index("--output-directory") + 1])
        tree = argv[argv.index("--extra-tree") + 1].rsplit(":", 1)[0]
        assert Path(tree, agent.AGENT_PATH).is_file()  # the agent is in the tree mkosi gets
        (out / "guestinit-kata.cpio").write_bytes(b"initrd with an agent")
        (out / "guestinit-kata.vmlinuz").write_bytes(b"kernel")
        if version_line is not None:  # what image/mkosi.finalize writes
            (out / "guestinit-kata.agent-version").write_text(version_line + "\n")

    stand_in(run)


def test_the_manifest_records_the_agent(
    repo: Path, dynamic_agent: Path, stand_in_mkosi: Callable[..., None]
) -> None:
    _mkosi(stand_in_mkosi, LINE)
    path = builder.build("kata", kata_agent=str(dynamic_agent), log=io.StringIO())
    record = json.loads(path.read_text())["kata_agent"]
    assert record["version"] == "3.99.0" and record["linking"]["type"] == "dynamic"
    assert record["source"]["given"] == str(dynamic_agent) and len(record["sha256"]) == 64
    assert "libseccomp2" in record["packages"]
    assert not (path.parent / "guestinit-kata.agent-version").exists()
    assert manifests.load_manifest(path).agent is not None  # what deploy reads
    assert not (repo / "build" / ".agent-kata").exists()


@pytest.mark.parametrize(
    ("source", "expect"),
    [
        ("{tmp}/missing", "no such file or directory"),
        ("{tmp}/notes.txt", "not"),
        ("/bin/true", "not"),
    ],
)
def test_bad_sources_fail_before_the_build_and_keep_the_last_one(
    repo: Path, fp: FakeProcess, source: str, expect: str
) -> None:
    (repo / "notes.txt").write_text("not an agent\n")
    before = {p.name: p.read_bytes() for p in (repo / "build" / "kata").iterdir()}
    with pytest.raises(UserError, match=expect) as caught:
        builder.build("kata", kata_agent=source.format(tmp=repo), log=io.StringIO())
    assert "\n" not in caught.value.line()
    assert fp.call_count([fp.any()]) == 0  # mkosi never ran
    assert {p.name: p.read_bytes() for p in (repo / "build" / "kata").iterdir()} == before


def test_an_agent_that_reports_no_version_in_the_image_fails_the_build(
    repo: Path, static_agent: Path, stand_in_mkosi: Callable[..., None]
) -> None:
    _mkosi(stand_in_mkosi, None)
    with pytest.raises(UserError, match="did not report a version"):
        builder.build("kata", kata_agent=str(static_agent), log=io.StringIO())
    assert (repo / "build" / "kata" / "guestinit-kata.cpio.lz4").read_bytes() == b"good initrd"


@pytest.mark.boot
def test_a_built_in_dynamic_agent_runs_in_the_guest(dynamic_agent: Path, tmp_path: Path) -> None:
    """The real build: mkosi installs libdevmapper and libseccomp from Debian, finalize reads the
    agent's version inside the trimmed image, and the guest starts it as its last service."""
    path = builder.build("kata", kata_agent=str(dynamic_agent), if_needed=True, log=io.StringIO())
    record = json.loads(path.read_text())["kata_agent"]
    assert record["version"] == "3.99.0" and record["linking"]["type"] == "dynamic"
    # The agent is ready once started: its report reaches the console after READY, so the VM
    # is watched until it has, then powered down.
    vm = Vm(image_of(path), [], "", tmp_path / "vm")
    try:
        assert vm.until(lambda: vm.first("READY") or vm.exited(), 180), vm.why()
        assert vm.until(lambda: "KATA_STANDIN_REPORT " in vm.console(), 60), vm.why()
        report = console_report(vm.console())
        vm.powerdown()
        assert vm.until(vm.exited, 60), vm.why()
    finally:
        vm.close()
    assert report["build"] == "dynamic" and report["ppid"] == 1
    assert report["libdevmapper"] and report["libseccomp"]  # its Debian libraries loaded
    assert report["oom_score_adj"] == -997 and report["rlimit_nofile"]["soft"] == 1048576
