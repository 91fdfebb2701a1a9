from __future__ import annotations

from guestinit.init.params import PARAMS, parse_cmdline, reference_markdown, split_cmdline


def test_split_cmdline_handles_quotes() -> None:
    assert split_cmdline('a b="c d" e=""  f\n') == ["a", "b=c d", "e=", "f"]


def test_defaults_when_absent() -> None:
    config = parse_cmdline("console=ttyS0 quiet")
    assert config.problems == []
    assert config.text("notify") == ""
    assert config.text("log") == "info"
    assert config.flag("lockdown") is False


def test_values_parsed_by_type() -> None:
    config = parse_cmdline(
        "guestinit.notify=vsock-stream:2:1234 guestinit.log=debug guestinit.lockdown "
        "guestinit.modules=a,b guestinit.ready_timeout=2.5"
    )
    assert config.problems == []
    assert config.text("notify") == "vsock-stream:2:1234"
    assert config.text("log") == "debug"
    assert config.flag("lockdown") is True
    assert config.strings("modules") == ("a", "b")
    assert config.number("ready_timeout") == 2.5


def test_unknown_key_and_bad_value_reported_default_kept() -> None:
    config = parse_cmdline(
        "guestinit.bogus=1 guestinit.log=loud guestinit.lockdown=maybe guestinit.ready_timeout=-1"
    )
    assert config.text("log") == "info"
    assert config.flag("lockdown") is False
    assert config.number("ready_timeout") == 30.0
    text = "\n".join(config.problems)
    assert "unknown key guestinit.bogus" in text
    assert "guestinit.log=loud" in text and "info" in text
    assert "guestinit.lockdown=maybe" in text
    assert "guestinit.ready_timeout=-1" in text
    assert len(config.problems) == 4


def test_reference_lists_every_key() -> None:
    doc = reference_markdown()
    for p in PARAMS:
        assert f"`guestinit.{p.name}`" in doc


def test_generated_reference_is_current(repo: object) -> None:
    from pathlib import Path

    assert isinstance(repo, Path)
    assert (repo / "docs" / "kernel-cmdline.md").read_text() == reference_markdown(), (
        "docs/kernel-cmdline.md is stale: run `make docs`"
    )
