"""The generated protobuf/gRPC modules of fm-controller's API, loaded on first use.

They are build outputs (``make proto``, or the service-VM image build); a missing one is a clear
error, not an ImportError traceback. Attribute access on them is untyped by design: the modules
are generated and carry no annotations.
"""

from __future__ import annotations

import importlib
from types import ModuleType

SERVICE = "guestinit.fabric.v1.FabricController"


class ApiMissing(RuntimeError):
    pass


def _load(name: str) -> ModuleType:
    try:
        return importlib.import_module(f"guestinit.fabric.proto.{name}")
    except ImportError as exc:
        raise ApiMissing(
            f"the generated gRPC code is missing or unusable ({exc}); run `make proto` "
            "(python -m guestinit.fabric.protogen)"
        ) from None


def messages() -> ModuleType:
    return _load("fabric_pb2")


def services() -> ModuleType:
    return _load("fabric_pb2_grpc")
