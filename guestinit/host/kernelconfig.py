"""`guestctl kernel-config`: check a kernel's .config against the fragments in kernel-config/.

    guestctl kernel-config check CONFIG [--fragment NAME|PATH ...]

By default ``check`` holds CONFIG to what this project's images need (the ROLES table's required
fragments: base, gpu, service VM) and lists what the other fragments want as recommendations,
without failing; ``--fragment`` names the fragments to require instead.
    guestctl kernel-config list
    guestctl kernel-config fetch-debian [--suite trixie] [--package linux-image-cloud-amd64] [--refresh]

A fragment is a Kconfig fragment as ``scripts/kconfig/merge_config.sh`` takes it (``CONFIG_X=v`` or
``# CONFIG_X is not set``, comments on their own lines), so the same file can configure a custom
guest kernel. Checking reads what the guest needs, not the letter: a fragment's ``=m`` is met by a
module or by built-in code (the init loads modules itself), ``=y`` only by built-in code, ``is not
set`` by the option being off or absent, and any other value (numbers, strings) by that value.
``check`` prints one line per option that a fragment wants and CONFIG lacks or has otherwise, with
the fragment that wants it, and exits 1 when there is any.

``fetch-debian`` downloads Debian's cloud kernel package with apt (a private configuration under the
cache: the system's own sources are not touched; the archive is the one the system's apt already
uses, with the suite asked for) and keeps only its ``/boot/config-*``.
"""

from __future__ import annotations

import argparse
import gzip
import os
import re
import subprocess
import sys
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from guestinit.atomicfile import write_atomic
from guestinit.host.errors import UserError

FRAGMENTS_DIR = Path(__file__).resolve().parents[2] / "kernel-config"
OPTION = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
NOT_SET = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")
OFF = "n"
DEFAULT_SUITE = "trixie"
DEFAULT_PACKAGE = "linux-image-cloud-amd64"


@dataclass(frozen=True)
class Role:
    """What a fragment in kernel-config/ is for, and whether the images need it."""

    name: str
    required: bool
    purpose: str


# One table: `check`, `list` and kernel-config/README.md follow it.
ROLES: tuple[Role, ...] = (
    Role(
        "base", True, "every guestinit microVM: virtio, vsock, PCIe hot-plug, hugepages, lz4 or zstd initrd"
    ),
    Role("gpu", True, "the GPU image: NVIDIA's open modules and large BARs"),
    Role("servicevm", True, "the service VM: NVSwitches passed through for fabricmanager"),
    Role(
        "image-rootfs",
        False,
        "Kata's rootfs-image form (--format erofs): virtio-blk and erofs built in; that form's own kernel "
        "build sets them",
    ),
    Role("microvm-builtin", False, "a dedicated microVM kernel: drivers built in, virtio-mmio, PVH"),
    Role(
        "gpu-extras", False, "GPU features beyond what the GPU image relies on: UVM HMM, P2PDMA, nvidia-drm"
    ),
)
ROLE = {role.name: role for role in ROLES}


class KernelConfigError(UserError):
    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message, hint, exit_code=2)


# ------------------------------------------------------------------------------------- parsing


def parse_config(text: str, where: str, *, fragment: bool = False) -> dict[str, str]:
    """Options of a .config or a fragment: name -> value ('n' for 'is not set')."""
    options: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        match = OPTION.match(line)
        if match:
            name, value = match.groups()
            if fragment and not re.fullmatch(r'[ymn]|-?\d+|0x[0-9a-fA-F]+|"([^"\\]|\\.)*"', value):
                raise KernelConfigError(
                    f"{where}:{number}: {name}={value}: not y, m, n, a number or a quoted string",
                    "write the value as a .config does",
                )
            options[name] = value
            continue
        match = NOT_SET.match(line)
        if match:
            options[match.group(1)] = OFF
            continue
        if fragment and line and not line.startswith("#"):
            raise KernelConfigError(
                f"{where}:{number}: {line!r} is neither CONFIG_X=value nor a comment",
                "fragments take merge_config.sh's syntax; put comments on their own lines",
            )
    return options


