"""``fmctl``: the command line for fm-controller.

    fmctl [--address ADDRESS] [--json] COMMAND [ID...]

Its commands, with their help, are the :data:`COMMANDS` table; its exit codes the
:data:`EXIT_CODES` table (gRPC status names to numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from guestinit.fabric import api, bridge, endpoints

# One table: outcome -> exit status (gRPC status names; 0 and 2 are success and usage).
EXIT_CODES: dict[str, int] = {
    "OK": 0,
    "UNKNOWN": 1,
    "INTERNAL": 1,
    "USAGE": 2,
    "UNAVAILABLE": 3,
    "NOT_FOUND": 4,
    "FAILED_PRECONDITION": 5,
    "ALREADY_EXISTS": 5,
    "ABORTED": 5,
    "INVALID_ARGUMENT": 6,
    "OUT_OF_RANGE": 6,
    "DEADLINE_EXCEEDED": 7,
    "PERMISSION_DENIED": 8,
    "UNAUTHENTICATED": 8,
    "RESOURCE_EXHAUSTED": 9,
    "UNIMPLEMENTED": 10,
    "CANCELLED": 11,
}


def exit_code(status_name: str) -> int:
    return EXIT_CODES.get(status_name, 1)


# --- output --------------------------------------------------------------------------------------


def table(rows: Sequence[Sequence[str]], padding: int = 2) -> str:
    """Columns as Go's tabwriter lays them out (minimum width 0, padding 2), last column unpadded."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [cell.ljust(widths[i] + padding) for i, cell in enumerate(row[:-1])]
        lines.append("".join(cells) + row[-1])
    return "\n".join(lines) + "\n"


def ids_text(ids: Sequence[int]) -> str:
    return ",".join(str(i) for i in ids)


def gpu_dict(g: Any) -> dict[str, Any]:
    return {
        "physical_id": g.physical_id,
        "uuid": g.uuid,
        "pci_bus_id": g.pci_bus_id,
        "nvlinks_available": g.nvlinks_available,
        "max_nvlinks": g.max_nvlinks,
        "nvlink_line_rate_mbps": g.nvlink_line_rate_mbps,
    }


def partition_dict(p: Any) -> dict[str, Any]:
    return {
        "id": p.id,
        "active": p.active,
        "nvlinks": p.nvlinks,
        "gpu_physical_ids": [g.physical_id for g in p.gpus],
        "gpus": [gpu_dict(g) for g in p.gpus],
    }


def list_text(partitions: Sequence[Any]) -> str:
    rows = [["PARTITION ID", "STATUS", "GPUs", "NVLINKS", "GPU PHYSICAL IDs"]]
    rows.append(["-" * len(h) for h in rows[0]])
    for p in partitions:
        rows.append(
            [
                str(p.id),
                "Active" if p.active else "Inactive",
                str(len(p.gpus)),
                str(p.nvlinks),
                ids_text([g.physical_id for g in p.gpus]),
            ]
        )
    return table(rows)


def info_text(p: Any) -> str:
    head = table(
        [
            ["PARTITION ID", str(p.id)],
            ["STATUS", "Active" if p.active else "Inactive"],
            ["GPUs", str(len(p.gpus))],
            ["NVLINKS", str(p.nvlinks)],
        ]
    )
    rows = [["GPU PHYSICAL ID", "NVLINKS", "MAX NVLINKS", "LINE RATE MB/s", "UUID", "PCI BUS ID"]]
    rows.append(["-" * len(h) for h in rows[0]])
    for g in p.gpus:
        rows.append(
            [
                str(g.physical_id),
                str(g.nvlinks_available),
                str(g.max_nvlinks),
                str(g.nvlink_line_rate_mbps),
                g.uuid or "-",
                g.pci_bus_id or "-",
            ]
        )
    return head + "\n" + table(rows)


def status_dict(s: Any) -> dict[str, Any]:
    return {
        "serving": s.serving,
        "fm_connected": s.fm_connected,
        "fm_address": s.fm_address,
        "library": s.library,
        "connect_version": s.connect_version,
        "active_ids": list(s.active_ids),
        "persisted_ids": list(s.persisted_ids),
        "state_path": s.state_path,
        "last_error": s.last_error,
        "restores": s.restores,
        "uptime_s": round(s.uptime_s, 3),
        "version": s.version,
        "latency": {m.method: latency_dict(m) for m in s.latency},
    }


