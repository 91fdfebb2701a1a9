"""Service files and image settings as data: the key table, checks with one-line errors,
ordering, the generated reference, the image's own files and the TOML cache."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from guestinit.init import params, settings, tomlfiles
from guestinit.init.root import Root
from guestinit.init.services import cli, files, keys, order

SERVICES = "etc/guestinit/services.d"


def write(root: Path, name: str, text: str) -> str:
    path = root / SERVICES / f"{name}.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return f"/{SERVICES}/{name}.toml"


def test_every_key_parsed(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "fabricmanager",
        """
        command = ["/usr/bin/nv-fabricmanager", "-c", "/run/fabricmanager.cfg"]
        environment = { FABRIC_MODE = "1" }
        user = "nvidia"
        group = "video"
        after = ["nvidia-persistenced"]
        ready = { log = "FM starting NvLink Inband" }
        ready_timeout = 120
        restart = "on-failure"
        max_restarts = 2
        restart_window = 30.5
        critical = true
        stop_timeout = 10
        oom_score_adj = -500
        rlimit_nofile = 65536
        condition_path_exists = "/usr/bin/nv-fabricmanager"
        """.replace("\n        ", "\n"),
    )
    spec = files.load_file(Root(tmp_path), path)
    assert spec.error == "" and spec.problems == []
    assert spec.command == ("/usr/bin/nv-fabricmanager", "-c", "/run/fabricmanager.cfg")
    assert spec.environment == {"FABRIC_MODE": "1"}
    assert (spec.user, spec.group, spec.after) == ("nvidia", "video", ("nvidia-persistenced",))
    kind, pattern = spec.ready
    assert (
        kind == "log" and isinstance(pattern, re.Pattern) and pattern.pattern == "FM starting NvLink Inband"
    )
    assert (spec.ready_timeout, spec.restart, spec.max_restarts, spec.restart_window) == (
        120.0,
        "on-failure",
        2,
        30.5,
    )
    assert (spec.critical, spec.stop_timeout, spec.oom_score_adj, spec.rlimit_nofile) == (
        True,
        10.0,
        -500,
        65536,
    )
    assert spec.condition_path_exists == "/usr/bin/nv-fabricmanager"


def test_defaults(tmp_path: Path) -> None:
    spec = files.load_file(Root(tmp_path), write(tmp_path, "plain", 'command = ["/bin/true"]\n'))
    assert spec.error == ""
    assert (spec.user, spec.group, spec.after, spec.ready, spec.restart) == (
        "root",
        "",
        (),
        ("none", ""),
        "no",
    )
    assert (spec.ready_timeout, spec.stop_timeout, spec.oom_score_adj, spec.rlimit_nofile) == (None,) * 4
    assert (spec.max_restarts, spec.restart_window, spec.critical) == (5, 60.0, False)
    for key in keys.KEYS:  # the table's defaults are what a bare file gets
        if key.default is not keys.REQUIRED and key.name != "ready":
            assert getattr(spec, key.name) == key.default, key.name


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('command = "/bin/true"', "command: must be a non-empty list of strings"),
        ('command = ["true"]', "command: 'true': the program must be an absolute path"),
        ('ready = "socket"', 'ready: must be "none" or one of'),
        ('ready = { pipe = "/x" }', "ready: unknown readiness kind 'pipe'"),
        ('ready = { tcp = "localhost" }', "tcp: 'localhost' is not \"HOST:PORT\""),
        ('ready = { log = "(" }', "ready: log: '(' is not a valid regular expression"),
        ('ready = { file = "relative" }', "ready: file: must be an absolute path"),
        ('restart = "sometimes"', "restart: must be one of 'no', 'on-failure', 'always'"),
        ("ready_timeout = 0", "ready_timeout: must be a number of seconds"),
        ("ready_timeout = true", "ready_timeout: must be a number of seconds"),
        ("oom_score_adj = -1001", "oom_score_adj: must be a whole number from -1000 to 1000"),
        ('rlimit_nofile = "many"', "rlimit_nofile: must be a whole number of file descriptors"),
        ('critical = "yes"', "critical: must be true or false"),
        ('after = ["no spaces"]', "after: 'no spaces' is not a service name"),
        ("environment = { A = 1 }", "environment: A: the value must be a string"),
        ('user = "a:b"', "user: must be a name from /etc/passwd"),
    ],
)
def test_bad_value_is_one_line_naming_file_and_key(tmp_path: Path, line: str, message: str) -> None:
    text = line + "\n" if line.startswith("command") else f'command = ["/bin/true"]\n{line}\n'
    path = write(tmp_path, "svc", text)
    spec = files.load_file(Root(tmp_path), path)
    assert spec.error.startswith(f"{path}: "), spec.error
    assert message in spec.error
    assert "\n" not in spec.error


def test_unknown_key_reported_missing_command_and_bad_toml(tmp_path: Path) -> None:
    root = Root(tmp_path)
    spec = files.load_file(root, write(tmp_path, "a", 'command = ["/bin/true"]\nrestrat = "always"\n'))
    assert spec.error == ""
    assert spec.problems == [
        f"/{SERVICES}/a.toml: unknown key 'restrat': ignored (see `guestinit services --keys`)"
    ]
    spec = files.load_file(root, write(tmp_path, "b", "critical = true\n"))
    assert spec.error.endswith('b.toml: command: missing (e.g. command = ["/usr/bin/daemon"])')
    assert spec.critical  # a broken critical service still fails the VM
    spec = files.load_file(root, write(tmp_path, "c", "command = [\n"))
    assert spec.error.startswith(f"/{SERVICES}/c.toml: not valid TOML: ")
    spec = files.load_file(root, write(tmp_path, "bad name!", 'command = ["/bin/true"]\n'))
    assert "is not a service name" in spec.error


def test_after_star_unknown_names_cycles_and_levels(tmp_path: Path) -> None:
    root = Root(tmp_path)
    write(tmp_path, "persistenced", 'command = ["/bin/true"]\n')
    write(tmp_path, "fabricmanager", 'command = ["/bin/true"]\nafter = ["persistenced", "ghost"]\n')
    write(tmp_path, "agent", 'command = ["/bin/true"]\nafter = ["*"]\n')
    write(tmp_path, "x", 'command = ["/bin/true"]\nafter = ["y"]\n')
    write(tmp_path, "y", 'command = ["/bin/true"]\nafter = ["x"]\n')
    specs = files.load_all(root)
    deps, problems = order.dependencies(specs)
    assert deps["agent"] == ["fabricmanager", "persistenced", "x", "y"]
    assert deps["fabricmanager"] == ["persistenced"]
    assert problems == [
        f"/{SERVICES}/fabricmanager.toml: after names 'ghost', which is not a service here: ignored"
    ]
    assert order.cycles(deps) == {"x", "y"}
    depth = order.levels(deps)
    assert depth["persistenced"] == 0 and depth["fabricmanager"] == 1 and depth["agent"] == 2


def test_generated_reference_is_current(repo: Path) -> None:
    doc = cli.reference_markdown()
    for key in keys.KEYS:
        assert f"| `{key.name}` |" in doc
    assert (repo / "docs" / "services.md").read_text() == doc, "docs/services.md is stale: run `make docs`"


def test_image_ships_kata_agent_as_the_last_critical_service(repo: Path) -> None:
    root = Root(repo / "image/mkosi.extra")
    specs = {s.name: s for s in files.load_all(root)}
    agent = specs["kata-agent"]
    assert agent.error == "" and agent.problems == []
    assert agent.command == ("/usr/bin/kata-agent",)
    assert agent.after == ("*",) and agent.critical
    assert (agent.oom_score_adj, agent.rlimit_nofile) == (-997, 1048576)
    assert agent.condition_path_exists == "/usr/bin/kata-agent"
    image = settings.load(root)
    assert image.problems == []


def test_image_toml_cache_is_current_and_spares_tomllib(repo: Path, tmp_path: Path) -> None:
    extra = repo / "image/mkosi.extra"
    committed = json.loads((extra / "etc/guestinit/toml-cache.json").read_text())
    copy = tmp_path / "root"
    subprocess.run(["cp", "-a", str(extra), str(copy)], check=True)
    assert tomlfiles.build_cache(Root(copy)) == committed, "the image's TOML cache is stale: run `make docs`"
    # At boot the cached files are read without importing tomllib; an edited file is parsed.
    code = (
        "import sys\n"
        "from guestinit.init import settings, tomlfiles\n"
        "from guestinit.init.services import cli, files, keys, order\n"
        "from guestinit.init.root import Root\n"
        f"root = Root({str(copy)!r})\n"
        "cache = tomlfiles.read_cache(root)\n"
        "specs = files.load_all(root, cache)\n"
        "settings.load(root, cache)\n"
        "print('tomllib' in sys.modules, [s.name for s in specs])\n"
        f"open({str(copy / SERVICES / 'kata-agent.toml')!r}, 'a').write('\\n')\n"
        "files.load_all(root, cache)\n"
        "print('tomllib' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split("\n")[:2] == ["False ['kata-agent']", "True"]


def test_settings_file_sets_defaults_and_the_command_line_wins(tmp_path: Path) -> None:
    (tmp_path / "etc/guestinit").mkdir(parents=True)
    (tmp_path / "etc/guestinit/guestinit.toml").write_text(
        'log = "debug"\nlockdown = true\nready_timeout = 90\ndisable = ["a", "b"]\n'
        'stop_timeout = "soon"\nbogus = 1\nsyslog_kib = 64\n'
    )
    image = settings.load(Root(tmp_path))
    assert image.values == {
        "log": "debug",
        "lockdown": True,
        "ready_timeout": 90.0,
        "disable": ("a", "b"),
        "syslog_kib": 64,
    }
    assert len(image.problems) == 2
    assert (
        "stop_timeout = 'soon': 'soon' is not a number of seconds; using the default 3.0" in image.problems[0]
    )
    assert "unknown key 'bogus'" in image.problems[1]
    config = params.parse_cmdline("guestinit.lockdown=off guestinit.ready_timeout=x", defaults=image.values)
    assert config.flag("lockdown") is False  # the command line wins
    assert config.text("log") == "debug"  # the image's default stands
    assert config.number("ready_timeout") == 90.0  # a bad command-line value keeps the image's
    assert config.problems == [
        "guestinit.ready_timeout=x: 'x' is not a number of seconds; using the default 90.0"
    ]


def test_bad_settings_file_is_reported_not_fatal(tmp_path: Path) -> None:
    (tmp_path / "etc/guestinit").mkdir(parents=True)
    (tmp_path / "etc/guestinit/guestinit.toml").write_text("log = \n")
    image = settings.load(Root(tmp_path))
    assert image.values == {}
    assert image.problems[0].startswith("/etc/guestinit/guestinit.toml: not valid TOML")
    assert image.problems[0].endswith("; using the built-in defaults")


def test_guestinit_services_cli(repo: Path, tmp_path: Path) -> None:
    write(tmp_path, "ok", 'command = ["/bin/true"]\n')
    write(tmp_path, "bad", 'command = "/bin/true"\n')
    entry = "import sys; from guestinit.init.cli import main; sys.exit(main(sys.argv[1:]))"
    argv = [sys.executable, "-c", entry, "services", "--root", str(tmp_path)]
    proc = subprocess.run(argv, capture_output=True, text=True)
    assert proc.returncode == 1
    assert (
        "bad                  ERROR" in proc.stdout
        and "ok                   level 0, ready none" in proc.stdout
    )
    proc = subprocess.run([*argv[:-2], "--markdown"], capture_output=True, text=True, check=True)
    assert proc.stdout == cli.reference_markdown()
