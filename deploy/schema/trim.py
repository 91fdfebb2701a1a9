"""Regenerate kubernetes-v1.34.0-strict.json: the Kubernetes API schema for the kinds deploy/ uses.

Source: the PyPI package kubernetes-validate 1.37.0 (Apache-2.0, github.com/willthames/kubernetes-validate),
whose kubernetes-json-schema/v1.34.0-local-strict/ holds JSON schemas generated from Kubernetes
v1.34.0's OpenAPI definitions (strict: additionalProperties false, as the API server's field
validation). This keeps the two kinds deploy/ uses (DaemonSet apps/v1, RuntimeClass node.k8s.io/v1)
and every definition they reach, drops the descriptions, and rewrites the references to point
inside the one file: 1.5 MB of definitions become about 60 kB. Nothing else is changed.

    pip download --no-deps kubernetes-validate==1.37.0 -d /tmp/kv
    python3 deploy/schema/trim.py /tmp/kv/kubernetes_validate-1.37.0-py3-none-any.whl
"""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path
from typing import Any

VERSION = "v1.34.0"
BASE = f"kubernetes_validate/kubernetes-json-schema/{VERSION}-local-strict/"
KINDS = {"DaemonSet": "daemonset-apps-v1.json", "RuntimeClass": "runtimeclass-node-v1.json"}
REF_PREFIXES = ("/api/_definitions.json#/$defs/", "#/$defs/")


def _name(ref: str) -> str:
    for prefix in REF_PREFIXES:
        if ref.startswith(prefix):
            return ref.removeprefix(prefix)
    raise ValueError(f"unexpected reference {ref!r}")


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for k, v in node.items() if k != "$ref" for r in _refs(v)]
    if isinstance(node, list):
        return [r for item in node for r in _refs(item)]
    return []


def _clean(node: Any) -> Any:
    if isinstance(node, dict):
        out = {k: _clean(v) for k, v in node.items() if k not in ("description", "$id", "$schema")}
        if isinstance(out.get("$ref"), str):
            out["$ref"] = "#/$defs/" + _name(out["$ref"])
        return out
    if isinstance(node, list):
        return [_clean(item) for item in node]
    return node


def main(wheel: str) -> None:
    with zipfile.ZipFile(wheel) as archive:
        definitions = json.loads(archive.read(BASE + "_definitions.json"))["$defs"]
        tops = {kind: json.loads(archive.read(BASE + name)) for kind, name in KINDS.items()}
    keep: dict[str, Any] = {}
    todo = [r for top in tops.values() for r in _refs(top)]
    while todo:
        name = _name(todo.pop())
        if name not in keep:
            keep[name] = definitions[name]
            todo.extend(_refs(definitions[name]))
    defs = {kind: _clean(top) for kind, top in tops.items()} | {n: _clean(keep[n]) for n in sorted(keep)}
    comment = (
        f"Kubernetes {VERSION} API schema (strict) for DaemonSet and RuntimeClass, "
        "trimmed from kubernetes-validate 1.37.0 by deploy/schema/trim.py"
    )
    # One definition per line: small, and a regeneration diffs by definition.
    body = ",\n".join(f"  {json.dumps(n)}: {json.dumps(d, sort_keys=True)}" for n, d in defs.items())
    out = Path(__file__).with_name(f"kubernetes-{VERSION}-strict.json")
    out.write_text(
        "{\n"
        f' "$schema": "https://json-schema.org/draft/2020-12/schema",\n'
        f' "$comment": {json.dumps(comment)},\n'
        f' "$defs": {{\n{body}\n }}\n'
        "}\n"
    )
    json.loads(out.read_text())
    print(f"{out}: {len(keep)} definitions, {out.stat().st_size} bytes")


if __name__ == "__main__":
    main(sys.argv[1])
