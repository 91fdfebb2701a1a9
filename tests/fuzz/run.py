"""Run every fuzz target in tests/fuzz for a fixed number of executions.

A target is a file ``tests/fuzz/fuzz_<name>.py`` defining ``TestOneInput(data: bytes) -> None``
(raises only on a real bug) and ``SEEDS: list[bytes]``; it imports nothing from the fuzzing
engine. Each target runs in a child process of its own:

- with atheris (libFuzzer, coverage-guided; guestinit's modules and tomllib instrumented) when
  it imports: ``-runs=N``, the committed corpus tests/fuzz/corpus/<name>/ (seeded from SEEDS)
  read, new inputs kept in build/fuzz/corpus/<name>/, findings written to
  build/fuzz/artifacts/<name>/;
- else with hypothesis: the corpus first, then ``st.binary()`` examples up to N in all,
  the shrunk failing input written to the same artifacts folder.

    python tests/fuzz/run.py [--total N | --runs N] [--max-time S] [--engine auto|atheris|hypothesis]
                             [TARGET ...]

One summary line a target (engine, executions, findings, seconds) and a total; exit 1 when any
target found something (a finding: a crash, a timeout, an out-of-memory, or a child that died).
A finding is fixed, then kept as a regression input in tests/fuzz/corpus/<name>/ (replayed by
tests/fuzz/test_corpus.py in ``make test``).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

FUZZ_DIR = Path(__file__).resolve().parent
REPO = FUZZ_DIR.parents[1]
CORPUS = FUZZ_DIR / "corpus"
WORK = REPO / "build" / "fuzz"
FINDING_PREFIXES = ("crash-", "timeout-", "oom-", "leak-", "slow-unit-")
INSTRUMENTED = ["guestinit", "tomllib"]
UNIT_TIMEOUT_S = 30  # one input running longer than this is a finding (a hang)


def targets() -> list[str]:
    """Every fuzz target's name (fuzz_<name>.py), sorted."""
    return sorted(p.stem for p in FUZZ_DIR.glob("fuzz_*.py"))


def engine() -> str:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return "hypothesis"
    return "atheris"


def seed_corpus(name: str, seeds: list[bytes]) -> Path:
    """tests/fuzz/corpus/<name>/ holding each seed (named by its digest, as libFuzzer names
    units), kept alongside the regression inputs committed there."""
    folder = CORPUS / name
    folder.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        path = folder / hashlib.sha1(seed).hexdigest()
        if not path.exists():
            path.write_bytes(seed)
    return folder


def corpus_inputs(*folders: Path) -> list[bytes]:
    out = []
    for folder in folders:
        if folder.is_dir():
            out.extend(p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file())
    return out


# ------------------------------------------------------------------ the child: one target


def child(name: str, runs: int, max_time: int, which: str) -> int:
    sys.path[:0] = [str(FUZZ_DIR), str(REPO)]
    artifacts = WORK / "artifacts" / name
    work = WORK / "corpus" / name
    artifacts.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    if which == "atheris":
        import atheris

        with atheris.instrument_imports(include=[*INSTRUMENTED, name]):
            for lazy in INSTRUMENTED:  # imported only when first needed (tomllib): instrument it now
                importlib.import_module(lazy)
            module = importlib.import_module(name)
        corpus = seed_corpus(name, module.SEEDS)
        args = [
            sys.argv[0],
            f"-runs={runs}",
            f"-artifact_prefix={artifacts}/",
            f"-timeout={UNIT_TIMEOUT_S}",
            "-rss_limit_mb=4096",
            "-print_final_stats=1",
            str(work),
            str(corpus),
        ]
        if max_time:
            args.append(f"-max_total_time={max_time}")
        atheris.Setup(args, module.TestOneInput)
        atheris.Fuzz()  # exits the process
        return 0
    module = importlib.import_module(name)
    corpus = seed_corpus(name, module.SEEDS)
    return _hypothesis(module, corpus, work, artifacts, runs, max_time)