def read_config(path: Path) -> dict[str, str]:
    """A kernel's .config: /boot/config-*, a build tree's .config, or /proc/config.gz."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise KernelConfigError(
            f"{path}: no such kernel config", "pass /boot/config-VERSION or run `kernel-config fetch-debian`"
        ) from None
    except OSError as exc:
        raise KernelConfigError(f"{path}: cannot read it ({exc.strerror})") from None
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise KernelConfigError(f"{path}: not a text .config", "pass the kernel's config file") from None
    options = parse_config(text, os.fspath(path))
    if not options:
        raise KernelConfigError(f"{path}: no CONFIG_ options in it", "pass the kernel's config file")
    return options


@dataclass(frozen=True)
class Fragment:
    name: str
    path: Path
    options: dict[str, str]


def fragment_paths(directory: Path = FRAGMENTS_DIR) -> list[Path]:
    return sorted(directory.glob("*.conf"))


def load_fragment(spec: str, directory: Path = FRAGMENTS_DIR) -> Fragment:
    """A fragment by name (kernel-config/NAME.conf) or by path."""
    path = Path(spec)
    if not path.is_file():
        path = directory / (spec if spec.endswith(".conf") else f"{spec}.conf")
    try:
        text = path.read_text()
    except OSError:
        known = ", ".join(p.stem for p in fragment_paths(directory)) or "none"
        raise KernelConfigError(
            f"--fragment {spec}: no such fragment", f"known: {known}; or give a path"
        ) from None
    return Fragment(path.name, path, parse_config(text, os.fspath(path), fragment=True))


# ------------------------------------------------------------------------------------ checking


def satisfies(actual: str | None, wanted: str) -> bool:
    if wanted == OFF:
        return actual in (None, OFF)
    if wanted == "m":
        return actual in ("m", "y")
    return actual == wanted


@dataclass(frozen=True)
class Finding:
    fragment: str
    option: str
    wanted: str
    actual: str | None

    def line(self) -> str:
        want = "it not set" if self.wanted == OFF else f"={self.wanted}"
        if self.actual is None:
            have = f"{self.option} is missing"
        elif self.actual == OFF:
            have = f"{self.option} is not set"
        else:
            have = f"{self.option}={self.actual}"
        extra = " (a module or built-in)" if self.wanted == "m" else ""
        return f"{self.fragment}: {have}, wants {want}{extra}"


def check(config: dict[str, str], fragments: Iterable[Fragment]) -> list[Finding]:
    return [
        Finding(fragment.name, option, wanted, config.get(option))
        for fragment in fragments
        for option, wanted in fragment.options.items()
        if not satisfies(config.get(option), wanted)
    ]


def conflicts(fragments: Sequence[Fragment]) -> list[str]:
    """Options that two fragments want in ways no single value meets."""
    wanted: dict[str, list[tuple[str, str]]] = {}
    for fragment in fragments:
        for option, value in fragment.options.items():
            wanted.setdefault(option, []).append((fragment.name, value))
    out = []
    for option, wants in sorted(wanted.items()):
        values = {v for _, v in wants}
        if not any(all(satisfies(candidate, v) for v in values) for candidate in values):
            out.append(f"{option}: " + ", ".join(f"{name} wants {value}" for name, value in wants))
    return out


# ---------------------------------------------------------------------- Debian's cloud kernel


def cache_dir() -> Path:
    return Path(os.environ.get("GUESTINIT_CACHE") or Path.home() / ".cache" / "guestinit") / "kernel-config"


def _system_stanzas(etc_apt: Path) -> list[dict[str, str]]:
    """The system's apt sources as deb822 fields (one-line sources.list entries converted)."""
    stanzas: list[dict[str, str]] = []
    for path in sorted((etc_apt / "sources.list.d").glob("*.sources")):
        for block in path.read_text().split("\n\n"):
            fields: dict[str, str] = {}
            for line in block.splitlines():
                if line.strip() and not line.startswith("#") and ":" in line and not line[0].isspace():
                    key, _, value = line.partition(":")
                    fields[key.strip().lower()] = value.strip()
            stanzas.append(fields)
    for path in [etc_apt / "sources.list", *sorted((etc_apt / "sources.list.d").glob("*.list"))]:
        if path.is_file():
            for line in path.read_text().splitlines():
                words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
                if len(words) >= 4 and words[0] == "deb":
                    stanzas.append(
                        {
                            "types": "deb",
                            "uris": words[1],
                            "suites": words[2],
                            "components": " ".join(words[3:]),
                        }
                    )
    return stanzas


