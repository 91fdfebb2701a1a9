"""Every fuzz target over its seeds and its committed corpus, tests/fuzz/corpus/<name>/ (the
seeds and the regression inputs of findings, once fixed), so `make test` replays them all; and
the runner's discovery and accounting."""

from __future__ import annotations

import importlib

import pytest
import run

TARGETS = run.targets()


def test_every_target_is_discovered() -> None:
    assert {"fuzz_service_file", "fuzz_guestinit_toml", "fuzz_cmdline"} <= set(TARGETS)
    assert all(name.startswith("fuzz_") for name in TARGETS)


@pytest.mark.parametrize("name", TARGETS)
def test_target_follows_the_convention_and_replays_its_corpus(name: str) -> None:
    module = importlib.import_module(name)
    assert callable(module.TestOneInput)
    assert module.SEEDS and all(isinstance(seed, bytes) for seed in module.SEEDS)
    assert "atheris" not in getattr(module, "__dict__", {})
    for data in [*module.SEEDS, *run.corpus_inputs(run.CORPUS / name)]:
        module.TestOneInput(data)


def test_executions_are_read_from_either_engine() -> None:
    assert (
        run.executions("#1024\tpulse  cov: 3\n#2048\tDONE   cov: 5\nstat::number_of_executed_units: 2048\n")
        == 2048
    )
    assert run.executions("#1\tINITED\n#512\tNEW    cov: 9\n==1== ERROR: libFuzzer: deadly signal\n") == 512
    assert run.executions("nothing") == 0
