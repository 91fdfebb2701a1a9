"""Generate the Python code for fm-controller's API from ``proto/*.proto``.

``python -m guestinit.fabric.protogen [--out DIR] [--if-stale] [--protoc PATH --grpc-plugin PATH]``

The generated modules are build outputs (gitignored). ``make proto`` runs this on the host with
grpcio-tools (its bundled protoc). The service-VM image build runs it inside the image with
Debian's ``protoc`` (protobuf-compiler) and ``grpc_python_plugin`` (protobuf-compiler-grpc): the
releases of the image's python3-protobuf 3.21 and python3-grpcio 1.51, so the code matches the
runtime it will meet there (Debian's python3-grpc-tools is grpc 1.14 with protoc 3.6, which
refuses proto3 ``optional``). protoc writes ``import fabric_pb2``; the ``_pb2_grpc`` module is
rewritten to import it relative to its package.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent / "proto"
_ABSOLUTE_IMPORT = re.compile(r"^import (\w+_pb2) as (\w+)$", re.MULTILINE)


class ProtogenError(RuntimeError):
    pass


def proto_files(proto_dir: Path = PROTO_DIR) -> list[Path]:
    return sorted(proto_dir.glob("*.proto"))


def outputs(proto: Path, out_dir: Path) -> tuple[Path, Path]:
    return out_dir / f"{proto.stem}_pb2.py", out_dir / f"{proto.stem}_pb2_grpc.py"


def is_stale(proto_dir: Path = PROTO_DIR, out_dir: Path | None = None) -> bool:
    out_dir = out_dir or proto_dir
    for proto in proto_files(proto_dir):
        for path in outputs(proto, out_dir):
            if not path.exists() or path.stat().st_mtime < proto.stat().st_mtime:
                return True
    return False


def fix_imports(text: str) -> str:
    """``import fabric_pb2 as fabric__pb2`` -> ``from . import fabric_pb2 as fabric__pb2``."""
    return _ABSOLUTE_IMPORT.sub(r"from . import \1 as \2", text)


def _grpc_tools_protoc(args: list[str]) -> None:
    """protoc as grpcio-tools bundles it (with its well-known .proto files on the path)."""
    try:
        from grpc_tools import protoc  # type: ignore[import-untyped]
    except ImportError:
        raise ProtogenError(
            "grpc_tools is not installed: install grpcio-tools (pip install -e '.[test]'), or give "
            "--protoc and --grpc-plugin"
        ) from None
    include = Path(protoc.__file__).parent / "_proto"
    extra = [f"-I{include}"] if include.is_dir() else []
    if protoc.main(["grpc_tools.protoc", *extra, *args]) != 0:
        raise ProtogenError(f"protoc failed: {' '.join(args)}")


def _binary_protoc(protoc: Path, plugin: Path, args: list[str]) -> None:
    """A protoc executable with the gRPC Python plugin (Debian's protobuf-compiler-grpc)."""
    for path, what in ((protoc, "--protoc"), (plugin, "--grpc-plugin")):
        if not os.access(path, os.X_OK):
            raise ProtogenError(f"{what} {path}: not an executable file")
    argv = [os.fspath(protoc), f"--plugin=protoc-gen-grpc_python={os.fspath(plugin)}", *args]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ProtogenError(f"{protoc} failed: {result.stderr.strip() or f'exit {result.returncode}'}")


def generate(
    proto_dir: Path = PROTO_DIR,
    out_dir: Path | None = None,
    protoc: Path | None = None,
    grpc_plugin: Path | None = None,
) -> list[Path]:
    """Run protoc for every .proto (grpcio-tools', or the ``protoc`` executable with
    ``grpc_plugin``); files appear atomically (written beside, then renamed)."""
    if (protoc is None) != (grpc_plugin is None):
        raise ProtogenError("--protoc and --grpc-plugin go together")
    out_dir = out_dir or proto_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for proto in proto_files(proto_dir):
        with tempfile.TemporaryDirectory(dir=out_dir, prefix=".protogen-") as tmp:
            args = [f"-I{proto_dir}", f"--python_out={tmp}", f"--grpc_python_out={tmp}", os.fspath(proto)]
            if protoc is not None and grpc_plugin is not None:
                _binary_protoc(protoc, grpc_plugin, args)
            else:
                _grpc_tools_protoc(args)
            for target in outputs(proto, out_dir):
                source = Path(tmp) / target.name
                text = source.read_text()
                if target.name.endswith("_grpc.py"):
                    text = fix_imports(text)
                source.write_text(text)
                with open(source, "rb") as f:
                    os.fsync(f.fileno())
                os.replace(source, target)
                written.append(target)
    return written


def ensure(proto_dir: Path = PROTO_DIR) -> None:
    """Generate when the modules are missing or older than their .proto (fresh clones, tests)."""
    if is_stale(proto_dir):
        generate(proto_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m guestinit.fabric.protogen",
        description="Generate the Python code for fm-controller's API from the .proto files beside it.",
    )
    parser.add_argument("--out", type=Path, help="write the modules here (default: beside the .proto files)")
    parser.add_argument("--if-stale", action="store_true", help="do nothing when the modules are up to date")
    parser.add_argument(
        "--protoc", type=Path, metavar="PATH", help="a protoc executable (default: grpcio-tools' own protoc)"
    )
    parser.add_argument(
        "--grpc-plugin",
        type=Path,
        metavar="PATH",
        help="the gRPC Python plugin for --protoc (grpc_python_plugin)",
    )
    args = parser.parse_args(argv)
    if args.if_stale and not is_stale(PROTO_DIR, args.out):
        return 0
    try:
        written = generate(PROTO_DIR, args.out, args.protoc, args.grpc_plugin)
    except ProtogenError as exc:
        print(f"protogen: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(f"generated {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