def debian_sources(suite: str, etc_apt: Path = Path("/etc/apt")) -> str:
    """deb822 sources for ``suite`` (with -updates and -security) on the archives the system's apt uses.

    The archive addresses come from the system's own configuration: this code names none."""
    main: tuple[str, str] | None = None
    security: tuple[str, str] | None = None
    for fields in _system_stanzas(etc_apt):
        uris = fields.get("uris", "").split()
        suites = fields.get("suites", "").split()
        if "deb" not in fields.get("types", "").split() or "main" not in fields.get("components", "").split():
            continue
        if not uris:
            continue
        keyring = fields.get("signed-by", "/usr/share/keyrings/debian-archive-keyring.gpg")
        if main is None and any("-" not in s and "/" not in s for s in suites):
            main = (uris[0], keyring)
        if security is None and any(s.endswith("-security") for s in suites):
            security = (uris[0], keyring)
    if main is None:
        raise KernelConfigError(
            f"{etc_apt}: no Debian archive with 'main' in the system's apt sources",
            "fetch the package yourself and pass its /boot/config-* to `check`",
        )
    stanzas = [(main, f"{suite} {suite}-updates")] + ([(security, f"{suite}-security")] if security else [])
    return "\n".join(
        f"Types: deb\nURIs: {uri}\nSuites: {suites}\nComponents: main\nSigned-By: {keyring}\n"
        for (uri, keyring), suites in stanzas
    )


def _apt(apt_dir: Path, *args: str, cwd: Path | None = None) -> str:
    options = [
        "-oDir::Etc::SourceList=/dev/null",
        f"-oDir::Etc::SourceParts={apt_dir / 'sources'}",
        f"-oDir::State::Lists={apt_dir / 'lists'}",
        f"-oDir::Cache={apt_dir / 'cache'}",
        "-oDir::State::Status=/dev/null",
        "-oAPT::Get::List-Cleanup=0",
        "-oDebug::NoLocking=1",
        "-oAPT::Sandbox::User=root",
    ]
    tool, *rest = args
    try:
        done = subprocess.run([tool, *options, *rest], capture_output=True, text=True, cwd=cwd, check=False)
    except FileNotFoundError:
        raise KernelConfigError(f"{tool}: not installed", "apt-get install apt") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise KernelConfigError(f"{tool} {' '.join(rest)}: {last}", "check the network to the Debian archive")
    return done.stdout


def fetch_debian_config(
    cache: Path | None = None,
    suite: str = DEFAULT_SUITE,
    package: str = DEFAULT_PACKAGE,
    refresh: bool = False,
) -> Path:
    """The /boot/config-* of Debian's ``package`` in ``suite``, downloaded once and cached."""
    cache = cache or cache_dir()
    marker = f"-{package.removeprefix('linux-image-')}"
    if not refresh:
        cached = sorted(cache.glob(f"config-*{marker}"), key=lambda p: p.stat().st_mtime)
        if cached:
            return cached[-1]
    apt_dir = cache / f"apt-{suite}"
    for sub in ("sources", "lists/partial", "cache/archives/partial", "download"):
        (apt_dir / sub).mkdir(parents=True, exist_ok=True)
    (apt_dir / "sources" / f"{suite}.sources").write_text(debian_sources(suite))
    _apt(apt_dir, "apt-get", "-qq", "update")
    depends = _apt(apt_dir, "apt-cache", "depends", package)
    real = re.search(r"Depends: (linux-image-\S+)", depends)
    if not real:
        raise KernelConfigError(f"{package} ({suite}): no linux-image dependency in its metadata")
    download = apt_dir / "download"
    for old in download.glob("*.deb"):
        old.unlink()
    _apt(apt_dir, "apt-get", "-qq", "download", real.group(1), cwd=download)
    deb = next(download.glob("*.deb"))
    dest = _extract_boot_config(deb, cache)
    deb.unlink()
    for older in cache.glob(f"config-*{marker}"):
        if older != dest:
            older.unlink()
    return dest


def _extract_boot_config(deb: Path, cache: Path) -> Path:
    # dpkg-deb's stderr is dropped: it complains when we stop reading once the file is found.
    command = ["dpkg-deb", "--fsys-tarfile", os.fspath(deb)]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as proc:
        assert proc.stdout is not None
        with tarfile.open(fileobj=proc.stdout, mode="r|") as archive:
            for member in archive:
                name = Path(member.name).name
                if member.isfile() and member.name.lstrip("./").startswith("boot/config-"):
                    source = archive.extractfile(member)
                    assert source is not None
                    dest = cache / name
                    write_atomic(dest, source.read())  # a kernel config: a few hundred KiB
                    proc.stdout.close()
                    return dest
    raise KernelConfigError(f"{deb}: no /boot/config-* in the package", "is it a linux-image package?")


