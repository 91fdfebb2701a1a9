"""Render the Kata TOML, the containerd runtime snippet and the RuntimeClass (jinja2), checked.

The Kata configuration is checked against the keys Kata's runtime reads
(templates/kata-known-keys.json) and names the versioned kernel and image files, not the public
links, so one read of it gives the runtime a consistent pair even while a switch happens.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2

from guestinit.host.build.manifest import BuildManifest
from guestinit.host.errors import DeployError
from guestinit.host.kata.layout import Layout
from guestinit.host.kata.settings import KATA_SETTINGS, Plan

NODE_LABEL = "guestinit/kata-runtime"
RUNTIMECLASS_OVERHEAD = {"memory": "160Mi", "cpu": "250m"}


def toml_value(value: object) -> str:
    """A TOML literal for a bool, int, str or list of those."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        # A JSON string (UTF-8, not \u surrogate pairs) is a TOML basic string once DEL, which
        # JSON leaves raw and TOML forbids, is escaped too.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("guestinit.host.kata", "templates"),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["toml"] = toml_value
    return env


def known_kata_keys() -> dict[str, frozenset[str]]:
    text = (Path(__file__).parent / "templates" / "kata-known-keys.json").read_text()
    return {table: frozenset(keys) for table, keys in json.loads(text)["tables"].items()}


def unknown_kata_keys(document: Mapping[str, Any]) -> list[str]:
    """Dotted keys of a parsed Kata configuration that Kata's runtime does not read."""
    known = known_kata_keys()
    unknown: list[str] = []

    def walk(node: Mapping[str, Any], path: str) -> None:
        for key, value in node.items():
            dotted = f"{path}.{key}" if path else key
            if path in known:
                if key not in known[path]:
                    unknown.append(dotted)
            elif isinstance(value, dict) and any(t == dotted or t.startswith(dotted + ".") for t in known):
                walk(value, dotted)
            else:
                unknown.append(dotted)

    walk(document, "")
    return unknown


def kata_items(layout: Layout, manifest: BuildManifest, plan: Plan | None) -> list[dict[str, object]]:
    prefix = os.fspath(layout.prefix)
    qemu = f"{prefix}/bin/qemu-system-x86_64"
    virtiofsd = f"{prefix}/libexec/virtiofsd"
    computed: dict[str, object] = {
        "path": qemu,
        "valid_hypervisor_paths": [qemu],
        "virtio_fs_daemon": virtiofsd,
        "valid_virtio_fs_daemon_paths": [virtiofsd],
        "kernel": os.fspath(layout.assets / layout.versioned_name("kernel", manifest.version)),
        manifest.rootfs.kind: os.fspath(
            layout.assets / layout.versioned_name(manifest.rootfs.kind, manifest.version)
        ),
    }
    if manifest.rootfs.kind == "image":
        computed["rootfs_type"] = "erofs"
    items: list[dict[str, object]] = []
    for setting in KATA_SETTINGS:
        source = setting.source
        if source in ("image", "prefix"):
            value = computed.get(setting.key)
            source = "the image" if source == "image" else "--prefix"
        elif source == "plan" and plan is not None and setting.key in plan.settings:
            value = plan.settings[setting.key]
            source = "guestctl plan"
        else:
            value, source = setting.default, "default"
        if value is None:
            continue
        items.append(
            {
                "table": setting.table,
                "key": setting.key,
                "value": value,
                "help": setting.help,
                "source": source,
            }
        )
    return items


def render_kata_config(layout: Layout, manifest: BuildManifest, plan: Plan | None) -> bytes:
    items = kata_items(layout, manifest, plan)
    tables: list[dict[str, Any]] = []
    for item in items:
        if not tables or tables[-1]["name"] != item["table"]:
            tables.append({"name": item["table"], "entries": []})
        tables[-1]["entries"].append(item)
    text = (
        _environment()
        .get_template("configuration-qemu.toml.j2")
        .render(
            flavour=layout.flavour,
            image={
                "image": manifest.image,
                "version": manifest.version,
                "profile": manifest.profile,
                "built": manifest.built,
                "kernel_version": manifest.kernel_version,
            },
            planned=plan.summary if plan else "",
            tables=tables,
        )
    )
    unknown = unknown_kata_keys(tomllib.loads(text))
    if unknown:
        raise DeployError(
            f"the Kata template writes keys Kata does not read: {', '.join(unknown)}: fix the table"
        )
    return text.encode()


CRI_PLUGIN_V2 = "io.containerd.grpc.v1.cri"  # containerd config version 2 (containerd 1.x)
CRI_PLUGIN_V3 = "io.containerd.cri.v1.runtime"  # version 3 (containerd 2.x): CRI split in runtime/images


def _runtime_values(layout: Layout) -> dict[str, str]:
    return {
        "handler": layout.handler,
        "flavour": layout.flavour,
        "prefix": os.fspath(layout.prefix),
        "shim": os.fspath(layout.prefix / "bin" / "containerd-shim-kata-v2"),
        "config_path": os.fspath(layout.public()[layout.config_member]),
    }


def render_containerd(layout: Layout) -> bytes:
    """The drop-in kept in every version (containerd/config.d/kata-qemu-F.toml), config version 2."""
    text = (
        _environment()
        .get_template("containerd-runtime.toml.j2")
        .render(plugin=CRI_PLUGIN_V2, **_runtime_values(layout))
    )
    tomllib.loads(text)
    return text.encode()


def render_containerd_runtime(layout: Layout, version: int, dropin_for: str | None) -> str:
    """The runtime tables for containerd's own configuration (config ``version``): a drop-in file
    that ``dropin_for`` imports (with its own ``version`` line), or a block appended to it."""
    text = (
        _environment()
        .get_template("containerd-config-runtime.toml.j2")
        .render(
            plugin=CRI_PLUGIN_V2 if version == 2 else CRI_PLUGIN_V3,
            version=version,
            dropin=dropin_for is not None,
            config=dropin_for or "",
            **_runtime_values(layout),
        )
    )
    tomllib.loads(text)
    return text


def render_runtimeclass(layout: Layout) -> bytes:
    return (
        _environment()
        .get_template("runtimeclass.yaml.j2")
        .render(
            handler=layout.handler,
            flavour=layout.flavour,
            node_label=NODE_LABEL,
            overhead_memory=RUNTIMECLASS_OVERHEAD["memory"],
            overhead_cpu=RUNTIMECLASS_OVERHEAD["cpu"],
        )
        .encode()
    )