def latency_dict(m: Any) -> dict[str, Any]:
    """One method's server-side latency; the overflow bucket's bound (+inf) is null in JSON."""
    return {
        "count": m.count,
        "errors": m.errors,
        "p50_ms": round(m.p50_ms, 3),
        "p90_ms": round(m.p90_ms, 3),
        "p99_ms": round(m.p99_ms, 3),
        "max_ms": round(m.max_ms, 3),
        "mean_ms": round(m.mean_ms, 3),
        "buckets": [[None if b.le_ms == float("inf") else b.le_ms, b.count] for b in m.buckets],
    }


def latency_text(latency: Sequence[Any]) -> str:
    """Time the server spent per method since it started (p50 and p99 estimated from its histogram)."""
    rows = [["METHOD (server side)", "CALLS", "ERRORS", "P50 ms", "P99 ms", "MAX ms"]]
    rows.append(["-" * len(h) for h in rows[0]])
    for m in latency:
        rows.append(
            [m.method, str(m.count), str(m.errors), f"{m.p50_ms:.2f}", f"{m.p99_ms:.2f}", f"{m.max_ms:.2f}"]
        )
    return table(rows)


def status_text(s: Any) -> str:
    d = status_dict(s)
    rows = [
        ["controller", f"fm-controller {d['version']}, up {d['uptime_s']:.0f} s"],
        ["health", "SERVING" if s.serving else "NOT_SERVING"],
        ["fabricmanager", f"{s.fm_address} ({'connected' if s.fm_connected else 'not connected'})"],
        ["library", s.library + (f" (fmConnectParams v{s.connect_version})" if s.connect_version else "")],
        ["active partitions", ids_text(s.active_ids) or "none"],
        ["persisted", f"{ids_text(s.persisted_ids) or 'none'} in {s.state_path}"],
        ["restores", str(s.restores)],
    ]
    if s.last_error:
        rows.append(["last error", s.last_error])
    text = table(rows)
    return text + "\n" + latency_text(s.latency) if s.latency else text


def failed_dict(f: Any) -> dict[str, Any]:
    return {"uuid": f.uuid, "pci_bus_id": f.pci_bus_id, "ports": list(f.ports)}


def failed_text(found: Any) -> str:
    if not found.gpus and not found.switches:
        return "no GPU or NVSwitch has failed NVLinks\n"
    rows = [
        ["DEVICE", "UUID", "PCI BUS ID", "FAILED PORTS"],
        ["------", "----", "----------", "------------"],
    ]
    for kind, devices in (("GPU", found.gpus), ("NVSwitch", found.switches)):
        for d in devices:
            rows.append([kind, d.uuid or "-", d.pci_bus_id or "-", ids_text(d.ports)])
    return table(rows)


def unsupported_text(found: Any) -> str:
    if not found.partitions:
        return "no unsupported partitions\n"
    rows = [["PARTITION ID", "GPU PHYSICAL IDs"], ["------------", "----------------"]]
    rows += [[str(p.id), ids_text(p.gpu_physical_ids)] for p in found.partitions]
    return table(rows)


def event_dict(pb: Any, e: Any) -> dict[str, Any]:
    return {
        "kind": pb.Event.Kind.Name(e.kind),
        "seq": e.seq,
        "time": e.time,
        "partition_id": e.partition_id,
        "active_ids": list(e.active_ids),
        "serving": e.serving,
        "message": e.message,
    }


# --- connection ----------------------------------------------------------------------------------


class UsageError(ValueError):
    pass


