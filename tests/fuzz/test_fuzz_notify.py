"""The notify fuzz targets (fuzz_notify_message, fuzz_listener) over their seeds, hostile inputs
and the inputs fuzzing found (the runner drives them longer with atheris or hypothesis)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import ModuleType

import fuzz_listener
import fuzz_notify_message
import pytest
from mutate import mutations

TARGETS = [fuzz_notify_message, fuzz_listener]
HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

# Inputs that once crashed a target; each stays fixed (see the commit that added it).
REGRESSIONS = [
    # jsonenc.loads: CPython 3.11's C scanner raised SystemError, not ValueError, for a control
    # character in a string when json had not been imported (as in PID 1 and the guest listener).
    b'[    3.0] noise GUESTINIT-NOTIFY {"READY":"1\n","\x16TATUS":"a b"}\r\n',
    b'GUESTINIT-NOTIFY {"STATUS":"unterminated',
    b'GUESTINIT-NOTIFY {"STATUS":"bad \\q escape"}',
    # parse_console_line kept a lone surrogate (JSON \ud800): a value UTF-8 cannot carry.
    b'GUESTINIT-NOTIFY {"STATUS":"\\ud800","READY":"1"}',
]

HOSTILE = [
    b"",
    b"\n" * 5000,
    b"=" * 3000,
    b"A=" + b"x" * 70000,
    b"A=1\n" * 20000,
    b"\xff" * 4096,
    b"GUESTINIT-NOTIFY " + b"[" * 60000,
    b"GUESTINIT-NOTIFY " + b'{"A":' * 5000,
    b"\n\n" * 3000 + b"READY=1\n\n",
    b"EXIT_STATUS=" + "\u0663".encode() + b"\nREADY=1\n",
]


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.__name__)
def test_seeds_and_hostile_inputs(target: ModuleType) -> None:
    for data in [*target.SEEDS, *HOSTILE, *REGRESSIONS]:
        target.TestOneInput(data)
    for seed in target.SEEDS:
        for data in mutations(seed):
            target.TestOneInput(data)


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.__name__)
def test_regressions_in_a_fresh_interpreter(target: ModuleType) -> None:
    """Where nothing imported json first, as in the guest: the first regression needs that."""
    code = (
        f"import sys; sys.path[:0] = [{str(HERE)!r}, {str(REPO)!r}]\n"
        f"import {target.__name__} as t\n"
        "assert 'json.decoder' not in sys.modules\n"
        f"for data in {REGRESSIONS!r}:\n"
        "    t.TestOneInput(data)\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout == "ok\n", done.stderr[-2000:]


def test_the_seeds_are_what_they_claim() -> None:
    from guestinit.notify.message import parse

    assert parse(fuzz_notify_message.SEEDS[0]).fields["READY"] == "1"
    limits = fuzz_listener.limits_for(fuzz_listener.SEEDS[0])
    assert limits.max_message_bytes == 16 + 0x10 * 8 and limits.max_queued == 5
