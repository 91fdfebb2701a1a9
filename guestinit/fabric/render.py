"""Render the service VM's generated configuration with jinja2: fabricmanager.cfg and the libvirt
domain XML. One declarative table per file lists every key with its default and help.

    python -m guestinit.fabric.render fabricmanager-cfg [--set KEY=VALUE ...] [--output FILE]
    python -m guestinit.fabric.render libvirt-domain --kernel K --initrd I --nvswitch PCI ... [--output FILE]
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from guestinit.atomicfile import write_atomic

TEMPLATE_DIR = Path(__file__).resolve().parents[2] / "service-vm" / "templates"
_PCI = re.compile(r"^(?:([0-9a-fA-F]{4}):)?([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7])$")


class RenderError(ValueError):
    pass


@dataclass(frozen=True)
class Key:
    key: str
    default: str
    help: str
    choices: tuple[str, ...] = ()
    number: bool = False


# fabricmanager.cfg for FABRIC_MODE=1 in a service VM (references §4). guestinit supervises the
# daemon, so it stays in the foreground; restarts use --restart (see service-vm's start script).
FABRICMANAGER_KEYS: tuple[Key, ...] = (
    Key(
        "FABRIC_MODE",
        "1",
        "0 = bare metal / full passthrough, 1 = Shared NVSwitch, 2 = vGPU",
        ("0", "1", "2"),
    ),
    Key(
        "FABRIC_MODE_RESTART",
        "0",
        "1 = start as a restart keeping partitions (same as --restart); the start script passes --restart",
        ("0", "1"),
    ),
    Key(
        "STATE_FILE_NAME",
        "/run/fabricmanager/fabricmanager.state",
        "where fabricmanager keeps state for restarts",
    ),
    Key(
        "FM_CMD_BIND_INTERFACE",
        "127.0.0.1",
        "address the SDK (libnvfm) connects to; fm-controller runs beside it",
    ),
    Key("FM_CMD_PORT_NUMBER", "6666", "TCP port of the SDK interface", number=True),
    Key("FM_CMD_UNIX_SOCKET_PATH", "", "a unix socket for the SDK instead of TCP (empty = TCP)"),
    Key(
        "FM_STAY_RESIDENT_ON_FAILURES",
        "1",
        "keep running after a fabric failure so the controller can report it",
        ("0", "1"),
    ),
    Key("LOG_LEVEL", "4", "0 = critical ... 4 = info, 5 = debug", ("0", "1", "2", "3", "4", "5")),
    Key("LOG_FILE_NAME", "/var/log/fabricmanager.log", "log file (empty: none)"),
    Key("LOG_APPEND_TO_LOG", "1", "append to the log file instead of truncating it", ("0", "1")),
    Key("LOG_FILE_MAX_SIZE", "1024", "log file size limit in MB", number=True),
    Key("LOG_USE_SYSLOG", "1", "also log to syslog (guestinit's /dev/log)", ("0", "1")),
    Key("DAEMONIZE", "0", "0 = stay in the foreground (guestinit supervises it)", ("0", "1")),
    Key(
        "TOPOLOGY_FILE_PATH",
        "/usr/share/nvidia/nvswitch",
        "where NVIDIA's topology files are (from its package)",
    ),
    Key(
        "DATABASE_PATH", "/usr/share/nvidia/nvswitch", "where NVIDIA's fabric database is (from its package)"
    ),
    Key("ABORT_CUDA_JOBS_ON_FM_EXIT", "1", "abort CUDA jobs when fabricmanager exits", ("0", "1")),
)


def _environment(template_dir: Path) -> object:
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(os.fspath(template_dir)),
        undefined=jinja2.StrictUndefined,
        autoescape=jinja2.select_autoescape(enabled_extensions=("xml.j2",), default_for_string=False),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def _render(template: str, template_dir: Path, **values: object) -> str:
    env = _environment(template_dir)
    return str(env.get_template(template).render(**values))  # type: ignore[attr-defined]


def parse_assignments(items: Iterable[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise RenderError(f"--set {item!r}: expected KEY=VALUE, e.g. --set FM_CMD_PORT_NUMBER=6666")
        out[key.strip()] = value.strip()
    return out


def fabricmanager_settings(overrides: Mapping[str, str] | None = None) -> list[dict[str, str]]:
    overrides = dict(overrides or {})
    known = {k.key: k for k in FABRICMANAGER_KEYS}
    for key in overrides:
        if key not in known:
            raise RenderError(f"fabricmanager.cfg has no key {key!r} here; known keys: {', '.join(known)}")
    settings = []
    for k in FABRICMANAGER_KEYS:
        value = overrides.get(k.key, k.default)
        if "\n" in value:
            raise RenderError(f"fabricmanager.cfg {k.key}: a value cannot contain a newline")
        if k.choices and value not in k.choices:
            raise RenderError(f"fabricmanager.cfg {k.key}={value!r}: choose one of {', '.join(k.choices)}")
        if k.number and not value.isdigit():
            raise RenderError(f"fabricmanager.cfg {k.key}={value!r}: expected a number")
        settings.append({"key": k.key, "value": value, "help": k.help})
    return settings


def fabricmanager_cfg(overrides: Mapping[str, str] | None = None, template_dir: Path = TEMPLATE_DIR) -> str:
    return _render("fabricmanager.cfg.j2", template_dir, settings=fabricmanager_settings(overrides))


@dataclass(frozen=True)
class PciAddress:
    domain: int
    bus: int
    slot: int
    function: int

    @classmethod
    def parse(cls, text: str) -> PciAddress:
        m = _PCI.match(text.strip())
        if not m:
            raise RenderError(
                f"PCI address {text!r}: expected DDDD:BB:SS.F, e.g. 0000:03:00.0 (see lspci -D)"
            )
        domain, bus, slot, function = m.groups()
        return cls(int(domain or "0", 16), int(bus, 16), int(slot, 16), int(function))

    def __str__(self) -> str:
        return f"{self.domain:04x}:{self.bus:02x}:{self.slot:02x}.{self.function}"


@dataclass(frozen=True)
class DomainSpec:
    """What the libvirt domain of the service VM needs; ``nvswitches`` and ``extra_functions`` go
    through VFIO (the NVSwitches and, on HGX boards, their memory-controller function)."""

    kernel: str
    initrd: str
    nvswitches: tuple[PciAddress, ...]
    extra_functions: tuple[PciAddress, ...] = ()
    name: str = "guestinit-servicevm"
    memory_mib: int = 2048
    vcpus: int = 2
    vsock_cid: int = 3
    cmdline: str = "console=ttyS0 quiet panic=-1"
    emulator: str = "/usr/bin/qemu-system-x86_64"
    console_log: str = ""


def libvirt_domain(spec: DomainSpec, template_dir: Path = TEMPLATE_DIR) -> str:
    if not spec.nvswitches:
        raise RenderError("libvirt domain: give at least one NVSwitch PCI address (--nvswitch 0000:05:00.0)")
    if spec.vsock_cid < 3:
        raise RenderError(f"libvirt domain: vsock CID {spec.vsock_cid} is reserved; use 3 or more")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", spec.name):
        raise RenderError(f"libvirt domain name {spec.name!r}: use letters, digits, '.', '_' or '-'")
    seen: set[str] = set()
    for address in (*spec.nvswitches, *spec.extra_functions):
        if str(address) in seen:
            raise RenderError(f"libvirt domain: PCI address {address} given twice")
        seen.add(str(address))
    return _render(
        "servicevm-domain.xml.j2", template_dir, spec=spec, devices=[*spec.nvswitches, *spec.extra_functions]
    )


def write_atomically(path: Path, text: str) -> None:
    write_atomic(path, text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m guestinit.fabric.render", description="Render service-VM configuration."
    )
    parser.add_argument(
        "--templates", type=Path, default=TEMPLATE_DIR, help="template folder (default: %(default)s)"
    )
    sub = parser.add_subparsers(dest="what", required=True)
    p_cfg = sub.add_parser("fabricmanager-cfg", help="fabricmanager.cfg for FABRIC_MODE=1")
    p_cfg.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one key")
    p_cfg.add_argument("--output", type=Path, help="write here (atomically) instead of stdout")
    p_dom = sub.add_parser("libvirt-domain", help="libvirt domain XML of the service VM")
    p_dom.add_argument("--kernel", required=True)
    p_dom.add_argument("--initrd", required=True)
    p_dom.add_argument("--nvswitch", action="append", default=[], metavar="PCI", help="an NVSwitch (repeat)")
    p_dom.add_argument(
        "--function", action="append", default=[], metavar="PCI", help="another function to pass"
    )
    p_dom.add_argument("--name", default=DomainSpec.name)
    p_dom.add_argument("--memory-mib", type=int, default=DomainSpec.memory_mib)
    p_dom.add_argument("--vcpus", type=int, default=DomainSpec.vcpus)
    p_dom.add_argument("--vsock-cid", type=int, default=DomainSpec.vsock_cid)
    p_dom.add_argument("--cmdline", default=DomainSpec.cmdline)
    p_dom.add_argument("--console-log", default="")
    p_dom.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.what == "fabricmanager-cfg":
            text = fabricmanager_cfg(parse_assignments(args.set), args.templates)
        else:
            spec = DomainSpec(
                kernel=args.kernel,
                initrd=args.initrd,
                nvswitches=tuple(PciAddress.parse(a) for a in args.nvswitch),
                extra_functions=tuple(PciAddress.parse(a) for a in args.function),
                name=args.name,
                memory_mib=args.memory_mib,
                vcpus=args.vcpus,
                vsock_cid=args.vsock_cid,
                cmdline=args.cmdline,
                console_log=args.console_log,
            )
            text = libvirt_domain(spec, args.templates)
    except RenderError as exc:
        print(f"render: {exc}", file=sys.stderr)
        return 2
    if args.output:
        write_atomically(args.output, text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
