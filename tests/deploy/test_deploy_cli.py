"""guestctl deploy / rollback against prefixes in tmp_path: layout, byte-for-byte rollback,
taking over a kata-deploy install, dry runs, bad inputs, pruning."""

from __future__ import annotations

import fcntl
import json
import os
import tomllib
from pathlib import Path

import pytest
import yaml
from deploy_harness import FLAVOUR, PUBLIC, make_build, make_upstream, observe, sha, tree
from hypothesis import given
from hypothesis import strategies as st

from guestinit.host.kata import deploy
from guestinit.host.kata import render as katarender
from guestinit.host.kata import settings as katasettings
from guestinit.host.plan import planner as plan

REFERENCE_KEYS = {  # references §2: the keys of configuration-qemu-nvidia-gpu.toml upstream sets
    "hypervisor.qemu": "kernel image initrd rootfs_type machine_type firmware kernel_params default_vcpus "
    "default_memory memory_slots default_bridges enable_hugepages enable_iommu hot_plug_vfio "
    "cold_plug_vfio pcie_root_port disable_image_nvdimm",
    "agent.kata": "dial_timeout",
    "runtime": "create_container_timeout static_sandbox_resource_mgmt sandbox_cgroup_only",
}
H200_ROOT = Path(__file__).resolve().parents[1] / "fixtures" / "h200-firecracker-vm" / "root"


