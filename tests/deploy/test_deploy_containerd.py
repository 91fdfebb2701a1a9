"""`guestctl deploy --containerd-config`: the Kata runtime registered in containerd's config as
kata-deploy does it, on real `containerd config default` output (tests/fixtures/containerd)."""

from __future__ import annotations

import os
import shutil
import tomllib
from pathlib import Path
from typing import Any

import pytest
from deploy_harness import make_build

from guestinit.host.errors import DeployError
from guestinit.host.kata import containerd, deploy, tomltext
from guestinit.host.kata.layout import Layout

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "containerd"
V2 = FIXTURES / "config-v2-containerd-1.6.20.toml"
V3 = FIXTURES / "config-v3-containerd-2.1.9.toml"
LAYOUT = Layout(Path("/opt/kata"), "nvidia-gpu")
HANDLER = "kata-qemu-nvidia-gpu"
WANT = {
    "runtime_type": "io.containerd.kata-qemu-nvidia-gpu.v2",
    "runtime_path": "/opt/kata/bin/containerd-shim-kata-v2",
    "privileged_without_host_devices": True,
    "pod_annotations": ["io.katacontainers.*"],
    "options": {"ConfigPath": "/opt/kata/share/defaults/kata-containers/configuration-qemu-nvidia-gpu.toml"},
}


def runtimes(document: dict[str, Any], plugin: str) -> dict[str, Any]:
    result: dict[str, Any] = document["plugins"][plugin]["containerd"]["runtimes"]
    return result


def configure(path: Path, force: bool = False) -> containerd.Plan:
    plan = containerd.plan_change(path, LAYOUT, force)
    containerd.apply(plan)
    return plan


