"""The fleet manifests (deploy/): validated against the Kubernetes API schema with jsonschema (no
cluster), held to the API server's own cross-field rules, kept in step with what `guestctl deploy`
writes, and the container build file executed as far as it can be without a container engine: its
COPY lines lay out an image tree, and its command, then the DaemonSet's, run `guestctl deploy`
from that tree against a prefix standing in for the node's /opt/kata."""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from deploy_harness import PUBLIC, make_build, observe

from guestinit.host.kata import deploy
from guestinit.host.kata import render as katarender
from guestinit.host.kata.layout import Layout

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
SCHEMA = json.loads((DEPLOY / "schema" / "kubernetes-v1.34.0-strict.json").read_text())
H200_ROOT = REPO / "tests" / "fixtures" / "h200-firecracker-vm" / "root"
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def validator(kind: str) -> jsonschema.Draft202012Validator:
    schema = dict(SCHEMA, **{"$ref": f"#/$defs/{kind}"})
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def errors(kind: str, document: dict[str, Any]) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator(kind).iter_errors(document)
    ]


def load(name: str) -> dict[str, Any]:
    document = yaml.safe_load((DEPLOY / name).read_text())
    assert isinstance(document, dict)
    return document


def test_manifests_match_the_kubernetes_schema() -> None:
    assert errors("DaemonSet", load("daemonset.yaml")) == []
    assert errors("RuntimeClass", load("runtimeclass.yaml")) == []


@pytest.mark.parametrize(
    ("edit", "expect"),
    [
        (lambda d: d["spec"]["template"]["spec"]["volumes"][0].update(hostpath={"path": "/x"}), "hostpath"),
        (lambda d: d["spec"]["template"]["spec"].update(initContainer=[]), "initContainer"),
        (lambda d: d["spec"]["updateStrategy"].update(rollingUpdate=[1]), "is not of type"),
        (lambda d: d["spec"].pop("selector"), "'selector' is a required property"),
        (lambda d: d.update(kind="Deployment"), "is not one of ['DaemonSet']"),
    ],
)
def test_the_schema_rejects_what_the_api_server_would(edit: Any, expect: str) -> None:
    document = copy.deepcopy(load("daemonset.yaml"))
    edit(document)
    assert any(expect in e for e in errors("DaemonSet", document))


def test_runtimeclass_schema_rejects_a_bad_one() -> None:
    document = load("runtimeclass.yaml")
    assert errors("RuntimeClass", {k: v for k, v in document.items() if k != "handler"})
    assert errors("RuntimeClass", dict(document, overhead={"podFixed": {"memory": ["160Mi"]}}))


def test_daemonset_passes_the_api_servers_cross_field_rules() -> None:
    spec = load("daemonset.yaml")["spec"]
    pod = spec["template"]["spec"]
    selector = spec["selector"]["matchLabels"]
    assert (
        selector.items() <= spec["template"]["metadata"]["labels"].items()
    )  # else: "selector does not match"
    containers = pod["initContainers"] + pod["containers"]
    names = [c["name"] for c in containers]
    assert len(set(names)) == len(names) and all(DNS_LABEL.match(n) for n in names)
    volumes = {v["name"]: v for v in pod["volumes"]}
    for container in containers:
        for mount in container.get("volumeMounts", []):
            assert mount["name"] in volumes


def test_fleet_agrees_with_what_deploy_writes() -> None:
    layout = Layout(deploy.DEFAULT_PREFIX, deploy.DEFAULT_FLAVOUR)
    assert (DEPLOY / "runtimeclass.yaml").read_bytes() == katarender.render_runtimeclass(layout)
    runtimeclass = load("runtimeclass.yaml")
    runtimes = tomllib.loads(katarender.render_containerd(layout).decode())["plugins"][
        "io.containerd.grpc.v1.cri"
    ]
    assert runtimeclass["handler"] in runtimes["containerd"]["runtimes"]  # containerd knows the handler
    pod = load("daemonset.yaml")["spec"]["template"]["spec"]
    assert (
        runtimeclass["scheduling"]["nodeSelector"] == pod["nodeSelector"]
    )  # pods land where it was deployed
    init = pod["initContainers"][0]
    assert init["command"] == ["guestctl"] and init["args"][0] == "deploy"
    args = deploy.deploy_parser().parse_args(init["args"][1:])
    mounts = {m["mountPath"]: pod_volume(pod, m["name"]) for m in init["volumeMounts"]}
    assert mounts[os.fspath(args.prefix)] == {"path": "/opt/kata", "type": "DirectoryOrCreate"}
    assert {mounts[f"{args.sysfs_root}/sys"]["path"], mounts[f"{args.sysfs_root}/proc"]["path"]} == {
        "/sys",
        "/proc",
    }
    assert {c["image"] for c in pod["initContainers"] + pod["containers"]} == {"guestinit-deploy:0.1.0"}


