"""Every guestinit and guestctl command's --help reads as whole sentences: a description that is
a sentence (not a docstring's first line cut short), help for every option, no raw ``markup``.
The parsers are caught as each command builds them, so the check sees exactly what --help prints."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable, Iterator

import pytest

from guestinit.host import cli as guestctl
from guestinit.init import cli as guestinit_cli

COMMANDS: list[tuple[str, Callable[[list[str]], object], list[str]]] = [
    ("guestctl", guestctl.main, []),
    *[
        (f"guestctl {c}", guestctl.main, [c])
        for c in ("build", "boot", "listen", "plan", "deploy", "rollback", "kernel-config", "bench")
    ],
    ("guestinit", guestinit_cli.main, []),
    *[
        (f"guestinit {c}", guestinit_cli.main, [c])
        for c in ("params", "services", "probe", "parse-cmdline", "check")
    ],
]


def caught_parser(main: Callable[[list[str]], object], argv: list[str]) -> argparse.ArgumentParser:
    """The parser that handles ``argv + --help``, caught before it prints."""
    seen: list[argparse.ArgumentParser] = []

    def parse_args(self: argparse.ArgumentParser, args: object = None, namespace: object = None) -> object:
        seen.append(self)
        raise SystemExit(0)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(argparse.ArgumentParser, "parse_args", parse_args)
        mp.setattr(argparse.ArgumentParser, "parse_known_args", parse_args)
        with contextlib.suppress(SystemExit):
            main([*argv, "--help"])
    assert seen, f"{argv}: no argument parser was used"
    return seen[-1]


def all_parsers(top: argparse.ArgumentParser, name: str) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield name, top
    for action in top._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                if sub.add_help:  # pass-through stubs (add_help=False) have their own parser
                    yield from all_parsers(sub, f"{name} {sub_name}")


def is_sentence(text: str) -> bool:
    text = " ".join(text.split())
    return bool(text) and (text[0].isupper() or text[0] in "`'\"") and text.endswith((".", ")", ":"))


@pytest.mark.parametrize(("name", "main", "argv"), COMMANDS, ids=[c[0] for c in COMMANDS])
def test_help_reads_as_whole_sentences(
    name: str, main: Callable[[list[str]], object], argv: list[str]
) -> None:
    for label, parser in all_parsers(caught_parser(main, argv), name):
        assert parser.description and is_sentence(parser.description), f"{label}: {parser.description!r}"
        text = parser.format_help()
        assert "``" not in text and ":mod:" not in text, f"{label} shows raw markup"
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
                continue
            what = "/".join(action.option_strings) or action.dest
            if isinstance(action, argparse._SubParsersAction):  # each command says what it does
                for choice in action._choices_actions:
                    assert choice.help and not choice.help.startswith("see "), f"{label}: {choice.dest}"
                continue
            assert action.help and action.help.strip(), f"{label}: {what} has no help"
            assert "``" not in action.help, f"{label}: {what}"