# ----------------------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="guestctl kernel-config",
        description="Check kernel configs against the kernel-config/ fragments.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    check_p = sub.add_parser(
        "check",
        help="report each option CONFIG lacks that the images need; list the other fragments' wishes",
        description="Check CONFIG against the fragments this project's images need (base, gpu, servicevm), "
        "exiting 1 when one is not met, and list what the other fragments want as recommendations.",
    )
    check_p.add_argument("config", type=Path, help="the kernel's .config (/boot/config-*, /proc/config.gz)")
    check_p.add_argument(
        "--fragment",
        action="append",
        metavar="NAME|PATH",
        help="require this fragment instead of the default set (may be given more than once)",
    )
    sub.add_parser(
        "list",
        help="the fragments in kernel-config/, whether the images need each, and what for",
        description="List the fragments in kernel-config/: required or recommended, and what each is for.",
    )
    fetch = sub.add_parser(
        "fetch-debian",
        help="download Debian's cloud kernel config (cached); print its path",
        description="Download the configuration of Debian's cloud kernel with apt (a private "
        "configuration; the system's sources are not touched), keep it in the cache and print its path.",
    )
    fetch.add_argument("--suite", default=DEFAULT_SUITE, help=f"the Debian suite (default {DEFAULT_SUITE})")
    fetch.add_argument(
        "--package", default=DEFAULT_PACKAGE, help=f"the kernel package (default {DEFAULT_PACKAGE})"
    )
    fetch.add_argument("--refresh", action="store_true", help="download even when a config is cached")
    return parser


def _first_comment(path: Path) -> str:
    for line in path.read_text().splitlines():
        if line.startswith("#") and not NOT_SET.match(line):
            return line.lstrip("# ").strip()
    return ""


def run(args: argparse.Namespace) -> tuple[int, list[str]]:
    if args.command == "list":
        lines = []
        for path in fragment_paths():
            role = ROLE.get(path.stem)
            kind = ("required" if role.required else "recommended") if role else "extra"
            lines.append(f"{path.stem:<16} {kind:<11} {role.purpose if role else _first_comment(path)}")
        return 0, lines
    if args.command == "fetch-debian":
        return 0, [
            os.fspath(fetch_debian_config(suite=args.suite, package=args.package, refresh=args.refresh))
        ]
    if args.fragment:
        required, recommended = [load_fragment(spec) for spec in args.fragment], []
    else:
        known = {p.stem for p in fragment_paths()}
        if not known:
            raise KernelConfigError(f"{FRAGMENTS_DIR}: no fragments there", "pass --fragment PATH")
        required = [load_fragment(r.name) for r in ROLES if r.required and r.name in known]
        recommended = [load_fragment(r.name) for r in ROLES if not r.required and r.name in known]
    config = read_config(args.config)
    lines = [f"conflict: {c}" for c in conflicts(required)]
    findings = check(config, required)
    lines += [finding.line() for finding in findings]
    failed = {f.fragment for f in findings}
    summary = ", ".join(f"{f.name} {'FAILS' if f.name in failed else 'ok'}" for f in required)
    advice = check(config, recommended)
    if advice:
        lines.append("recommended, not required (what the other fragments want):")
        lines += [f"  {finding.line()}" for finding in advice]
    tail = ""
    if recommended:
        wanting = sorted({f.fragment for f in advice})
        tail = f"; {len(advice)} recommended option(s) not met" + (
            f" ({', '.join(wanting)})" if wanting else ""
        )
    lines.append(f"{args.config}: {len(findings)} required option(s) missing or different; {summary}{tail}")
    return (1 if findings or lines[0].startswith("conflict:") else 0), lines


def main(argv: list[str]) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        code: object = exc.code
        return code if isinstance(code, int) else 2
    try:
        code, lines = run(args)
    except UserError as exc:
        print(f"guestctl kernel-config: {exc.line()}", file=sys.stderr)
        return exc.exit_code
    print("\n".join(lines))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