def snapshot(root: Path) -> dict[str, bytes]:
    return {os.fspath(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_v2_gets_the_table_in_the_file_itself_keeping_everything_else(tmp_path: Path) -> None:
    # containerd 1.x replaces a whole plugin section with an imported one: never a drop-in for v2,
    # even though `containerd config default` writes `imports = []`.
    config = tmp_path / "config.toml"
    shutil.copy(V2, config)
    original = config.read_bytes()
    plan = configure(config)
    assert plan.mode == "inline" and [c.path for c in plan.changes] == [config]
    new = config.read_bytes()
    assert new.startswith(original)  # comments, layout and every setting kept: only appended
    before, after = tomllib.loads(original.decode()), tomllib.loads(new.decode())
    assert runtimes(after, "io.containerd.grpc.v1.cri")[HANDLER] == WANT
    del runtimes(after, "io.containerd.grpc.v1.cri")[HANDLER]
    assert after == before
    assert (tmp_path / "config.toml.guestinit-bak").read_bytes() == original
    assert not (tmp_path / "conf.d").exists()


def test_v3_with_imports_gets_a_drop_in_it_imports(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    shutil.copy(V3, config)
    original = config.read_bytes()
    plan = configure(config)
    dropin = tmp_path / "conf.d" / f"guestinit-{HANDLER}.toml"
    assert plan.mode == "drop-in" and {c.path for c in plan.changes} == {config, dropin}
    after = tomllib.loads(config.read_text())
    assert after["imports"] == [os.fspath(dropin)]
    del after["imports"]
    before = tomllib.loads(original.decode())
    del before["imports"]
    assert after == before  # only the imports line changed
    dropped = tomllib.loads(dropin.read_text())
    assert dropped["version"] == 3  # not above the root's version: containerd refuses that
    assert runtimes(dropped, "io.containerd.cri.v1.runtime") == {HANDLER: WANT}
    assert (tmp_path / "config.toml.guestinit-bak").read_bytes() == original
    assert not (tmp_path / "conf.d" / f"guestinit-{HANDLER}.toml.guestinit-bak").exists()


def test_v3_without_imports_gets_the_table_in_the_file(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    text = "".join(
        line for line in V3.read_text().splitlines(keepends=True) if not line.startswith("imports")
    )
    config.write_text(text)
    plan = configure(config)
    assert plan.mode == "inline"
    assert runtimes(tomllib.loads(config.read_text()), "io.containerd.cri.v1.runtime")[HANDLER] == WANT
    assert "runc" in runtimes(tomllib.loads(config.read_text()), "io.containerd.cri.v1.runtime")


@pytest.mark.parametrize("fixture", [V2, V3])
def test_second_run_changes_nothing_and_keeps_one_backup(
    tmp_path: Path, fixture: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copy(fixture, tmp_path / "config.toml")
    configure(tmp_path / "config.toml")
    first = snapshot(tmp_path)
    backup_stat = (tmp_path / "config.toml.guestinit-bak").stat()
    plan = configure(tmp_path / "config.toml")
    assert plan.changes == []
    assert "already configured" in containerd.describe(plan, dry_run=False)[-1]
    assert containerd.restart_line(plan) == []
    assert snapshot(tmp_path) == first  # byte for byte, and no second backup
    assert (tmp_path / "config.toml.guestinit-bak").stat().st_mtime_ns == backup_stat.st_mtime_ns


def test_a_glob_in_imports_takes_the_drop_in_without_touching_the_config(tmp_path: Path) -> None:
    confd = tmp_path / "conf.d"
    config = tmp_path / "config.toml"
    config.write_text(f'version = 3\nimports = [\n  # drop-ins\n  "{confd}/*.toml",\n]\n')
    original = config.read_bytes()
    plan = configure(config)
    assert [c.path for c in plan.changes] == [confd / f"guestinit-{HANDLER}.toml"]
    assert config.read_bytes() == original and not (tmp_path / "config.toml.guestinit-bak").exists()


def test_imports_line_is_edited_in_place_with_its_comments(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    text = (
        "# site config\nversion = 3\nimports = [\n"
        '  "/etc/containerd/a]b.toml",  # a bracket in a string\n'
        '  "/etc/containerd/other.toml"  # no trailing comma\n'
        "]\n\n[debug]\n  level = 'info'  # keep me\n"
    )
    config.write_text(text)
    configure(config)
    new = config.read_text()
    dropin = tmp_path / "conf.d" / f"guestinit-{HANDLER}.toml"
    assert new == text.replace(
        '"/etc/containerd/other.toml"  # no trailing comma\n',
        f'"/etc/containerd/other.toml",  # no trailing comma\n  "{dropin}",\n',
    )
    assert tomllib.loads(new)["imports"][-1] == os.fspath(dropin)


def test_dry_run_shows_the_diff_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    shutil.copy(V3, etc / "config.toml")
    prefix = tmp_path / "opt-kata"
    manifest = make_build(tmp_path / "build", "0.1.0-20261126160000")
    before = snapshot(etc)
    argv = [
        "--manifest",
        manifest,
        "--prefix",
        prefix,
        "--containerd-config",
        etc / "config.toml",
        "--dry-run",
    ]
    code = deploy.deploy_main([os.fspath(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert snapshot(etc) == before and not prefix.exists()
    dropin = etc / "conf.d" / f"guestinit-{HANDLER}.toml"
    assert f"--- /dev/null\n+++ {dropin}\n" in out
    assert f"-imports = []\n+imports = [{str(dropin)!r}]".replace("'", '"') in out
    assert f'+[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.{HANDLER}]' in out
    assert out.rstrip().endswith("nothing was written (--dry-run)")
    # then for real: the runtime's ConfigPath is the configuration deploy installed
    code = deploy.deploy_main([os.fspath(a) for a in argv[:-1]])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "restart containerd" in out.splitlines()[-1]
    config_path = runtimes(tomllib.loads(dropin.read_text()), "io.containerd.cri.v1.runtime")[HANDLER][
        "options"
    ]
    assert Path(config_path["ConfigPath"]).resolve().is_file()


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("version = 2\n[plugins\nx = 1\n", "line 2"),
        ('version = 3\nimports = ["a"\n', "line 2"),
        ("version = 2\nversion = 3\n", "line 2"),
    ],
)
def test_an_unparsable_file_is_left_alone_with_a_one_line_error(
    tmp_path: Path, text: str, needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(text)
    with pytest.raises(DeployError) as caught:
        configure(config)
    message = caught.value.line()
    assert "\n" not in message and str(config) in message and needle in message and "fix" in message
    assert config.read_text() == text and sorted(p.name for p in tmp_path.iterdir()) == ["config.toml"]


@pytest.mark.parametrize("text", ["", "version = 1\n", 'root = "/var/lib/containerd"\n[plugins.cri]\n'])
def test_config_version_1_is_refused_with_the_migration(tmp_path: Path, text: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text(text)
    with pytest.raises(DeployError, match=r"version 1.*containerd config migrate"):
        configure(config)
    assert config.read_text() == text


def _conflicting(tmp_path: Path) -> Path:
    config = tmp_path / "config.toml"
    text = V2.read_text() + (
        f'\n[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{HANDLER}]\n'
        '  runtime_type = "io.containerd.kata.v2"\n  snapshotter = "devmapper"\n'
        f'\n[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{HANDLER}.options]\n'
        '  ConfigPath = "/etc/kata/other.toml"\n\n[plugins."io.containerd.internal.v1.tracing"]\n'
    )
    config.write_text(text)
    return config


def test_a_runtime_of_that_name_with_other_settings_is_refused(tmp_path: Path) -> None:
    config = _conflicting(tmp_path)
    text = config.read_text()
    with pytest.raises(DeployError) as caught:
        configure(config)
    message = caught.value.line()
    assert "runtime_type = 'io.containerd.kata.v2'" in message and "options.ConfigPath" in message
    assert "runtime_path unset" in message and "--force" in message
    assert config.read_text() == text


def test_force_replaces_it_in_place(tmp_path: Path) -> None:
    config = _conflicting(tmp_path)
    text = config.read_text()
    plan = configure(config, force=True)
    assert any("replace" in note for note in plan.notes)
    after = tomllib.loads(config.read_text())
    assert runtimes(after, "io.containerd.grpc.v1.cri")[HANDLER] == WANT  # devmapper gone with the old table
    assert "io.containerd.internal.v1.tracing" in after["plugins"]  # the table after it kept
    assert (tmp_path / "config.toml.guestinit-bak").read_text() == text
    assert configure(config).changes == []


def test_a_runtime_table_deploy_cannot_cut_out_is_refused_even_with_force(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    text = 'version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd.runtimes]\n'
    text += f'{HANDLER}.runtime_type = "x"\n'
    config.write_text(text)
    with pytest.raises(DeployError, match="by hand"):
        configure(config, force=True)
    assert config.read_text() == text


def test_mode_owner_and_a_symlinked_config_are_kept(tmp_path: Path) -> None:
    real = tmp_path / "real.toml"
    shutil.copy(V2, real)
    os.chmod(real, 0o600)
    if os.geteuid() == 0:
        os.chown(real, 1234, 2345)
    link = tmp_path / "config.toml"
    link.symlink_to(real.name)
    configure(link)
    assert link.is_symlink() and os.readlink(link) == real.name
    for path in (real, tmp_path / "real.toml.guestinit-bak"):
        info = path.stat()
        assert info.st_mode & 0o7777 == 0o600
        if os.geteuid() == 0:
            assert (info.st_uid, info.st_gid) == (1234, 2345)
    assert HANDLER in runtimes(tomllib.loads(real.read_text()), "io.containerd.grpc.v1.cri")


def test_an_imported_file_holding_the_runtime_already_counts(tmp_path: Path) -> None:
    other = tmp_path / "kata.toml"
    shutil.copy(V3, tmp_path / "config.toml")
    other.write_text(
        f'version = 3\n[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.{HANDLER}]\n'
        'runtime_path = "/usr/local/bin/containerd-shim-kata-v2"\n'
    )
    text = (tmp_path / "config.toml").read_text().replace("imports = []", f'imports = ["{other}"]')
    (tmp_path / "config.toml").write_text(text)
    with pytest.raises(DeployError, match=f"{other}: runtime {HANDLER}.*runtime_path"):
        configure(tmp_path / "config.toml")


def test_scan_ignores_brackets_in_strings_and_nested_arrays() -> None:
    text = (
        'version = 3\nimports = [\n  [1, 2],\n]\nx = """\n[not.a.header]\n"""\n'
        "y = '[nor]'  # [this]\n[a.'b.c'] # t\n[[d.e]]\n"
    )
    scanned = tomltext.scan(text)
    assert [(h.path, h.array) for h in scanned.headers] == [(("a", "b.c"), False), (("d", "e"), True)]
    assert scanned.imports == (text.index("[\n"), text.index("]\nx"))


@pytest.mark.parametrize(
    ("array", "result"),
    [
        ("[]", '["p"]'),
        ('["a"]', '["a", "p"]'),
        ('["a",]', '["a", "p",]'),
        ("[\n]", '[\n  "p",\n]'),
        ('[\n    "a", # c\n]', '[\n    "a", # c\n    "p",\n]'),
    ],
)
def test_append_to_array(array: str, result: str) -> None:
    text = f"imports = {array}\n"
    span = tomltext.scan(text).imports
    assert span is not None
    assert tomltext.append_to_array(text, span, '"p"') == f"imports = {result}\n"
