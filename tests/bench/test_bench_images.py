"""What `guestctl bench` boots: the built-in names, NAME=PATH images of either form, and the one
kernel of a run (a disk image's own kernel boots every image when one is in the run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from guestinit.host.bench import images
from guestinit.host.build.newc import S_IFREG, Entry
from guestinit.host.build.newc import write as newc
from guestinit.host.errors import UserError


def _initrd(path: Path) -> Path:
    path.write_bytes(newc([Entry("init", S_IFREG | 0o755, b"#!/bin/sh\n")]))
    return path


def _disk(path: Path) -> Path:
    path.write_bytes(b"\0" * 510 + b"\x55\xaa" + b"\0" * 512)
    return path


def test_default_and_builtin_names() -> None:
    assert images.parse_specs(None) == [("guestinit", None), ("busybox", None), ("systemd", None)]
    assert set(images.BUILTINS) == {
        "guestinit",
        "guestinit-erofs",
        "guestinit-gpu",
        "servicevm",
        "busybox",
        "systemd",
    }
    assert images.parse_specs(["guestinit-erofs", "x=/tmp/a.cpio"]) == [
        ("guestinit-erofs", None),
        ("x", Path("/tmp/a.cpio")),
    ]


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        (["nope"], "not a built-in image"),
        (["a b=/x"], "bad name"),
        (["x="], "empty path"),
        (["busybox", "busybox"], "given twice"),
    ],
)
def test_bad_image_specs_are_one_line_errors(specs: list[str], message: str) -> None:
    with pytest.raises(UserError, match=message):
        images.parse_specs(specs)


def test_given_images_of_both_forms(tmp_path: Path) -> None:
    initrd = _initrd(tmp_path / "a.cpio")
    disk = _disk(tmp_path / "b.img")
    (tmp_path / "b.vmlinuz").write_bytes(b"kernel b")
    a, b = images.resolve([("a", initrd), ("b", disk)])
    assert (a.form, a.kernel, a.own_kernel, a.caption) == ("initrd", None, False, "a.cpio")
    assert (b.form, b.kernel, b.own_kernel) == ("image", tmp_path / "b.vmlinuz", True)


def test_a_disk_image_without_its_kernel_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="disk image with no kernel beside it"):
        images.resolve([("b", _disk(tmp_path / "b.img"))])
    with pytest.raises(UserError, match="file not found"):
        images.resolve([("c", tmp_path / "missing.cpio")])


def test_a_disk_images_kernel_boots_every_image(tmp_path: Path) -> None:
    (tmp_path / "guestinit.vmlinuz").write_bytes(b"debian")
    (tmp_path / "erofs.vmlinuz").write_bytes(b"erofs built in")
    run = images.resolve(
        [
            ("guestinit", _initrd(tmp_path / "guestinit.cpio")),
            ("floor", _initrd(tmp_path / "floor.cpio")),
            ("guestinit-erofs", _disk(tmp_path / "erofs.img")),
        ]
    )
    kernel, why = images.choose_kernel(run, None)
    assert kernel == tmp_path / "erofs.vmlinuz" and "guestinit-erofs's own kernel" in why
    kernel, why = images.choose_kernel(run[:2], None)
    assert kernel == tmp_path / "guestinit.vmlinuz" and why == "beside guestinit"
    assert images.choose_kernel(run, tmp_path / "guestinit.vmlinuz") == (
        tmp_path / "guestinit.vmlinuz",
        "--kernel",
    )


def test_two_disk_images_with_different_kernels_cannot_share_a_run(tmp_path: Path) -> None:
    (tmp_path / "one.vmlinuz").write_bytes(b"one")
    (tmp_path / "two.vmlinuz").write_bytes(b"two")
    run = images.resolve([("one", _disk(tmp_path / "one.img")), ("two", _disk(tmp_path / "two.img"))])
    with pytest.raises(UserError, match="each need their own kernel"):
        images.choose_kernel(run, None)


def test_the_rootfs_a_manifest_names(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.json"
    artifacts = [{"name": "k.vmlinuz", "kind": "kernel"}, {"name": "guestinit-kata.img", "kind": "image"}]
    manifest.write_text(json.dumps({"artifacts": artifacts}))
    assert images.image_of(manifest) == tmp_path / "guestinit-kata.img"
    manifest.write_text(json.dumps({"artifacts": artifacts[:1]}))
    with pytest.raises(UserError, match="names no initrd or disk image"):
        images.image_of(manifest)


def test_an_unwritable_output_is_refused_before_any_boot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from guestinit.host.bench import run

    def no_boots(_args: object) -> dict[str, object]:
        raise AssertionError("booted before checking its outputs")

    monkeypatch.setattr(run, "run_bench", no_boots)
    (tmp_path / "file").write_text("")
    for option, value, why in (
        ("--json", str(tmp_path / "file" / "bench.json"), "cannot make its folder"),
        ("--svg", str(tmp_path), "is a folder"),
    ):
        assert run.main(["--runs", "1", "--image", "busybox", option, value]) == 2
        err = capsys.readouterr().err
        assert err == f"guestctl bench: {option} {value}: {err.split(': ', 2)[2]}" and why in err
        assert len(err.splitlines()) == 1


def test_a_failed_output_after_the_boots_loses_nothing(tmp_path: Path) -> None:
    """The runs folder keeps the whole report; an output that cannot be written is one line."""
    import argparse
    import json

    from guestinit.host.bench import run

    report = json.loads((Path(__file__).parent / "data" / "recorded-bench.json").read_text())
    report["conditions"]["runs_dir"] = str(tmp_path / "runs")
    (tmp_path / "file").write_text("")
    args = argparse.Namespace(json=str(tmp_path / "file" / "out.json"), svg=str(tmp_path / "out.svg"))
    written, failed = run.write_outputs(args, report)
    assert json.loads((tmp_path / "runs" / "bench.json").read_text()) == report
    assert len(failed) == 1
    assert failed[0].startswith(f"guestctl bench: {tmp_path}/file/out.json: not written (")
    assert failed[0].endswith(f"the runs are in {tmp_path}/runs/bench.json")
    assert written == [f"SVG timeline: {tmp_path}/out.svg"]
    assert (tmp_path / "out.svg").read_text().rstrip().endswith("</svg>")


def test_the_bench_runs_tcg_multi_threaded_unless_told_otherwise() -> None:
    from guestinit.host.bench import run

    assert run.parse_args([]).tcg_threads == "multi"  # parallel vCPUs, as KVM gives systemd
    assert run.parse_args(["--tcg-threads", "auto"]).tcg_threads == "auto"  # guestctl boot's choice
    assert run.parse_args(["--tcg-threads", "single"]).tcg_threads == "single"


def test_a_run_booted_again_says_so_in_its_record_and_its_line() -> None:
    from guestinit.host.bench import run
    from guestinit.host.result import BootResult

    why = "attempt 1: kernel died before init (Oops: int3: 0000 [#1] PREEMPT SMP NOPTI); see c.log"
    result = BootResult(ready=True, uptime_at_ready_s=2.5, ready_host_s=3.5, retried=[why])
    record = run._record(result)
    assert record["retried"] == [why]
    assert run._progress(record) == f"READY at guest 2.5 s, host 3.5 s (booted again after: {why})"
    plain = run._record(BootResult(ready=True, uptime_at_ready_s=2.5, ready_host_s=3.5))
    assert "retried" not in plain and run._progress(plain) == "READY at guest 2.5 s, host 3.5 s"