def run(capsys: pytest.CaptureFixture[str], command: str, *argv: str | Path) -> tuple[int, str, str]:
    main = deploy.deploy_main if command == "deploy" else deploy.rollback_main
    code = main([os.fspath(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def builds(tmp_path: Path) -> tuple[Path, Path]:
    return (
        make_build(tmp_path / "build-a", "0.1.0-20261126160000"),
        make_build(tmp_path / "build-b", "0.1.0-20261126170000"),
    )


def test_deploy_installs_versioned_files_behind_kata_names(
    tmp_path: Path, builds: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    prefix = tmp_path / "opt-kata"
    code, out, err = run(capsys, "deploy", "--manifest", builds[0], "--prefix", prefix)
    assert code == 0, err
    manifest = json.loads(builds[0].read_text())
    want = {a["kind"]: a for a in manifest["artifacts"]}
    # Kata's names are symlinks; what they resolve to is the versioned file, byte for byte.
    for kind in ("initrd", "kernel"):
        public = prefix / PUBLIC[kind]
        assert public.is_symlink()
        real = Path(os.path.realpath(public))
        assert real.parent == prefix / "share" / "kata-containers"
        assert manifest["version"] in real.name and real.name.endswith(
            ".initrd" if kind == "initrd" else ".container"
        )
        assert sha(real.read_bytes()) == want[kind]["sha256"]
    assert not os.path.lexists(prefix / PUBLIC["image"])
    # The configuration: only keys Kata reads, naming the versioned files (one read, one version).
    config = tomllib.loads((prefix / PUBLIC["config"]).read_text())
    assert katarender.unknown_kata_keys(config) == []
    qemu = config["hypervisor"]["qemu"]
    assert qemu["kernel"] == os.path.realpath(prefix / PUBLIC["kernel"])
    assert qemu["initrd"] == os.path.realpath(prefix / PUBLIC["initrd"])
    assert "image" not in qemu and "rootfs_type" not in qemu
    assert (qemu["pcie_root_port"], qemu["cold_plug_vfio"], qemu["hot_plug_vfio"]) == (
        8,
        "root-port",
        "no-port",
    )
    assert qemu["path"] == f"{prefix}/bin/qemu-system-x86_64"
    assert config["agent"]["kata"]["dial_timeout"] == 1200
    assert config["runtime"]["static_sandbox_resource_mgmt"] is True
    # containerd's runtime block, as in the seed document, pointing at that configuration.
    runtime = tomllib.loads((prefix / PUBLIC["containerd"]).read_text())["plugins"][
        "io.containerd.grpc.v1.cri"
    ]
    block = runtime["containerd"]["runtimes"]["kata-qemu-nvidia-gpu"]
    assert block["runtime_type"] == "io.containerd.kata-qemu-nvidia-gpu.v2"
    assert block["runtime_path"] == f"{prefix}/bin/containerd-shim-kata-v2"
    assert block["privileged_without_host_devices"] is True
    assert block["pod_annotations"] == ["io.katacontainers.*"]
    assert block["options"]["ConfigPath"] == os.fspath(prefix / PUBLIC["config"])
    # The RuntimeClass for kubectl, beside it in the current version.
    current = prefix / "share" / "guestinit" / FLAVOUR / "current"
    rc = yaml.safe_load((current / "runtimeclass-kata-qemu-nvidia-gpu.yaml").read_text())
    assert (rc["kind"], rc["handler"], rc["metadata"]["name"]) == ("RuntimeClass",) + (
        "kata-qemu-nvidia-gpu",
    ) * 2
    assert "deployed 0.1.0-20261126160000+" in out and "the first version here" in out


def test_known_keys_cover_the_reference_and_catch_typos() -> None:
    known = katarender.known_kata_keys()
    for table, keys in REFERENCE_KEYS.items():
        assert set(keys.split()) <= known[table], table
    written = {s.key for s in katasettings.KATA_SETTINGS}
    assert written <= known["hypervisor.qemu"] | known["agent.kata"] | known["runtime"]
    document = {
        "hypervisor": {"qemu": {"pcie_root_ports": 8, "kernel": "k"}},
        "agent": {"kata": {"dial_timeout": 1}},
        "runtime": {"create_container_timout": 5},
        "hypervisr": {"qemu": {}},
    }
    assert sorted(katarender.unknown_kata_keys(document)) == [
        "hypervisor.qemu.pcie_root_ports",
        "hypervisr",
        "runtime.create_container_timout",
    ]


@given(st.text() | st.lists(st.text(max_size=5), max_size=3) | st.integers(0, 2**40) | st.booleans())
def test_toml_values_round_trip(value: object) -> None:
    assert tomllib.loads(f"k = {katarender.toml_value(value)}")["k"] == value


def test_rollback_restores_byte_for_byte_and_toggles(
    tmp_path: Path, builds: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    prefix = tmp_path / "opt-kata"
    assert run(capsys, "deploy", "--manifest", builds[0], "--prefix", prefix)[0] == 0
    state_a = observe(prefix)
    assert run(capsys, "deploy", "--manifest", builds[1], "--prefix", prefix)[0] == 0
    state_b = observe(prefix)
    assert state_b != state_a and all(
        state_b[k] is not None for k in ("initrd", "kernel", "config", "containerd")
    )
    code, out, err = run(capsys, "rollback", "--prefix", prefix)
    assert code == 0, err
    assert observe(prefix) == state_a
    assert "switch   share/kata-containers/kata-containers-initrd-nvidia-gpu.img" in out
    code, out, err = run(capsys, "rollback", "--prefix", prefix)  # rolling back a rollback: B again
    assert code == 0, err
    assert observe(prefix) == state_b
    code, out, _ = run(capsys, "rollback", "--prefix", prefix, "--list")
    assert code == 0 and out.count("(current)") == 1 and out.count("(previous)") == 1
    version_a = next(line.split()[0] for line in out.splitlines() if "(previous)" in line)
    assert run(capsys, "rollback", "--prefix", prefix, "--to", version_a)[0] == 0
    assert observe(prefix) == state_a


def test_takeover_of_a_kata_deploy_install_and_rollback_to_it(
    tmp_path: Path, builds: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    prefix = tmp_path / "opt-kata"
    upstream = make_upstream(prefix)
    upstream_files = {
        p: sha(p.read_bytes()) for p in (prefix / "share" / "kata-containers").iterdir() if not p.is_symlink()
    }
    code, out, err = run(capsys, "deploy", "--manifest", builds[0], "--prefix", prefix)
    assert code == 0, err
    assert "previous: snapshot-" in out
    assert observe(prefix)["initrd"] != upstream["initrd"]
    code, out, err = run(capsys, "rollback", "--prefix", prefix)
    assert code == 0, err
    assert observe(prefix) == upstream  # the regular-file configuration too, byte for byte
    for path, digest in upstream_files.items():  # kata-deploy's own files were never touched
        assert sha(path.read_bytes()) == digest


def test_dry_run_writes_nothing_and_says_what_would_change(
    tmp_path: Path, builds: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    prefix = tmp_path / "opt-kata"
    make_upstream(prefix)
    before = tree(prefix)
    code, out, err = run(capsys, "deploy", "--manifest", builds[0], "--prefix", prefix, "--dry-run")
    assert code == 0, err
    assert tree(prefix) == before
    assert "install  share/kata-containers/kata-guestinit-0.1.0-20261126160000-nvidia-gpu.initrd" in out
    assert "adopt    share/kata-containers/kata-containers-initrd-nvidia-gpu.img" in out
    assert (
        "switch   share/kata-containers/vmlinuz-nvidia-gpu.container: vmlinuz-6.12.47-166-nvidia-gpu -> "
        "vmlinuz-guestinit-0.1.0-20261126160000-nvidia-gpu.container" in out
    )
    assert "change   share/defaults/kata-containers/configuration-qemu-nvidia-gpu.toml:" in out
    assert '-kernel = "/opt/kata/share/kata-containers/vmlinuz-nvidia-gpu.container"' in out
    assert "create   containerd/config.d/kata-qemu-nvidia-gpu.toml" in out
    assert out.rstrip().endswith("nothing was written (--dry-run)")
    assert run(capsys, "deploy", "--manifest", builds[0], "--prefix", prefix)[0] == 0
    before = tree(prefix)
    code, out, _ = run(capsys, "rollback", "--prefix", prefix, "--dry-run")
    assert code == 0 and tree(prefix) == before
    assert "switch   share/kata-containers/kata-containers-initrd-nvidia-gpu.img: kata-guestinit-" in out
    assert "remove   containerd/config.d/kata-qemu-nvidia-gpu.toml" in out
    code, out, _ = run(capsys, "deploy", "--manifest", builds[0], "--prefix", prefix, "--dry-run")
    assert code == 0 and "nothing changes: this version is current" in out


def test_changed_artifact_is_refused_and_prefix_untouched(
    tmp_path: Path, builds: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    prefix = tmp_path / "opt-kata"
    assert run(capsys, "deploy", "--manifest", builds[0], "--prefix", prefix)[0] == 0
    before = tree(prefix)
    initrd = builds[1].parent / "guestinit-kata.cpio.lz4"
    data = bytearray(initrd.read_bytes())
    data[1000] ^= 0xFF
    initrd.write_bytes(bytes(data))
    code, out, err = run(capsys, "deploy", "--manifest", builds[1], "--prefix", prefix)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and f"{initrd}: sha256 " in err and "rebuild" in err
    assert tree(prefix) == before


def _bad_manifest(tmp_path: Path, edit: str) -> Path:
    path = make_build(tmp_path / "bad", "0.1.0-1")
    doc = json.loads(path.read_text())
    if edit == "json":
        path.write_text("{not json")
        return path
    if edit == "version":
        doc["version"] = "../../etc"
    elif edit == "no-kernel":
        doc["artifacts"] = [a for a in doc["artifacts"] if a["kind"] != "kernel"]
    elif edit == "two-rootfs":
        doc["artifacts"].append(dict(doc["artifacts"][0], kind="image"))
    elif edit == "path-name":
        doc["artifacts"][0]["name"] = "../x"
    elif edit == "missing-file":
        (path.parent / doc["artifacts"][0]["name"]).unlink()
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize(
    ("argv", "expect"),
    [
        (["deploy", "--manifest", "{tmp}/nope.json"], "no build manifest there: run `guestctl build kata`"),
        (["deploy", "--manifest", "@json"], "not valid JSON"),
        (["deploy", "--manifest", "@version"], "version '../../etc' is not a safe file-name part"),
        (["deploy", "--manifest", "@no-kernel"], "no artifact of kind 'kernel'"),
        (["deploy", "--manifest", "@two-rootfs"], "need exactly one artifact of kind 'initrd' or 'image'"),
        (["deploy", "--manifest", "@path-name"], "is not a plain file name"),
        (["deploy", "--manifest", "@missing-file"], "missing (the manifest lists it)"),
        (["deploy", "--manifest", "@ok", "--sysfs-root", "{tmp}"], "no sys/bus/pci under it"),
        (["rollback"], "no previous version to roll back to"),
        (["rollback", "--to", "0.0.0+deadbeef"], "is not kept under"),
    ],
)
def test_bad_input_is_one_line_naming_it(
    tmp_path: Path, argv: list[str], expect: str, capsys: pytest.CaptureFixture[str]
) -> None:
    resolved = []
    for arg in argv:
        if arg.startswith("@"):
            arg = os.fspath(_bad_manifest(tmp_path, arg[1:]))
        resolved.append(arg.replace("{tmp}", os.fspath(tmp_path)))
    code, out, err = run(capsys, resolved[0], *resolved[1:], "--prefix", tmp_path / "opt-kata")
    assert code == 1 and out == ""
    assert err.startswith(f"guestctl {resolved[0]}: ") and err.count("\n") == 1 and "Traceback" not in err
    assert expect in err


@pytest.mark.parametrize(
    ("argv", "expect"),
    [(["--flavour", "Bad_Flavour"], "is not a flavour name"), (["--keep", "0"], "keep at least 1 version")],
)
def test_bad_options_are_usage_errors(
    argv: list[str], expect: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "deploy", *argv)
    assert code == 2 and expect in err and "Traceback" not in err


def test_keeps_newest_versions_and_never_current_or_previous(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prefix = tmp_path / "opt-kata"
    manifests = [make_build(tmp_path / f"b{i}", f"0.1.0-2026112616000{i}") for i in range(5)]
    for manifest in manifests:
        code, _, err = run(capsys, "deploy", "--manifest", manifest, "--prefix", prefix, "--keep", "2")
        assert code == 0, err
    versions = sorted(p.name for p in (prefix / "share" / "guestinit" / FLAVOUR / "versions").iterdir())
    assert [v.split("+")[0] for v in versions] == ["0.1.0-20261126160003", "0.1.0-20261126160004"]
    assets = sorted(p.name for p in (prefix / "share" / "kata-containers").iterdir() if not p.is_symlink())
    assert all("20261126160003" in a or "20261126160004" in a for a in assets) and len(assets) == 4
    # Rolling back, then deploying more, never prunes the version rolled back from.
    assert run(capsys, "rollback", "--prefix", prefix)[0] == 0
    state = observe(prefix)
    code, _, err = run(capsys, "deploy", "--manifest", manifests[0], "--prefix", prefix, "--keep", "1")
    assert code == 0, err
    assert run(capsys, "rollback", "--prefix", prefix)[0] == 0
    assert observe(prefix) == state


def test_rollback_refuses_a_modified_version(
    tmp_path: Path, builds: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    prefix = tmp_path / "opt-kata"
    for manifest in builds:
        assert run(capsys, "deploy", "--manifest", manifest, "--prefix", prefix)[0] == 0
    versioned = Path(os.path.realpath(prefix / PUBLIC["initrd"])).name.replace("170000", "160000")
    target = prefix / "share" / "kata-containers" / versioned
    target.write_bytes(b"tampered")
    before = tree(prefix)
    code, _, err = run(capsys, "rollback", "--prefix", prefix)
    assert code == 1 and "sha256 differs from when it was deployed" in err
    assert tree(prefix) == before


def test_redeploy_is_a_no_op_and_other_settings_make_a_new_version(
    tmp_path: Path, builds: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    prefix = tmp_path / "opt-kata"
    assert run(capsys, "deploy", "--manifest", builds[0], "--prefix", prefix)[0] == 0
    before = tree(prefix)
    code, out, _ = run(capsys, "deploy", "--manifest", builds[0], "--prefix", prefix)
    assert code == 0 and "was already current: nothing switched" in out
    assert {k: v for k, v in tree(prefix).items() if not k.endswith("history.jsonl")} == {
        k: v for k, v in before.items() if not k.endswith("history.jsonl")
    }
    code, out, err = run(capsys, "deploy", "--manifest", builds[0], "--prefix", prefix, "--flavour", "other")
    assert code == 0, err
    assert (prefix / "share/kata-containers/kata-containers-initrd-other.img").exists()
    assert tree(prefix)[PUBLIC["initrd"]] == before[PUBLIC["initrd"]]  # flavours are independent


def test_image_kind_uses_image_keys_and_switching_back_restores_initrd(
    tmp_path: Path, builds: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    prefix = tmp_path / "opt-kata"
    assert run(capsys, "deploy", "--manifest", builds[0], "--prefix", prefix)[0] == 0
    initrd_state = observe(prefix)
    image_build = make_build(tmp_path / "img", "0.2.0-1", kind="image")
    code, _, err = run(capsys, "deploy", "--manifest", image_build, "--prefix", prefix)
    assert code == 0, err
    qemu = tomllib.loads((prefix / PUBLIC["config"]).read_text())["hypervisor"]["qemu"]
    assert qemu["image"] == os.path.realpath(prefix / PUBLIC["image"]) and qemu["rootfs_type"] == "erofs"
    assert "initrd" not in qemu
    assert not os.path.lexists(prefix / PUBLIC["initrd"])  # no dangling name left behind
    assert run(capsys, "rollback", "--prefix", prefix)[0] == 0
    assert observe(prefix) == initrd_state


def test_leftovers_of_a_killed_run_are_removed(
    tmp_path: Path, builds: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    prefix = tmp_path / "opt-kata"
    assert run(capsys, "deploy", "--manifest", builds[0], "--prefix", prefix)[0] == 0
    junk = [
        prefix / "share/kata-containers/.gi-tmp.999.kata-guestinit-x-nvidia-gpu.initrd",
        prefix / "share/guestinit/nvidia-gpu/.gi-tmp.999.current",
        prefix / "share/guestinit/nvidia-gpu/versions/.gi-tmp.999.0.1.0-x+1234/deploy.json",
    ]
    for path in junk:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
    assert run(capsys, "deploy", "--manifest", builds[1], "--prefix", prefix)[0] == 0
    assert not any(".gi-tmp." in name for name in tree(prefix))


def test_a_second_deploy_waits_for_none_and_says_so(
    tmp_path: Path, builds: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    prefix = tmp_path / "opt-kata"
    assert run(capsys, "deploy", "--manifest", builds[0], "--prefix", prefix)[0] == 0
    with open(prefix / "share/guestinit/nvidia-gpu/.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        code, _, err = run(capsys, "deploy", "--manifest", builds[1], "--prefix", prefix)
    assert code == 1 and "another deploy or rollback is running there" in err


def test_planner_sizes_the_config_for_the_h200_capture(
    tmp_path: Path, builds: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    prefix = tmp_path / "opt-kata"
    code, _, err = run(
        capsys,
        "deploy",
        "--manifest",
        builds[0],
        "--prefix",
        prefix,
        "--sysfs-root",
        H200_ROOT,
        "--memory",
        "64G",
    )
    assert code == 0, err
    text = (prefix / PUBLIC["config"]).read_text()
    qemu = tomllib.loads(text)["hypervisor"]["qemu"]
    want = plan.plan(os.fspath(H200_ROOT), None, 64 << 30).kata_settings()
    assert set(want) == katasettings.PLAN_KEYS  # the planner and deploy's table name the same keys
    assert {k: qemu[k] for k in want} == want
    assert qemu["default_memory"] == 65536 and qemu["pcie_root_port"] == 1
    assert "pcie_root_port = 1" in text and "(from guestctl plan)" in text
