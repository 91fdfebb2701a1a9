from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from guestinit.notify import jsonenc

values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(), children, max_size=5),
    max_leaves=30,
)


@given(values)
def test_dumps_matches_json(value: object) -> None:
    assert jsonenc.dumps(value) == json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    assert jsonenc.dumps(value, ascii=True) == json.dumps(value, separators=(",", ":"), ensure_ascii=True)


@given(values)
def test_loads_round_trips(value: object) -> None:
    assert jsonenc.loads(json.dumps(value, indent=1)) == value


def test_special_floats_and_errors() -> None:
    assert jsonenc.dumps([float("inf"), -float("inf")]) == "[Infinity,-Infinity]"
    assert math.isnan(jsonenc.loads("NaN"))  # type: ignore[arg-type]
    assert jsonenc.dumps({1: (True, None)}) == '{"1":[true,null]}'
    with pytest.raises(TypeError, match="not JSON serializable"):
        jsonenc.dumps({"a": object()})
    for bad in ("", "{", "[1,]", "1 2", "{'a': 1}"):
        with pytest.raises(ValueError):
            jsonenc.loads(bad)


def test_import_does_not_pull_json_or_re(repo: Path) -> None:
    code = (
        f"import sys; sys.path.insert(0, {str(repo)!r}); import guestinit.notify.jsonenc as j; "
        "j.loads('{\"a\": [1]}'); print(sorted(sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert "'json'" not in out and "'re'" not in out


def test_errors_inside_strings_are_value_errors_before_json_is_imported(repo: Path) -> None:
    """Found by tests/fuzz/fuzz_notify_message.py: CPython 3.11's C scanner raised SystemError
    for a control character, a bad escape or an unterminated string when nothing had imported
    json yet (PID 1, the in-guest listener), which ``except ValueError`` callers let through."""
    code = (
        f"import sys; sys.path.insert(0, {str(repo)!r}); import guestinit.notify.jsonenc as j\n"
        "assert 'json.decoder' not in sys.modules\n"
        "for bad in ('\"\\x01\"', '\"abc', '\"\\\\q\"', '{\"a\": \"b'):\n"
        "    try:\n"
        "        j.loads(bad)\n"
        "    except ValueError:\n"
        "        pass\n"
        "    else:\n"
        "        raise AssertionError(bad)\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout == "ok\n", done.stderr
