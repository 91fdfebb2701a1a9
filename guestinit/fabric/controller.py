"""``fm-controller``: the gRPC service in the service VM that partitions the NVLink fabric through
fabricmanager's SDK (libnvfm.so.1), with the standard gRPC health service and reflection.

    fm-controller [--listen ADDRESS]... [--libnvfm PATH] [--fm-address ADDRESS] [--state PATH]
                  [--allow-cid CID]... [--tls-cert F --tls-key F --tls-ca F] [--ready-file PATH]

Health is SERVING while the controller is connected to fabricmanager and in step with it,
NOT_SERVING otherwise (fabricmanager absent, starting, or restarting); the server itself keeps
answering, and calls that need fabricmanager fail with UNAVAILABLE naming the reason.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from guestinit import __version__
from guestinit.atomicfile import write_atomic
from guestinit.fabric import api, bridge, endpoints, nvfm
from guestinit.fabric.latency import Latencies
from guestinit.fabric.manager import Manager
from guestinit.fabric.servicer import MAX_WATCHERS, Servicer
from guestinit.fabric.state import StateError, StateFile

WORKERS = 64


def log(text: str) -> None:
    print(f"fm-controller: {text}", file=sys.stderr, flush=True)


# --- options -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    flag: str
    help: str
    default: object = None
    repeat: bool = False
    type: Callable[[str], object] = str
    metavar: str | None = None


OPTIONS: tuple[Option, ...] = (
    Option(
        "--listen",
        f"where to serve: {endpoints.LISTEN_FORMS} (repeat for several; default: "
        f"vsock:{endpoints.DEFAULT_VSOCK_PORT} and unix:{endpoints.DEFAULT_SOCKET})",
        repeat=True,
        metavar="ADDRESS",
    ),
    Option("--libnvfm", "fabricmanager's SDK library", nvfm.DEFAULT_LIBRARY, metavar="PATH"),
    Option(
        "--fm-address",
        "fabricmanager's SDK address: HOST[:PORT], unix:PATH or vsock:CID:PORT",
        "127.0.0.1:6666",
        metavar="ADDRESS",
    ),
    Option(
        "--state", "where the activated set is persisted", "/var/lib/fm-controller/state.json", metavar="PATH"
    ),
    Option(
        "--allow-cid",
        "admit vsock peers with this CID only (repeat; default: any)",
        repeat=True,
        type=int,
        metavar="CID",
    ),
    Option("--tls-cert", "server certificate (PEM) for tcp: with mutual TLS", metavar="FILE"),
    Option("--tls-key", "server private key (PEM)", metavar="FILE"),
    Option("--tls-ca", "CA (PEM) that client certificates must chain to", metavar="FILE"),
    Option("--ready-file", "write this file once serving (for service readiness)", metavar="PATH"),
    Option(
        "--poll-interval", "seconds between fabricmanager checks while in step", 1.0, type=float, metavar="S"
    ),
    Option("--connect-timeout-ms", "how long fmConnect may take", 2000, type=int, metavar="MS"),
)


DESCRIPTION = (
    "Serve the gRPC API that partitions the NVLink fabric through NVIDIA fabricmanager's SDK "
    "(libnvfm.so.1), with the standard gRPC health and reflection services."
)
EPILOG = (
    "Health is SERVING while the controller is connected to fabricmanager and in step with it, and "
    "NOT_SERVING otherwise (fabricmanager absent, starting or restarting). The server answers either "
    "way: calls that need fabricmanager fail with UNAVAILABLE and say why. The command 'fmctl status' "
    "shows the controller's state and the time its server spends on each method."
)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fm-controller", description=DESCRIPTION, epilog=EPILOG)
    for o in OPTIONS:
        shown = o.default is not None and not o.repeat
        kwargs: dict[str, Any] = {
            "help": o.help + (" (default: %(default)s)" if shown else ""),
            "type": o.type,
        }
        if o.metavar:
            kwargs["metavar"] = o.metavar
        if o.repeat:
            kwargs.update(action="append", default=[])
        else:
            kwargs["default"] = o.default
        parser.add_argument(o.flag, **kwargs)
    parser.add_argument("--version", action="version", version=f"fm-controller {__version__}")
    return parser


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    return parser().parse_args(argv)


class UsageError(ValueError):
    pass


def _read(path: str | None, what: str) -> bytes:
    if not path:
        raise UsageError(f"--tls-cert, --tls-key and --tls-ca go together; {what} is missing")
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"{what} {path}: {exc.strerror}") from None


# --- the server ----------------------------------------------------------------------------------


class Controller:
    """The running service: gRPC server, health, reflection, vsock bridges, the manager."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        try:
            self.listen = [endpoints.parse_listen(a) for a in (args.listen or self.default_listen())]
            self.fm_address = nvfm.FMAddress.parse(args.fm_address)
        except (endpoints.EndpointError, nvfm.AddressError) as exc:
            raise UsageError(str(exc)) from None
        self.tls = any((args.tls_cert, args.tls_key, args.tls_ca))
        for e in self.listen:
            if e.kind == "tcp" and not e.is_loopback and not self.tls:
                raise UsageError(
                    f"--listen {e}: not a loopback address; serving beyond this machine needs mutual TLS "
                    "(--tls-cert, --tls-key, --tls-ca)"
                )
        self.state = StateFile(args.state)
        self.state.load()  # a damaged file stops us here, with its own message
        self.bridges: list[bridge.Bridge] = []
        self.latencies = Latencies()
        self.server: Any = None
        self.health: Any = None
        self._private_dir: tempfile.TemporaryDirectory[str] | None = None
        self.manager = Manager(
            args.libnvfm,
            self.fm_address,
            self.state,
            poll_s=args.poll_interval,
            connect_timeout_ms=args.connect_timeout_ms,
            on_serving=self._serving_changed,
            log=log,
        )

    @staticmethod
    def default_listen() -> list[str]:
        return [f"vsock:{endpoints.DEFAULT_VSOCK_PORT}", f"unix:{endpoints.DEFAULT_SOCKET}"]

    def _serving_changed(self, serving: bool) -> None:
        if self.health is None:
            return
        from grpc_health.v1 import health_pb2

        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", api.SERVICE):
            self.health.set(name, status)
        log(f"health: {'SERVING' if serving else 'NOT_SERVING'}")

    def _credentials(self) -> Any:
        import grpc

        key = _read(self.args.tls_key, "--tls-key")
        cert = _read(self.args.tls_cert, "--tls-cert")
        ca = _read(self.args.tls_ca, "--tls-ca")
        return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)

    def _unix_path_for_bridges(self) -> str:
        for e in self.listen:
            if e.kind == "unix":
                return e.path
        self._private_dir = tempfile.TemporaryDirectory(prefix="fm-controller-")
        path = os.path.join(self._private_dir.name, "grpc.sock")
        self.server.add_insecure_port(f"unix:{path}")
        return path

    def start(self) -> None:
        import grpc
        from grpc_health.v1 import health, health_pb2, health_pb2_grpc
        from grpc_reflection.v1alpha import reflection

        from guestinit.fabric.interceptor import LatencyInterceptor

        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=WORKERS + MAX_WATCHERS, thread_name_prefix="rpc"),
            interceptors=[LatencyInterceptor(self.latencies)],
            maximum_concurrent_rpcs=1024,
        )
        api.services().add_FabricControllerServicer_to_server(
            Servicer(self.manager, self.latencies), self.server
        )
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (
                api.messages().DESCRIPTOR.services_by_name["FabricController"].full_name,
                health.SERVICE_NAME,
                reflection.SERVICE_NAME,
            ),
            self.server,
        )
        for name in ("", api.SERVICE):
            self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        credentials = self._credentials() if self.tls else None
        for e in self.listen:
            if e.kind == "unix":
                Path(e.path).parent.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(e.path)
                self._bind(e, e.grpc_target, None)
            elif e.kind == "tcp":
                self._bind(e, e.grpc_target, credentials)
        if any(e.kind == "vsock" for e in self.listen):
            inner = self._unix_path_for_bridges()
            allow = bridge.cid_allowed(self.args.allow_cid)
            for e in (e for e in self.listen if e.kind == "vsock"):
                try:
                    listener = bridge.vsock_listener(e.port, e.cid)
                except OSError as exc:
                    raise UsageError(f"--listen {e}: cannot listen on vsock: {exc.strerror or exc}") from None
                self.bridges.append(bridge.Bridge(listener, bridge.unix_connector(inner), allow, log).start())
        self.server.start()
        self.manager.start()
        log(f"serving on {', '.join(str(e) for e in self.listen)}; fabricmanager at {self.fm_address}")
        if self.args.ready_file:
            _write_ready(Path(self.args.ready_file))

    def _bind(self, e: endpoints.Endpoint, target: str, credentials: Any) -> None:
        try:
            port = (
                self.server.add_secure_port(target, credentials)
                if credentials is not None
                else self.server.add_insecure_port(target)
            )
        except RuntimeError as exc:
            raise UsageError(f"--listen {e}: cannot listen: {exc}") from None
        if port == 0:
            raise UsageError(f"--listen {e}: cannot listen there (in use, or no permission)")

    def stop(self) -> None:
        for b in self.bridges:
            b.close()
        if self.server is not None:
            self.server.stop(grace=2).wait(3)
        self.manager.stop()
        if self.args.ready_file:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.args.ready_file)
        for e in self.listen:
            if e.kind == "unix":
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(e.path)
        if self._private_dir is not None:
            self._private_dir.cleanup()


def _write_ready(path: Path) -> None:
    write_atomic(path, f"{os.getpid()}\n")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        controller = Controller(args)
        controller.start()
    except (UsageError, StateError, api.ApiMissing) as exc:
        log(str(exc))
        return 2
    done = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    done.wait()
    log("stopping")
    controller.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
