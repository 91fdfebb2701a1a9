from __future__ import annotations

from pathlib import Path

import pytest

from guestinit.init.clock import Timeline, kernel_log_stamp, log_text_stamp


def test_kernel_log_stamp_finds_init_exec(tmp_path: Path) -> None:
    kmsg = tmp_path / "kmsg"
    kmsg.write_bytes(
        b"6,1,0,-;Linux version 6.12\n"
        b" SUBSYSTEM=x\n"
        b"6,500,3719123,-;Run /init as init process\n"
        b"6,501,3800000,-;later\n"
    )
    assert kernel_log_stamp("Run /init as init process", str(kmsg)) == 3.719123
    assert kernel_log_stamp(" as init process", str(kmsg)) == 3.719123  # what boot asks: /init or /sbin/init
    assert kernel_log_stamp("absent", str(kmsg)) is None
    assert kernel_log_stamp("x", str(tmp_path / "missing")) is None


def test_log_text_stamp_reads_the_logs_text_form() -> None:
    text = (
        b"<5>[    0.000000] Linux version 6.12\n"
        b"<6>[    2.100000] Run /init as init process\n"  # its first appearance is the one
        b"<6>[    3.719123][    T1] Run /sbin/init as init process\n"
        b"<6>Run /init as init process without a stamp\n"
    )
    assert log_text_stamp(" as init process", text) == 2.1
    assert log_text_stamp("Run /sbin/init", text) == 3.719123  # printk caller ids after the time
    assert log_text_stamp("without a stamp", text) is None  # printk.time=0
    assert log_text_stamp("absent", text) is None
    assert log_text_stamp(" as init process", b"") is None
    assert log_text_stamp("x", b"<6>[  bad ] x\n<6>[ 1.5] x\n") == 1.5


def test_timeline_records_errors() -> None:
    t = Timeline()
    with t.phase("a"):
        pass
    try:
        with t.phase("b"):
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    phases = t.as_list()
    assert [p["name"] for p in phases] == ["a", "b"]
    assert phases[1]["error"] == "RuntimeError: boom"
    assert float(str(phases[0]["end_s"])) >= float(str(phases[0]["start_s"]))


def test_exec_time_from_the_logs_newest_records_then_from_the_whole_log(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from types import SimpleNamespace

    from guestinit.init import boot
    from guestinit.init.root import Root

    whole = b"<6>[    2.201000] Run /init as init process\n" + b"<6>[    2.3] later\n" * 400
    asked: list[int] = []

    def kernel_log(tail: int = 0) -> bytes:
        asked.append(tail)
        return whole[-tail:] if tail else whole

    monkeypatch.setattr(boot.syscalls, "kernel_log", kernel_log)
    state = SimpleNamespace(exec_s=None, root=Root("/"))
    boot.read_exec_time(state)  # type: ignore[arg-type]
    assert state.exec_s == 2.201 and asked == [boot.EXEC_LOG_TAIL]  # found in the newest records

    whole = b"<6>[    2.201000] Run /init as init process\n" + b"<6>[    2.3] later\n" * 2000
    asked.clear()
    state.exec_s = None
    boot.read_exec_time(state)  # type: ignore[arg-type]
    assert state.exec_s == 2.201 and asked == [boot.EXEC_LOG_TAIL, 0]  # pushed out of them: the whole log


def test_kernel_log_tail_is_at_most_what_was_asked() -> None:
    from guestinit.init import syscalls

    tail = syscalls.kernel_log(tail=4096)
    whole = syscalls.kernel_log()  # after: a record logged in between only adds to it
    if not whole:
        pytest.skip("this machine's kernel log cannot be read (dmesg_restrict, no CAP_SYSLOG)")
    assert 0 < len(tail) <= 4096
    assert tail.splitlines()[-1] in whole.splitlines()[-64:]  # the newest records, whole ones