@contextmanager
def channel(address: endpoints.Endpoint, args: argparse.Namespace) -> Iterator[Any]:
    """A gRPC channel to fm-controller; vsock goes through a private unix socket and a bridge."""
    import grpc

    if address.kind == "vsock":
        with tempfile.TemporaryDirectory(prefix="fmctl-") as tmp:
            path = os.path.join(tmp, "vsock.sock")
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(path)
            listener.listen(4)
            link = bridge.Bridge(
                listener, bridge.vsock_connector(address.cid, address.port, args.timeout)
            ).start()
            try:
                with grpc.insecure_channel(f"unix:{path}") as ch:
                    yield ch
            finally:
                link.close()
        return
    if address.kind == "tcp" and any((args.tls_cert, args.tls_key, args.tls_ca)):
        try:
            creds = grpc.ssl_channel_credentials(
                root_certificates=Path(args.tls_ca).read_bytes() if args.tls_ca else None,
                private_key=Path(args.tls_key).read_bytes() if args.tls_key else None,
                certificate_chain=Path(args.tls_cert).read_bytes() if args.tls_cert else None,
            )
        except OSError as exc:
            raise UsageError(f"TLS file {exc.filename}: {exc.strerror}") from None
        with grpc.secure_channel(address.grpc_target, creds) as ch:
            yield ch
        return
    with grpc.insecure_channel(address.grpc_target) as ch:
        yield ch


# --- commands ------------------------------------------------------------------------------------


def run(args: argparse.Namespace, stub: Any, pb: Any, out: TextIO) -> int:
    t = args.timeout
    cmd = args.command

    def emit(data: Any, text: str) -> None:
        out.write(json.dumps(data, indent=2) + "\n" if args.json else text)

    if cmd == "list":
        r = stub.ListPartitions(pb.ListPartitionsRequest(), timeout=t)
        emit({"partitions": [partition_dict(p) for p in r.partitions]}, list_text(r.partitions))
    elif cmd == "info":
        p = stub.GetPartition(pb.PartitionRequest(id=args.id), timeout=t)
        emit(partition_dict(p), info_text(p))
    elif cmd in ("activate", "deactivate"):
        call = stub.ActivatePartition if cmd == "activate" else stub.DeactivatePartition
        r = call(pb.PartitionRequest(id=args.id), timeout=t)
        data = {
            "partition": partition_dict(r.partition),
            "changed": r.changed,
            "message": r.message,
            "active_ids": list(r.active_ids),
        }
        emit(data, r.message + "\n")
    elif cmd == "set-activated":
        r = stub.SetActivatedPartitions(pb.SetActivatedRequest(ids=args.ids), timeout=t)
        ids = list(r.active_ids)
        emit({"active_ids": ids}, f"fabricmanager now has partitions [{ids_text(ids)}] active\n")
    elif cmd == "failed-devices":
        r = stub.GetNvlinkFailedDevices(pb.Empty(), timeout=t)
        emit(
            {"gpus": [failed_dict(d) for d in r.gpus], "switches": [failed_dict(d) for d in r.switches]},
            failed_text(r),
        )
    elif cmd == "unsupported":
        r = stub.GetUnsupportedPartitions(pb.Empty(), timeout=t)
        data = {
            "partitions": [{"id": p.id, "gpu_physical_ids": list(p.gpu_physical_ids)} for p in r.partitions]
        }
        emit(data, unsupported_text(r))
    elif cmd == "status":
        s = stub.GetStatus(pb.Empty(), timeout=t)
        emit(status_dict(s), status_text(s))
        return 0 if s.serving else EXIT_CODES["UNAVAILABLE"]
    elif cmd == "watch":
        for e in stub.Watch(pb.WatchRequest()):
            d = event_dict(pb, e)
            if args.json:
                out.write(json.dumps(d) + "\n")
            else:
                out.write(
                    f"{d['seq']:>5} {d['kind']:<15} active [{ids_text(d['active_ids'])}] {d['message']}\n"
                )
            out.flush()
    return 0


