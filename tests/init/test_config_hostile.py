"""Hostile configuration (issue 16): every input below once raised, hung or passed unnoticed;
each must now get one bounded line naming the file (or the command line), the key and the fix."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from guestinit.init import params, settings, tomlfiles
from guestinit.init.problems import MAX_FILE_BYTES, MAX_LINE, MAX_NESTING, Problem, excerpt
from guestinit.init.root import Root
from guestinit.init.services import files, order

SERVICES = "etc/guestinit/services.d"
SETTINGS = "etc/guestinit/guestinit.toml"
ENTRY = "import sys; from guestinit.init.cli import main; sys.exit(main(sys.argv[1:]))"


def service(root: Path, name: str, text: str | bytes) -> str:
    path = root / SERVICES / f"{name}.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return f"/{SERVICES}/{name}.toml"


def image_settings(root: Path, data: str | bytes) -> None:
    path = root / SETTINGS
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)


def guestinit(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", ENTRY, *argv], capture_output=True, text=True, timeout=timeout
    )


def one_bounded_line(text: str) -> None:
    assert "\n" not in text and "Traceback" not in text
    assert len(text) <= MAX_LINE, len(text)


# ------------------------------------------------------------------ service files


def test_command_nested_5000_deep_is_one_problem_and_the_others_are_listed(tmp_path: Path) -> None:
    path = service(tmp_path, "x", "command = " + "[" * 5000 + "]" * 5000 + "\n")
    service(tmp_path, "ok", 'command = ["/bin/true"]\n')
    spec = files.load_file(Root(tmp_path), path)
    assert spec.error.startswith(f"{path}: command: arrays and tables nested more than {MAX_NESTING} deep")
    assert "flatten it" in spec.error
    one_bounded_line(spec.error)
    proc = guestinit("services", "--root", str(tmp_path))
    assert proc.returncode == 1 and proc.stderr == ""
    assert "ok                   level 0, ready none" in proc.stdout
    assert "x                    ERROR" in proc.stdout and len(proc.stdout.splitlines()) == 2


def test_nesting_inside_the_limit_is_parsed_and_past_it_refused(tmp_path: Path) -> None:
    root = Root(tmp_path)
    inside = 'command = ["/bin/true"]\nenvironment = { A = "' + "[" * 200 + '" }\n'  # brackets in a string
    assert files.load_file(root, service(tmp_path, "s", inside)).error == ""
    # dotted keys nest without brackets: the parsed table is checked too
    dotted = 'command = ["/bin/true"]\n' + "x." * 40 + "y = 1\n"
    spec = files.load_file(root, service(tmp_path, "d", dotted))
    nested = f"arrays and tables nested more than {MAX_NESTING} deep: refused (flatten it)"
    assert spec.error == f"/{SERVICES}/d.toml: x: {nested}"
    # an inline table, as deep as allowed, is a bad value but parses
    ready = "ready = " + "{ a = " * MAX_NESTING + "1" + " }" * MAX_NESTING
    spec = files.load_file(root, service(tmp_path, "r", f'command = ["/bin/true"]\n{ready}\n'))
    assert "ready: unknown readiness kind 'a'" in spec.error


def test_fifo_device_directory_and_symlink_are_refused_unopened(tmp_path: Path) -> None:
    d = tmp_path / SERVICES
    d.mkdir(parents=True)
    os.mkfifo(d / "fifo.toml")
    (d / "dir.toml").mkdir()
    (tmp_path / "elsewhere.toml").write_text('command = ["/bin/true"]\n')
    (d / "link.toml").symlink_to(tmp_path / "elsewhere.toml")
    os.symlink("/dev/zero", d / "zero.toml")
    # Run as a separate process with a timeout: a reader that opens the FIFO blocks forever.
    proc = guestinit("check", "--root", str(tmp_path), "--cmdline", "", timeout=60)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert (
        f"error: /{SERVICES}/fifo.toml: a FIFO, not a regular file: refused (make it a plain file)" in lines
    )
    assert (
        f"error: /{SERVICES}/dir.toml: a directory, not a regular file: refused (make it a plain file)"
        in lines
    )
    assert (
        f"error: /{SERVICES}/link.toml: a symbolic link, not a regular file: refused (make it a plain file)"
        in lines
    )
    assert (
        f"error: /{SERVICES}/zero.toml: a symbolic link, not a regular file: refused (make it a plain file)"
        in lines
    )


def test_oversized_and_non_utf8_files_are_refused(tmp_path: Path) -> None:
    root = Root(tmp_path)
    big = 'command = ["/bin/true"]\n' + "#" * MAX_FILE_BYTES + "\n"
    spec = files.load_file(root, service(tmp_path, "big", big))
    assert spec.error == f"/{SERVICES}/big.toml: {len(big)} bytes: refused (at most {MAX_FILE_BYTES} bytes)"
    spec = files.load_file(root, service(tmp_path, "latin", b'command = ["/bin/caf\xe9"]\n'))
    assert spec.error == f"/{SERVICES}/latin.toml: not UTF-8 (line 1, byte 20): save it as UTF-8"


def test_huge_integers_are_refused_naming_the_key(tmp_path: Path) -> None:
    root = Root(tmp_path)
    spec = files.load_file(
        root, service(tmp_path, "a", 'command = ["/bin/true"]\nmax_restarts = ' + "9" * 30 + "\n")
    )
    assert spec.error.startswith(f"/{SERVICES}/a.toml: max_restarts: a number of 30 digits: outside TOML's")
    spec = files.load_file(
        root, service(tmp_path, "b", 'command = ["/bin/true"]\nrlimit_nofile = ' + "9" * 5000 + "\n")
    )
    assert spec.error.startswith(f"/{SERVICES}/b.toml: not valid TOML: a number is too long")
    one_bounded_line(spec.error)


def test_nul_bytes_are_errors_in_every_string_key(tmp_path: Path) -> None:
    root = Root(tmp_path)
    cases = {
        "command": 'command = ["/bin/a\\u0000b"]',
        "user": 'user = "ro\\u0000ot"',
        "group": 'group = "x\\u0000"',
        "environment": 'environment = { A = "b\\u0000" }',
        "pid_file": 'pid_file = "/run/x\\u0000"',
        "condition_path_exists": 'condition_path_exists = "/x\\u0000y"',
        "ready": 'ready = { command = ["/bin/\\u0000"] }',
    }
    for key, line in cases.items():
        text = line + "\n" if key == "command" else f'command = ["/bin/true"]\n{line}\n'
        spec = files.load_file(root, service(tmp_path, key.replace("_", "-"), text))
        assert spec.error.startswith(f"/{SERVICES}/{key.replace('_', '-')}.toml: {key}: "), spec.error
        assert "contains a NUL byte: remove it" in spec.error


def test_two_service_cycle_is_an_error_in_check_and_load(tmp_path: Path) -> None:
    service(tmp_path, "a", 'command = ["/bin/true"]\nafter = ["b"]\n')
    service(tmp_path, "b", 'command = ["/bin/true"]\nafter = ["a"]\n')
    service(tmp_path, "c", 'command = ["/bin/true"]\nafter = ["a"]\n')  # waits on the cycle, is not on it
    loaded = files.load_services(Root(tmp_path))
    errors = {s.name: s.error for s in loaded.specs}
    assert errors["c"] == ""
    for name in ("a", "b"):
        assert errors[name] == (
            f"/{SERVICES}/{name}.toml: after: a cycle of 2 service(s) (a, b) can never start: "
            "remove one of their after entries"
        )
    assert [p.key for p in loaded.errors] == ["after", "after"]
    proc = guestinit("services", "--root", str(tmp_path))
    assert proc.returncode == 1 and "a                    ERROR" in proc.stdout


def test_1200_services_chained_in_reverse_name_order(tmp_path: Path) -> None:
    n = 1200
    for i in range(n):
        after = f'["s{i + 1:04d}"]' if i + 1 < n else "[]"
        service(tmp_path, f"s{i:04d}", f'command = ["/bin/true"]\nafter = {after}\n')
    loaded = files.load_services(Root(tmp_path))
    assert loaded.problems == []
    assert loaded.levels["s0000"] == n - 1 and loaded.levels[f"s{n - 1:04d}"] == 0
    # closing the chain makes one cycle of all 1,200, named in one bounded line each
    service(tmp_path, f"s{n - 1:04d}", 'command = ["/bin/true"]\nafter = ["s0000"]\n')
    loaded = files.load_services(Root(tmp_path))
    assert len(loaded.errors) == n
    assert (
        "a cycle of 1200 service(s) (s0000, s0001, s0002, s0003, s0004, s0005, s0006, s0007, ...)"
        in (loaded.errors[0])
    )


def test_order_is_iterative_under_a_small_recursion_limit() -> None:
    n = 20000
    deps = {f"s{i}": [f"s{i + 1}"] for i in range(n - 1)} | {f"s{n - 1}": []}
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(100)
    try:
        depth = order.levels(deps)
        deps[f"s{n - 1}"] = ["s0"]
        groups = order.cycle_groups(deps)
    finally:
        sys.setrecursionlimit(old)
    assert depth["s0"] == n - 1
    assert len(groups) == 1 and len(groups[0]) == n


def test_cycle_groups_names_each_cycle_apart() -> None:
    deps = {"a": ["b"], "b": ["a"], "c": ["d"], "d": ["e"], "e": ["c"], "f": ["a", "c"], "g": ["g"]}
    assert order.cycle_groups(deps) == [["a", "b"], ["c", "d", "e"], ["g"]]
    assert order.cycles(deps) == {"a", "b", "c", "d", "e", "g"}
    assert order.levels(deps)["f"] == 0  # its dependencies are all on cycles


def test_hostile_regex_and_hostport_are_bad_values(tmp_path: Path) -> None:
    root = Root(tmp_path)
    deep = "(" * 510 + ")" * 510  # 1,020 characters: within the length bound
    spec = files.load_file(
        root, service(tmp_path, "re", f'command = ["/bin/true"]\nready = {{ log = "{deep}" }}\n')
    )
    assert "is too complex a regular expression" in spec.error
    port = "1" * 5000
    spec = files.load_file(
        root, service(tmp_path, "hp", f'command = ["/bin/true"]\nready = {{ tcp = "h:{port}" }}\n')
    )
    assert 'is not "HOST:PORT" with a port 1..65535' in spec.error
    one_bounded_line(spec.error)


# ------------------------------------------------------------------ guestinit.toml


def test_settings_not_utf8_is_reported_with_defaults(tmp_path: Path) -> None:
    image_settings(tmp_path, b'log = "debug"\nmode = "\xff"\n')
    image = settings.load(Root(tmp_path))
    assert image.values == {}
    assert image.problems == [
        f"/{SETTINGS}: not UTF-8 (line 2, byte 22): save it as UTF-8; using the built-in defaults"
    ]


def test_settings_hugepages_with_5000_digits_is_one_bounded_problem(tmp_path: Path) -> None:
    image_settings(tmp_path, 'log = "debug"\nhugepages = "1G:' + "5" * 5000 + '"\n')
    image = settings.load(Root(tmp_path))
    assert image.values == {"log": "debug"}
    (problem,) = image.problems
    assert problem.startswith(f"/{SETTINGS}: hugepages: '1G:5555555555555'… (5003 characters): count ")
    assert "has more than 10 digits; using the default []" in problem
    one_bounded_line(problem)
    assert isinstance(problem, Problem) and (problem.where, problem.key) == (f"/{SETTINGS}", "hugepages")


def test_settings_nested_3000_deep_keeps_the_other_keys(tmp_path: Path) -> None:
    image_settings(tmp_path, 'log = "debug"\nmodules = ' + "[" * 3000 + "]" * 3000 + "\n")
    image = settings.load(Root(tmp_path))
    assert image.values == {}  # refused before parsing: the whole file
    assert image.problems == [
        f"/{SETTINGS}: modules: arrays and tables nested more than {MAX_NESTING} deep (line 2): "
        "refused (flatten it); using the built-in defaults"
    ]
    image_settings(tmp_path, 'log = "debug"\n' + "modules." * 40 + "x = 1\n")  # nested by dotted keys
    image = settings.load(Root(tmp_path))
    assert image.values == {"log": "debug"}
    assert image.problems == [
        f"/{SETTINGS}: 'modules': arrays and tables nested more than {MAX_NESTING} deep: refused "
        "(flatten it); using the default"
    ]


def test_settings_wrong_types_say_what_was_expected(tmp_path: Path) -> None:
    image_settings(
        tmp_path,
        'modules = [1, 2]\nlockdown = "maybe"\nready_timeout = [1]\nnotify = "unix:/x\\u0000"\nlog = 3\n',
    )
    problems = settings.load(Root(tmp_path)).problems
    assert problems[0] == (
        f"/{SETTINGS}: modules = [1, 2]: [1, 2] is not a list of strings: write each item in quotes; "
        "using the default []"
    )
    assert "lockdown = 'maybe': 'maybe' is not a boolean" in problems[1]
    assert (
        "ready_timeout = [1]: [1] is a list, not seconds (a string, e.g. as on the kernel command line)"
        in (problems[2])
    )
    assert "contains a NUL byte or a line break: remove it" in problems[3]
    assert "log = 3: '3' is not one of off, error, warn, info, debug" in problems[4]


def test_settings_fifo_is_refused_not_read(tmp_path: Path) -> None:
    (tmp_path / "etc/guestinit").mkdir(parents=True)
    os.mkfifo(tmp_path / SETTINGS)
    code = (
        "from guestinit.init import settings; from guestinit.init.root import Root; "
        f"print(settings.load(Root({str(tmp_path)!r})).problems)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "a FIFO, not a regular file: refused" in out.stdout, out.stderr


# ------------------------------------------------------------------ the kernel command line


@pytest.mark.parametrize(
    "key",
    [
        "ready_timeout",
        "stop_timeout",
        "syslog_kib",
        "hugepages",
        "nvidia.device_file_uid",
        "smi.lgc",
        "notify",
    ],
)
def test_4400_digit_numbers_are_problems(key: str) -> None:
    digits = "7" * 4400
    text = {"hugepages": f"2M:{digits}", "notify": f"vsock:2:{digits}"}.get(key, digits)
    config = params.parse_cmdline(f"guestinit.{key}={text}")
    (problem,) = config.problems
    assert problem.startswith(f"guestinit.{key}: ") and "using the default" in problem
    one_bounded_line(problem)
    assert config[key] == params.BY_NAME[key].default


@pytest.mark.parametrize(
    ("word", "message"),
    [
        ("guestinit.hugepages=3K:4", "'3K' is not a hugepage size of x86-64: use 2M or 1G"),
        ("guestinit.hugepages=0M:1", "'0M' is not a hugepage size of x86-64: use 2M or 1G"),
        ("guestinit.hugepages=4K:1", "(4K is the base page size)"),
        ("guestinit.hugepages=2M:1@1024", "NUMA node 1024 is above 1023"),
        ("guestinit.notify=bogus", "notify address 'bogus' not understood: use vsock"),
        ("guestinit.notify=vsock:99999999999:1", "CID 99999999999 out of range 0..4294967294"),
        ("guestinit.notify=vsock:2:-1", "port -1 out of range 0..4294967294"),
        ("guestinit.notify=vsock:4294967295:1", "CID 4294967295 out of range"),
        ("guestinit.notify=vsock-bogus:2:1", "unknown kind 'vsock-bogus'"),
        ("guestinit.modules=nvidia,../../x", "'../../x' is not a module name"),
        ("guestinit.disable=a,b/c", "'b/c' is not a service name"),
        ("guestinit.syslog_kib=١٠٠", "is not a whole number of KiB"),
        ("guestinit.nvidia.device_file_uid=²", "uid/gid '²' is not a whole number"),
        ("guestinit.smi.pl=٧٠٠", "is not a power limit in watts"),
    ],
)
def test_out_of_range_values_are_problems(word: str, message: str) -> None:
    config = params.parse_cmdline(word)
    (problem,) = config.problems
    assert message in problem, problem
    assert problem.where == params.CMDLINE and problem.level == "error"


def test_in_range_values_pass() -> None:
    config = params.parse_cmdline(
        "guestinit.hugepages=2048kB:512,1G:4@0,1G:1@1 guestinit.notify=vsock-seqpacket:2:9999 "
        "guestinit.modules=nvidia,nvidia-uvm guestinit.disable=kata-agent,x@1 guestinit.syslog_kib=+64"
    )
    assert config.problems == []
    assert [str(r) for r in config["hugepages"]] == ["2M:512", "1G:4@0", "1G:1@1"]  # type: ignore[attr-defined]


def test_parse_cmdline_cli_reports_and_exits_1() -> None:
    proc = guestinit("parse-cmdline", "guestinit.hugepages=3K:4 guestinit.ready_timeout=" + "9" * 4400)
    assert proc.returncode == 1 and proc.stderr == ""
    assert "3K" in proc.stdout and "Traceback" not in proc.stdout


def test_hugepage_sizes_the_kernel_offers_at_boot(tmp_path: Path) -> None:
    """At boot (a root with /sys) the kernel's list counts: 1G left out where it offers only 2M."""
    (tmp_path / "sys/kernel/mm/hugepages/hugepages-2048kB").mkdir(parents=True)
    config = settings.read_config(Root(tmp_path), None, "guestinit.hugepages=2M:8,1G:2")
    assert [str(r) for r in config["hugepages"]] == ["2M:8"]  # type: ignore[attr-defined]
    assert config.problems == [
        "guestinit.hugepages: 1G:2: this kernel offers no such page size (it offers 2M): left out"
    ]
    (tmp_path / "sys/kernel/mm/hugepages/hugepages-1048576kB").mkdir()
    assert settings.read_config(Root(tmp_path), None, "guestinit.hugepages=2M:8,1G:2").problems == []


# ------------------------------------------------------------------ bounds of every message


def test_excerpt_never_renders_a_value_whole() -> None:
    assert excerpt("x" * 5000) == "'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'… (5000 characters)"
    assert excerpt(10**5000) == "a number of about 5001 digits"
    nested: list[object] = []
    for _ in range(5000):
        nested = [nested]
    assert excerpt(nested) == "a list of 1 item(s)"
    assert excerpt([1, 2]) == "[1, 2]" and excerpt({"a": 1}) == "a table of 1 key(s)"


def test_toml_cache_fifo_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "etc/guestinit").mkdir(parents=True)
    os.mkfifo(tmp_path / "etc/guestinit/toml-cache.json")
    code = (
        "from guestinit.init import tomlfiles; from guestinit.init.root import Root; "
        f"print(tomlfiles.read_cache(Root({str(tmp_path)!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout == "{}\n", out.stderr
    deep = "[" * 100000 + "]" * 100000
    (tmp_path / "etc/guestinit/toml-cache.json").unlink()
    (tmp_path / "etc/guestinit/toml-cache.json").write_text('{"a": ' + deep + "}")
    assert tomlfiles.read_cache(Root(tmp_path)) == {}
