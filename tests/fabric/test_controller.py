"""fm-controller over real gRPC against the fake fabricmanager: semantics, health, reflection,
Watch, persistence, and fabricmanager / controller restarts."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import grpc
import pytest
from fabric_harness import ControllerProcess, FakeFabricManager, stub, wait_for
from grpc_health.v1 import health_pb2, health_pb2_grpc

from guestinit.fabric import bridge, endpoints, nvfm, statuses


def _health(address: str) -> str:
    with grpc.insecure_channel(address) as ch:
        r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(r.status))


def _active(address: str) -> list[int]:
    with stub(address) as (s, pb):
        return [p.id for p in s.ListPartitions(pb.ListPartitionsRequest(), timeout=5).partitions if p.active]


def _error(call: Any, *args: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, timeout=5)
    return info.value


def test_partition_semantics(controller: ControllerProcess, fm: FakeFabricManager) -> None:
    with stub(controller.address) as (s, pb):
        listed = s.ListPartitions(pb.ListPartitionsRequest(), timeout=5)
        assert [p.id for p in listed.partitions] == list(range(15))
        r = s.ActivatePartition(pb.PartitionRequest(id=1), timeout=5)
        assert (r.changed, r.message, list(r.active_ids)) == (True, "partition 1 activated", [1])
        again = s.ActivatePartition(pb.PartitionRequest(id=1), timeout=5)
        assert (again.changed, again.message) == (False, "partition 1 is already active")
        e = _error(s.ActivatePartition, pb.PartitionRequest(id=4))
        assert e.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "overlaps active partition 1 (GPUs 2,4)" in e.details() and "FM_ST_IN_USE" in e.details()
        e = _error(s.GetPartition, pb.PartitionRequest(id=42))
        assert e.code() == grpc.StatusCode.NOT_FOUND and "partition 42 does not exist" in e.details()
        off = s.DeactivatePartition(pb.PartitionRequest(id=2), timeout=5)
        assert (off.changed, off.message) == (False, "partition 2 is not active")
        assert s.GetPartition(pb.PartitionRequest(id=1), timeout=5).active
        e = _error(s.SetActivatedPartitions, pb.SetActivatedRequest(ids=[1]))
        assert e.code() == grpc.StatusCode.FAILED_PRECONDITION and "FM_ST_NOT_SUPPORTED" in e.details()
        assert list(s.GetUnsupportedPartitions(pb.Empty(), timeout=5).partitions) == []
        assert list(s.GetNvlinkFailedDevices(pb.Empty(), timeout=5).gpus) == []
        status = s.GetStatus(pb.Empty(), timeout=5)
        assert status.serving and status.fm_connected and status.connect_version == 2
        assert list(status.active_ids) == list(status.persisted_ids) == [1]
    assert fm.active() == [1]
    assert json.loads(controller.state.read_text())["active"] == [1]
    assert _health(controller.address) == "SERVING"


def test_reflection_lists_the_services(controller: ControllerProcess) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(controller.address) as ch:
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        response = next(
            reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(iter([request]), timeout=5)
        )
    names = {s.name for s in response.list_services_response.service}
    assert {"guestinit.fabric.v1.FabricController", "grpc.health.v1.Health"} <= names


def test_watch_streams_a_snapshot_then_changes(controller: ControllerProcess) -> None:
    events: list[Any] = []
    with stub(controller.address) as (s, pb):
        stream = s.Watch(pb.WatchRequest(), timeout=10)
        events.append(next(stream))
        s.ActivatePartition(pb.PartitionRequest(id=7), timeout=5)
        s.DeactivatePartition(pb.PartitionRequest(id=7), timeout=5)
        events.append(next(stream))
        events.append(next(stream))
        stream.cancel()
        kinds = [pb.Event.Kind.Name(e.kind) for e in events]
    assert kinds == ["SNAPSHOT", "ACTIVATED", "DEACTIVATED"]
    assert [list(e.active_ids) for e in events] == [[], [7], []]
    assert events[1].partition_id == 7 and events[1].seq < events[2].seq


def test_without_fabricmanager_health_is_not_serving_then_recovers(
    fakes: tuple[Path, Path], tmp_path: Path
) -> None:
    fake = FakeFabricManager(fakes[1], tmp_path / "fm")
    ctl = ControllerProcess(fakes[0], tmp_path / "ctl", fake.address).start()
    try:
        assert _health(ctl.address) == "NOT_SERVING"
        with stub(ctl.address) as (s, pb):
            e = _error(s.ListPartitions, pb.ListPartitionsRequest())
            assert e.code() == grpc.StatusCode.UNAVAILABLE and "FM_ST_CONNECTION_NOT_VALID" in e.details()
        fake.start()
        assert wait_for(lambda: _health(ctl.address) == "SERVING", 10)
        assert len(_active(ctl.address)) == 0
    finally:
        ctl.stop()
        fake.stop()


def test_without_libnvfm_health_is_not_serving(fakes: tuple[Path, Path], tmp_path: Path) -> None:
    ctl = ControllerProcess(tmp_path / "absent" / "libnvfm.so.1", tmp_path / "ctl", "127.0.0.1:6666").start()
    try:
        assert _health(ctl.address) == "NOT_SERVING"
        with stub(ctl.address) as (s, pb):
            e = _error(s.ActivatePartition, pb.PartitionRequest(id=1))
            assert e.code() == grpc.StatusCode.UNAVAILABLE and "install NVIDIA's fabricmanager" in e.details()
            assert not s.GetStatus(pb.Empty(), timeout=5).serving
    finally:
        ctl.stop()


def test_fabricmanager_restart_in_restart_mode_gets_the_set_back(
    controller: ControllerProcess, fm: FakeFabricManager
) -> None:
    with stub(controller.address) as (s, pb):
        for pid in (3, 6, 11):
            s.ActivatePartition(pb.PartitionRequest(id=pid), timeout=5)
    fm.kill()
    assert wait_for(lambda: _health(controller.address) == "NOT_SERVING", 5)
    fm.start(restart=True, FAKE_FM_RESTART_WINDOW_MS="3000")
    assert wait_for(lambda: _health(controller.address) == "SERVING", 3)
    assert fm.proc is not None and fm.proc.poll() is None  # it got the set in time and kept running
    assert "restart complete" in fm.log()
    assert fm.active() == [3, 6, 11] == _active(controller.address)
    with stub(controller.address) as (s, pb):
        assert s.GetStatus(pb.Empty(), timeout=5).restores == 1


def test_fabricmanager_restart_without_restart_mode_is_adopted(
    controller: ControllerProcess, fm: FakeFabricManager
) -> None:
    with stub(controller.address) as (s, pb):
        s.ActivatePartition(pb.PartitionRequest(id=0), timeout=5)
    fm.kill()
    fm.start()  # a fresh start: every partition inactive
    assert wait_for(lambda: _health(controller.address) == "SERVING" and _active(controller.address) == [], 5)
    assert wait_for(lambda: json.loads(controller.state.read_text())["active"] == [], 5)
    assert "differ from the persisted set" in controller.log()


def test_controller_restart_loses_nothing(
    fakes: tuple[Path, Path], fm: FakeFabricManager, tmp_path: Path
) -> None:
    ctl = ControllerProcess(fakes[0], tmp_path / "ctl", fm.address).start()
    with stub(ctl.address) as (s, pb):
        s.ActivatePartition(pb.PartitionRequest(id=1), timeout=5)
        s.ActivatePartition(pb.PartitionRequest(id=5), timeout=5)
    ctl.kill()  # SIGKILL: nothing flushed at exit
    ctl.start()
    assert _active(ctl.address) == [1, 5]
    # Both down at once: the controller comes back to a fabricmanager waiting in restart mode.
    ctl.kill()
    fm.kill()
    fm.start(restart=True, FAKE_FM_RESTART_WINDOW_MS="5000")
    ctl.start()
    assert wait_for(lambda: _health(ctl.address) == "SERVING", 5)
    assert fm.active() == [1, 5] == _active(ctl.address)
    ctl.stop()


def _run_controller(*args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "guestinit.fabric.controller", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


def test_bad_inputs_are_one_line_errors(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    state.write_text("{not json")
    r = _run_controller("--listen", f"unix:{tmp_path}/s.sock", "--state", str(state))
    assert r.returncode == 2 and "damaged" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = _run_controller("--listen", "tcp:0.0.0.0:7000", "--state", str(tmp_path / "x.json"))
    assert r.returncode == 2 and "needs mutual TLS" in r.stderr and "Traceback" not in r.stderr
    r = _run_controller("--listen", "http://x", "--state", str(tmp_path / "x.json"))
    assert r.returncode == 2 and "use vsock:PORT, unix:PATH or tcp:HOST:PORT" in r.stderr
    r = _run_controller("--fm-address", "unix:relative", "--listen", f"unix:{tmp_path}/s.sock")
    assert r.returncode == 2 and "absolute path" in r.stderr


def test_fm_status_table_covers_every_return_code() -> None:
    assert set(statuses.FM_STATUS) == set(nvfm.ERRORS.values())
    assert all(hasattr(grpc.StatusCode, name) for name in statuses.FM_STATUS.values())
    assert statuses.status_for(nvfm.InUse("x")) == "FAILED_PRECONDITION"
    assert statuses.status_for(nvfm.NotConfigured("x")) == "UNAVAILABLE"


def test_listen_addresses() -> None:
    assert str(endpoints.parse_listen("vsock:6000")) == "vsock:6000"
    assert endpoints.parse_listen("vsock:6000").cid == endpoints.VMADDR_CID_ANY
    assert endpoints.parse_listen("tcp:127.0.0.1:50051").is_loopback
    assert not endpoints.parse_listen("tcp:10.1.2.3:50051").is_loopback
    assert endpoints.parse_client("vsock:7:6000") == endpoints.Endpoint("vsock", cid=7, port=6000)
    assert endpoints.parse_client("localhost:1").grpc_target == "localhost:1"
    for bad in ("vsock:x", "unix:rel", "ftp:1", "tcp:host"):
        with pytest.raises(endpoints.EndpointError):
            endpoints.parse_listen(bad)


def test_bridge_forwards_grpc_and_enforces_the_cid_allow_list(
    controller: ControllerProcess, tmp_path: Path
) -> None:
    allow = bridge.cid_allowed([3, 7])
    assert allow((3, 1234)) and allow((7, 1)) and not allow((4, 1)) and not allow("")
    assert bridge.cid_allowed([])((99, 1))
    # AF_UNIX stands in for AF_VSOCK here (no vsock on the test machine); the peer filter sees
    # what accept() returned, as it does for vsock's (cid, port).
    seen: list[Any] = []

    def admit(peer: Any) -> bool:
        seen.append(peer)
        return admit_next.is_set()

    admit_next = threading.Event()
    admit_next.set()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / "front.sock"))
    listener.listen(8)
    link = bridge.Bridge(listener, bridge.unix_connector(str(controller.socket)), admit).start()
    try:
        assert _active(f"unix:{tmp_path}/front.sock") == []
        admit_next.clear()
        with stub(f"unix:{tmp_path}/front.sock") as (s, pb):
            e = _error(s.ListPartitions, pb.ListPartitionsRequest())
            assert e.code() == grpc.StatusCode.UNAVAILABLE
        assert link.refused >= 1 and link.accepted >= 1 and seen
    finally:
        link.close()


def test_changes_made_around_the_controller(
    controller: ControllerProcess, fm: FakeFabricManager, fakes: tuple[Path, Path]
) -> None:
    """Another SDK client (as fmpm is) changes partitions behind the controller's kept table: its
    changes, no-ops and refusals still follow fabricmanager's answer at that moment, and its
    reads show the change within a poll interval."""
    library = nvfm.Library(str(fakes[0]))
    library.init()
    outside = library.connect(nvfm.FMAddress.parse(fm.address))
    try:
        with stub(controller.address) as (s, pb):
            assert s.ActivatePartition(pb.PartitionRequest(id=7), timeout=5).changed
            outside.deactivate(7)
            r = s.ActivatePartition(pb.PartitionRequest(id=7), timeout=5)  # the table said active
            assert (r.changed, list(r.active_ids)) == (True, [7])
            outside.activate(2)  # GPUs 5-8, unknown to the controller's table
            e = _error(s.ActivatePartition, pb.PartitionRequest(id=5))
            assert e.code() == grpc.StatusCode.FAILED_PRECONDITION and "active partition 2" in e.details()
            outside.deactivate(2)
            r = s.ActivatePartition(pb.PartitionRequest(id=6), timeout=5)  # the table said 2 blocks it
            assert (r.changed, list(r.active_ids)) == (True, [6, 7])
            outside.activate(13)
            r = s.DeactivatePartition(pb.PartitionRequest(id=13), timeout=5)  # the table said inactive
            assert (r.changed, list(r.active_ids)) == (True, [6, 7])
            outside.deactivate(6)
            r = s.DeactivatePartition(pb.PartitionRequest(id=6), timeout=5)  # the table said active
            assert (r.changed, r.message) == (False, "partition 6 is not active")
            outside.activate(12)
        assert wait_for(lambda: _active(controller.address) == [7, 12], 5)
        assert fm.active() == [7, 12]
    finally:
        outside.disconnect()
        library.shutdown()