def _partition_id(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a partition id (a number, see `fmctl list`)")
    return int(text)


@dataclass(frozen=True)
class Command:
    name: str
    summary: str  # its line in `fmctl --help`
    description: str  # `fmctl NAME --help`: whole sentences
    ids: str = ""  # "": no id; "one": ID; "many": ID...


COMMANDS: tuple[Command, ...] = (
    Command(
        "list",
        "every partition",
        "List every partition that fabricmanager supports: its id, whether it is active, its GPUs "
        "and its NVLinks.",
    ),
    Command(
        "status",
        "the controller, its link to fabricmanager and its latency",
        "Show fm-controller's state: its health, its link to fabricmanager, the active and persisted "
        "partitions, and the time its server spends on each method (calls, p50, p99). The exit "
        "status is 3 when the controller is not serving.",
    ),
    Command("info", "one partition and its GPUs", "Show one partition and each of its GPUs.", "one"),
    Command(
        "activate",
        "activate a partition",
        "Activate a partition. An active partition stays as it is (exit status 0); one that shares "
        "a GPU with an active partition is refused (exit status 5), naming that partition.",
        "one",
    ),
    Command(
        "deactivate",
        "deactivate a partition",
        "Deactivate a partition. One that is not active stays as it is (exit status 0).",
        "one",
    ),
    Command(
        "set-activated",
        "tell a restarted fabricmanager which partitions are active",
        "Tell fabricmanager, restarted in restart mode, which partitions are active: each id once, "
        "or none for an empty set. fm-controller does this by itself after such a restart, and "
        "fabricmanager refuses it at any other time.",
        "many",
    ),
    Command(
        "failed-devices",
        "GPUs and NVSwitches with failed NVLinks",
        "List the GPUs and NVSwitches that have failed NVLinks, with their failed ports.",
    ),
    Command(
        "unsupported",
        "partitions this system cannot support now",
        "List the partitions that this system cannot support now (one of their GPUs is missing, "
        "for example), with their GPUs.",
    ),
    Command(
        "watch",
        "print changes as they happen",
        "Print the current state, then each change as it happens (activations, deactivations, "
        "fabricmanager lost and back, partitions restored after its restart) until interrupted.",
    ),
)


def exit_codes_text() -> str:
    by_code: dict[int, list[str]] = {}
    for name, code in EXIT_CODES.items():
        by_code.setdefault(code, []).append(name)
    return "; ".join(f"{code} {', '.join(names)}" for code, names in sorted(by_code.items()))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fmctl",
        description="Partition the NVLink fabric through fm-controller.",
        epilog=f"ADDRESS is {endpoints.CLIENT_FORMS}. Exit status by outcome: {exit_codes_text()}.",
    )
    p.add_argument(
        "--address",
        default=os.environ.get("FMCTL_ADDRESS", f"unix:{endpoints.DEFAULT_SOCKET}"),
        help="where fm-controller listens (default: $FMCTL_ADDRESS or %(default)s)",
    )
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.add_argument(
        "--timeout", type=float, default=30.0, metavar="S", help="seconds per call (default: %(default)s)"
    )
    p.add_argument("--tls-cert", metavar="FILE", help="client certificate (PEM) for tcp: with mutual TLS")
    p.add_argument("--tls-key", metavar="FILE", help="client private key (PEM)")
    p.add_argument("--tls-ca", metavar="FILE", help="CA (PEM) of the server's certificate")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for c in COMMANDS:
        sp = sub.add_parser(c.name, help=c.summary, description=c.description)
        if c.ids == "one":
            sp.add_argument("id", type=_partition_id, metavar="ID", help="a partition id (see fmctl list)")
        elif c.ids == "many":
            sp.add_argument("ids", type=_partition_id, nargs="*", metavar="ID", help="partition ids")
    return p


def main(argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    import grpc

    out = out or sys.stdout
    err = err or sys.stderr
    args = parser().parse_args(argv)

    def say(text: str) -> None:
        print(f"fmctl: {text}", file=err)

    try:
        address = endpoints.parse_client(args.address)
        pb = api.messages()
        with channel(address, args) as ch:
            stub = api.services().FabricControllerStub(ch)
            return run(args, stub, pb, out)
    except (endpoints.EndpointError, UsageError) as exc:
        say(str(exc))
        return EXIT_CODES["USAGE"]
    except api.ApiMissing as exc:
        say(str(exc))
        return EXIT_CODES["INTERNAL"]
    except grpc.RpcError as exc:
        code = exc.code()
        details = exc.details()
        if code == grpc.StatusCode.UNAVAILABLE and "connect" in (details or "").lower():
            say(f"cannot reach fm-controller at {args.address}: {details}")
        else:
            say(details or code.name)
        return exit_code(code.name)
    except KeyboardInterrupt:
        return EXIT_CODES["CANCELLED"]


if __name__ == "__main__":
    sys.exit(main())
