"""guestinit.fabric.v1.FabricController over a :class:`~guestinit.fabric.manager.Manager`: each
request validated (:mod:`guestinit.fabric.validate`), the manager's answer turned into protobuf,
and every failure into a gRPC status with a bounded message (:mod:`guestinit.fabric.statuses`)."""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterator
from typing import Any, NoReturn, TypeVar

from guestinit import __version__
from guestinit.fabric import api, nvfm, statuses
from guestinit.fabric.events import Event
from guestinit.fabric.latency import Latencies, Summary
from guestinit.fabric.manager import Change, Manager, Refused
from guestinit.fabric.validate import InvalidRequest, validate

T = TypeVar("T")

MAX_WATCHERS = 32


# --- protobuf conversions ------------------------------------------------------------------------


def partition_pb(pb: Any, p: nvfm.Partition) -> Any:
    gpus = [
        pb.Gpu(
            physical_id=g.physical_id,
            uuid=g.uuid,
            pci_bus_id=g.pci_bus_id,
            nvlinks_available=g.nvlinks_available,
            max_nvlinks=g.max_nvlinks,
            nvlink_line_rate_mbps=g.nvlink_line_rate_mbps,
        )
        for g in p.gpus
    ]
    return pb.Partition(id=p.id, active=p.active, gpus=gpus, nvlinks=p.nvlinks)


def change_pb(pb: Any, change: Change) -> Any:
    return pb.ChangeResponse(
        partition=partition_pb(pb, change.partition),
        changed=change.changed,
        message=change.message,
        active_ids=list(change.active_ids),
    )


def event_pb(pb: Any, event: Event) -> Any:
    return pb.Event(
        kind=pb.Event.Kind.Value(event.kind),
        seq=event.seq,
        time=event.time,
        partition_id=event.partition_id,
        active_ids=list(event.active_ids),
        message=event.message,
        serving=event.serving,
    )


def failed_pb(pb: Any, d: nvfm.FailedDevice) -> Any:
    return pb.FailedDevice(uuid=d.uuid, pci_bus_id=d.pci_bus_id, ports=list(d.ports))


def latency_pb(pb: Any, method: str, s: Summary) -> Any:
    p50, p90, p99 = (s.quantile(q) * 1000 for q in (0.5, 0.9, 0.99))
    return pb.MethodLatency(
        method=method,
        count=s.count,
        errors=s.errors,
        p50_ms=p50,
        p90_ms=p90,
        p99_ms=p99,
        max_ms=s.max_s * 1000,
        mean_ms=s.mean_s * 1000,
        buckets=[pb.LatencyBucket(le_ms=bound * 1000, count=n) for bound, n in s.buckets()],
    )


class Servicer:
    """Implements guestinit.fabric.v1.FabricController over a :class:`Manager`."""

    def __init__(self, manager: Manager, latencies: Latencies | None = None) -> None:
        self.manager = manager
        self.latencies = latencies or Latencies()
        self.pb = api.messages()

    def _fail(self, context: Any, status: str, message: str) -> NoReturn:
        statuses.abort(context, status, message)
        raise AssertionError("context.abort returned")

    def _answer(self, context: Any, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except Refused as exc:
            self._fail(context, exc.status, exc.message)
        except nvfm.FMError as exc:
            self._fail(context, statuses.status_for(exc), f"fabricmanager: {exc}")

    def _ids(self, context: Any, request: Any) -> tuple[int, ...]:
        try:
            return validate(request)
        except InvalidRequest as exc:
            self._fail(context, "INVALID_ARGUMENT", str(exc))

    def ListPartitions(self, request: Any, context: Any) -> Any:
        self._ids(context, request)
        table = self._answer(context, self.manager.table)
        return self.pb.ListPartitionsResponse(
            partitions=[partition_pb(self.pb, p) for p in table.partitions],
            max_partitions=table.max_partitions,
        )

    def GetPartition(self, request: Any, context: Any) -> Any:
        (pid,) = self._ids(context, request)
        return partition_pb(self.pb, self._answer(context, lambda: self.manager.partition(pid)))

    def ActivatePartition(self, request: Any, context: Any) -> Any:
        (pid,) = self._ids(context, request)
        return change_pb(self.pb, self._answer(context, lambda: self.manager.activate(pid)))

    def DeactivatePartition(self, request: Any, context: Any) -> Any:
        (pid,) = self._ids(context, request)
        return change_pb(self.pb, self._answer(context, lambda: self.manager.deactivate(pid)))

    def SetActivatedPartitions(self, request: Any, context: Any) -> Any:
        ids = self._ids(context, request)
        active = self._answer(context, lambda: self.manager.set_activated(ids))
        return self.pb.SetActivatedResponse(active_ids=list(active))

    def GetNvlinkFailedDevices(self, request: Any, context: Any) -> Any:
        self._ids(context, request)
        found = self._answer(context, self.manager.failed_devices)
        return self.pb.NvlinkFailedDevices(
            gpus=[failed_pb(self.pb, d) for d in found.gpus],
            switches=[failed_pb(self.pb, d) for d in found.switches],
        )

    def GetUnsupportedPartitions(self, request: Any, context: Any) -> Any:
        self._ids(context, request)
        found = self._answer(context, self.manager.unsupported)
        return self.pb.UnsupportedPartitions(
            partitions=[
                self.pb.UnsupportedPartition(id=u.id, gpu_physical_ids=list(u.physical_ids)) for u in found
            ]
        )

    def GetStatus(self, request: Any, context: Any) -> Any:
        self._ids(context, request)
        s = self.manager.status()
        return self.pb.Status(
            serving=s.serving,
            fm_connected=s.fm_connected,
            fm_address=s.fm_address,
            library=s.library,
            connect_version=s.connect_version,
            active_ids=list(s.active_ids),
            persisted_ids=list(s.persisted_ids),
            state_path=s.state_path,
            last_error=s.last_error,
            restores=s.restores,
            uptime_s=s.uptime_s,
            version=__version__,
            latency=[latency_pb(self.pb, m, summary) for m, summary in self.latencies.summaries().items()],
        )

    def Watch(self, request: Any, context: Any) -> Iterator[Any]:
        self._ids(context, request)
        events = self.manager.events
        if events.subscribers >= MAX_WATCHERS:
            self._fail(context, "RESOURCE_EXHAUSTED", f"at most {MAX_WATCHERS} Watch streams at once")
        q = events.subscribe()
        try:
            yield event_pb(self.pb, self.manager.snapshot())
            while context.is_active():
                try:
                    event = q.get(timeout=0.25)
                except queue.Empty:
                    continue
                if event is None:
                    self._fail(context, "RESOURCE_EXHAUSTED", "this Watch stream fell behind; watch again")
                yield event_pb(self.pb, event)
        finally:
            events.unsubscribe(q)
