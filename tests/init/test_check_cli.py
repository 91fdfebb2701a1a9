"""``guestinit check``: guestinit.toml, every service file and a command line, read by the same
functions boot uses; text and --json output; exit 1 only when something is unusable."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from guestinit.init import check, settings
from guestinit.init.root import Root
from guestinit.init.services import files

SERVICES = "etc/guestinit/services.d"
ENTRY = "import sys; from guestinit.init.cli import main; sys.exit(main(sys.argv[1:]))"


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", ENTRY, "check", *argv], capture_output=True, text=True, timeout=60
    )


def tree(tmp_path: Path, services: dict[str, str], toml: str = "") -> Path:
    (tmp_path / SERVICES).mkdir(parents=True)
    for name, text in services.items():
        (tmp_path / SERVICES / f"{name}.toml").write_text(text)
    if toml:
        (tmp_path / "etc/guestinit/guestinit.toml").write_text(toml)
    return tmp_path


def test_the_image_tree_is_clean(repo: Path) -> None:
    proc = run("--root", str(repo / "image/mkosi.extra"), "--cmdline", "console=hvc0 guestinit.log=debug")
    assert proc.returncode == 0, proc.stdout
    assert proc.stdout == "1 service(s), 0 unusable; 0 error(s), 0 warning(s)\n"


def test_every_problem_listed_with_file_key_and_fix(tmp_path: Path) -> None:
    root = tree(
        tmp_path,
        {
            "ok": 'command = ["/bin/true"]\nrestrat = "always"\n',
            "a": 'command = ["/bin/true"]\nafter = ["b"]\n',
            "b": 'command = ["/bin/true"]\nafter = ["a", "ghost"]\n',
            "bad": 'command = "/bin/true"\nuser = "a\\u0000"\n',
        },
        toml='log = "loud"\n',
    )
    proc = run("--root", str(root), "--cmdline", "quiet guestinit.notify=bogus guestinit.bogus=1")
    assert proc.returncode == 1 and proc.stderr == ""
    s = f"/{SERVICES}"
    assert proc.stdout.splitlines() == [
        "error: /etc/guestinit/guestinit.toml: log = 'loud': 'loud' is not one of off, error, warn, info, "
        "debug; using the default 'info'",
        "error: guestinit.notify=bogus: notify address 'bogus' not understood: use vsock[-stream|-seqpacket|"
        "-dgram]:CID:PORT, serial:NAME, unix:PATH, console or off; using the default ''",
        "warning: unknown key guestinit.bogus: ignored (see `guestinit params` for the list)",
        f"error: {s}/a.toml: after: a cycle of 2 service(s) (a, b) can never start: remove one of their "
        "after entries",
        f"error: {s}/b.toml: after: a cycle of 2 service(s) (a, b) can never start: remove one of their "
        "after entries",
        f"error: {s}/bad.toml: command: must be a non-empty list of strings, e.g. "
        '["/usr/bin/daemon", "--flag"]',
        f"error: {s}/bad.toml: user: 'a\\x00' contains a NUL byte: remove it",
        f"warning: {s}/ok.toml: unknown key 'restrat': ignored (see `guestinit services --keys`)",
        f"warning: {s}/b.toml: after names 'ghost', which is not a service here: ignored",
        "4 service(s), 3 unusable; 6 error(s), 3 warning(s)",
    ]


def test_json_output(tmp_path: Path) -> None:
    root = tree(tmp_path, {"x": 'command = ["/bin/true"]\n', "y": 'command = ["/bin/true"]\nafter = ["x"]\n'})
    proc = run("--root", str(root), "--cmdline", "guestinit.hugepages=2M:4 guestinit.modules=a/b", "--json")
    assert proc.returncode == 1
    doc = json.loads(proc.stdout)
    assert doc["ok"] is False
    assert doc["services"] == [
        {"name": "x", "file": f"/{SERVICES}/x.toml", "usable": True, "level": 0, "after": []},
        {"name": "y", "file": f"/{SERVICES}/y.toml", "usable": True, "level": 1, "after": ["x"]},
    ]
    assert doc["config"]["hugepages"] == ["2M:4"] and doc["config"]["modules"] == []
    assert doc["problems"] == [
        {
            "level": "error",
            "file": "kernel command line",
            "key": "modules",
            "message": "guestinit.modules=a/b: 'a/b' is not a module name (use letters, digits, _ and -, "
            "at most 55); using the default ()",
        }
    ]


def test_warnings_alone_exit_0_and_cmdline_defaults_to_the_roots(tmp_path: Path) -> None:
    root = tree(tmp_path, {"x": 'command = ["/bin/true"]\nafter = ["nothere"]\n'})
    (root / "proc").mkdir()
    (root / "proc/cmdline").write_text("console=ttyS0 guestinit.unknown=1\n")
    proc = run("--root", str(root))
    assert proc.returncode == 0, proc.stdout
    assert "warning: unknown key guestinit.unknown: ignored" in proc.stdout
    assert proc.stdout.endswith("1 service(s), 0 unusable; 0 error(s), 2 warning(s)\n")


def test_check_and_boot_share_one_reading(tmp_path: Path) -> None:
    """run_check is settings.read_config + files.load_services: what boot calls."""
    root = Root(tree(tmp_path, {"x": 'command = ["/bin/true"]\n'}, toml="lockdown = true\n"))
    report = check.run_check(root, "guestinit.log=debug")
    config = settings.read_config(root, {}, "guestinit.log=debug")
    assert report.config.values == config.values and report.ok
    assert [s.name for s in report.services.specs] == [s.name for s in files.load_services(root).specs]
