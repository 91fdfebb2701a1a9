"""Generate the Python code for fm-controller's API from ``proto/*.proto`` with grpcio-tools.

``python -m guestinit.fabric.protogen [--out DIR] [--if-stale]``

The generated modules are build outputs (gitignored): ``make proto`` runs this on the host, the
service-VM image build runs it inside the image with Debian's own python3-grpc-tools, so the code
matches the grpcio/protobuf runtime it will meet there. protoc writes ``import fabric_pb2``; the
``_pb2_grpc`` module is rewritten to import it relative to its package.
"""

from __future__ import annotations

import argparse
import os
import re
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


def generate(proto_dir: Path = PROTO_DIR, out_dir: Path | None = None) -> list[Path]:
    """Run protoc for every .proto; files appear atomically (written beside, then renamed)."""
    try:
        from grpc_tools import protoc  # type: ignore[import-untyped]
    except ImportError:
        raise ProtogenError(
            "grpc_tools is not installed: install grpcio-tools (pip install -e '.[test]', "
            "or Debian's python3-grpc-tools)"
        ) from None
    out_dir = out_dir or proto_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for proto in proto_files(proto_dir):
        with tempfile.TemporaryDirectory(dir=out_dir, prefix=".protogen-") as tmp:
            args = ["grpc_tools.protoc", f"-I{proto_dir}", f"--python_out={tmp}", f"--grpc_python_out={tmp}"]
            include = Path(protoc.__file__).parent / "_proto"
            if include.is_dir():
                args.append(f"-I{include}")
            args.append(os.fspath(proto))
            if protoc.main(args) != 0:
                raise ProtogenError(f"protoc failed on {proto}")
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
        prog="python -m guestinit.fabric.protogen", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", type=Path, help="write the modules here (default: beside the .proto files)")
    parser.add_argument("--if-stale", action="store_true", help="do nothing when the modules are up to date")
    args = parser.parse_args(argv)
    if args.if_stale and not is_stale(PROTO_DIR, args.out):
        return 0
    try:
        written = generate(PROTO_DIR, args.out)
    except ProtogenError as exc:
        print(f"protogen: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(f"generated {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