def _hypothesis(module: object, corpus: Path, work: Path, artifacts: Path, runs: int, max_time: int) -> int:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from hypothesis.database import DirectoryBasedExampleDatabase

    test_one = module.TestOneInput  # type: ignore[attr-defined]
    count = 0
    failing: list[bytes] = []
    deadline = time.monotonic() + max_time if max_time else None

    def one(data: bytes) -> None:
        nonlocal count
        count += 1
        try:
            test_one(data)
        except BaseException:
            failing[:] = [data]
            raise

    inputs = corpus_inputs(corpus, work)
    status = 0
    try:
        for data in inputs:
            one(data)
        longest = max((len(d) for d in inputs), default=0)

        @settings(
            max_examples=max(1, runs - count),
            database=DirectoryBasedExampleDatabase(str(WORK / "hypothesis" / corpus.name)),
            deadline=None,
            suppress_health_check=list(HealthCheck),
            print_blob=True,
        )
        @given(st.binary(max_size=max(4096, longest)))
        def fuzz(data: bytes) -> None:
            if deadline is not None and time.monotonic() > deadline:
                return
            one(data)

        fuzz()
    except Exception:
        import traceback

        traceback.print_exc()
        data = failing[0] if failing else b""
        path = artifacts / f"crash-{hashlib.sha1(data).hexdigest()}"
        path.write_bytes(data)
        print(f"Test unit written to {path}", file=sys.stderr)
        status = 1
    print(f"stat::number_of_executed_units: {count}", file=sys.stderr)
    return status


# ------------------------------------------------------------------ the parent: every target


def findings_in(folder: Path) -> set[str]:
    if not folder.is_dir():
        return set()
    return {p.name for p in folder.iterdir() if p.name.startswith(FINDING_PREFIXES)}


def executions(log: str) -> int:
    m = re.findall(r"stat::number_of_executed_units: (\d+)", log)
    if m:
        return int(m[-1])
    m = re.findall(r"^#(\d+)\s", log, re.M)  # libFuzzer's progress lines, when it died early
    return int(m[-1]) if m else 0


def run_target(name: str, runs: int, max_time: int, which: str) -> tuple[int, list[str], float, str]:
    artifacts = WORK / "artifacts" / name
    before = findings_in(artifacts)
    log_path = WORK / f"{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--runs", str(runs)]
    argv += ["--engine", which, "--max-time", str(max_time)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(FUZZ_DIR), str(REPO)])}
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, errors="replace")
    elapsed = time.monotonic() - start
    log = proc.stdout + proc.stderr
    log_path.write_text(log)
    found = sorted(findings_in(artifacts) - before)
    if proc.returncode != 0 and not found:
        found = [f"exit status {proc.returncode} (see {log_path.relative_to(REPO)})"]
    return executions(log), found, elapsed, log


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("targets", nargs="*", help="target names (fuzz_<name>; default: every one)")
    count = parser.add_mutually_exclusive_group()
    count.add_argument("--total", type=int, help="executions in all, spread evenly over the targets")
    count.add_argument("--runs", type=int, help="executions per target (default 10000)")
    parser.add_argument("--max-time", type=int, default=0, help="seconds per target at most (0: no bound)")
    parser.add_argument("--engine", choices=("auto", "atheris", "hypothesis"), default="auto")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    which = engine() if args.engine == "auto" else args.engine
    if args.child:
        return child(args.child, args.runs or 10000, args.max_time, which)
    names = args.targets or targets()
    names = [n if n.startswith("fuzz_") else f"fuzz_{n}" for n in names]
    unknown = sorted(set(names) - set(targets()))
    if unknown:
        parser.error(f"no such target: {', '.join(unknown)} (have: {', '.join(targets())})")
    runs = -(-args.total // len(names)) if args.total else (args.runs or 10000)
    total_runs = total_found = 0
    for name in names:
        done, found, elapsed, log = run_target(name, runs, args.max_time, which)
        total_runs += done
        total_found += len(found)
        print(
            f"{name:<28} {which:<10} executions {done:>9}  findings {len(found)}  {elapsed:7.1f} s",
            flush=True,
        )
        for item in found:
            print(f"    finding: {item}")
        if found:
            print("    " + "\n    ".join(log.strip().splitlines()[-25:]))
    everything = f"all {len(names)} targets"
    print(f"{everything:<28} {which:<10} executions {total_runs:>9}  findings {total_found}")
    return 1 if total_found else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