def pod_volume(pod: dict[str, Any], name: str) -> dict[str, str]:
    volume = next(v for v in pod["volumes"] if v["name"] == name)
    return dict(volume["hostPath"])


# ---------------------------------------------------------------------------- the Containerfile


def containerfile() -> list[tuple[str, str]]:
    """(instruction, rest) of deploy/Containerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Containerfile").read_text())
    out = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            instruction, _, rest = line.strip().partition(" ")
            out.append((instruction.upper(), rest.strip()))
    return out


def lay_out_image(root: Path, build: Path) -> tuple[list[str], list[str]]:
    """Carry out the COPY lines into ``root`` (build/kata/ taken from ``build``); return ENTRYPOINT, CMD."""
    entrypoint: list[str] = []
    cmd: list[str] = []
    for instruction, rest in containerfile():
        if instruction == "COPY":
            *sources, dest = shlex.split(rest)
            for source in sources:
                src = build / Path(source).name if source.startswith("build/kata/") else REPO / source
                assert src.exists(), f"COPY {source}: not in the build context"
                target = root / dest.lstrip("/")
                if src.is_dir():
                    shutil.copytree(
                        src, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__")
                    )
                else:
                    if dest.endswith("/"):
                        target = target / src.name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(src, target)
        elif instruction == "ENTRYPOINT":
            entrypoint = json.loads(rest)
        elif instruction == "CMD":
            cmd = json.loads(rest)
    return entrypoint, cmd


def run_in_image(root: Path, argv: list[str], mounts: dict[str, Path]) -> subprocess.CompletedProcess[str]:
    """Run argv as the image would (PATH /usr/local/bin, its dist-packages), paths under mounts mapped."""

    def mapped(arg: str) -> str:
        for inside, outside in sorted(mounts.items(), key=lambda kv: -len(kv[0])):
            if arg == inside or arg.startswith(inside + "/"):
                return os.fspath(outside) + arg[len(inside) :]
        return arg

    program = root / "usr" / "local" / "bin" / argv[0]
    assert program.read_text().startswith("#!/usr/bin/python3\n")
    env = dict(os.environ, PYTHONPATH=os.fspath(root / "usr" / "lib" / "python3" / "dist-packages"))
    return subprocess.run(
        [sys.executable, os.fspath(program), *map(mapped, argv[1:])],
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
        check=False,
    )


def test_containerfile_image_runs_guestctl_deploy(tmp_path: Path) -> None:
    steps = [instruction for instruction, _ in containerfile()]
    assert steps[0] == "FROM" and "debian:trixie" in containerfile()[0][1]
    wrapper = (DEPLOY / "guestctl").read_text()
    script = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]["guestctl"]
    module, function = script.split(":")
    assert f"from {module} import {function}" in wrapper  # the same entry point as the installed guestctl
    build = make_build(tmp_path / "build" / "kata", "0.1.0-20261126160000").parent
    root = tmp_path / "image"
    entrypoint, cmd = lay_out_image(root, build)
    assert entrypoint == ["guestctl"] and cmd[0] == "deploy"
    node = tmp_path / "node-opt-kata"
    image_share = root / "usr" / "share"
    done = run_in_image(root, entrypoint + cmd, {"/opt/kata": node, "/usr/share": image_share})
    assert done.returncode == 0, done.stderr
    assert "deployed 0.1.0-20261126160000+" in done.stdout
    state = observe(node)
    assert state["initrd"] == (build / "guestinit-kata.cpio.lz4").read_bytes()
    # The DaemonSet's init container: same image, host paths mounted, the planner on a real capture.
    pod = load("daemonset.yaml")["spec"]["template"]["spec"]
    init = pod["initContainers"][0]
    node2 = tmp_path / "node2-opt-kata"
    mounts = {"/opt/kata": node2, "/usr/share": image_share, "/host": H200_ROOT}
    done = run_in_image(root, init["command"] + init["args"], mounts)
    assert done.returncode == 0, done.stderr
    qemu = tomllib.loads((node2 / PUBLIC["config"]).read_text())["hypervisor"]["qemu"]
    assert qemu["pcie_root_port"] == 1  # sized for the capture's one H200 by the planner in the image
