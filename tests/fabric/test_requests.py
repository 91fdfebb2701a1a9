"""Request validation (guestinit.fabric.validate) and bounded status messages
(guestinit.fabric.statuses): unit checks, then the real fm-controller refusing bad requests."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from fabric_harness import ControllerProcess, FakeFabricManager, stub

from guestinit.fabric import api, statuses, validate
from guestinit.fabric.validate import InvalidRequest


@pytest.fixture(scope="module")
def pb() -> Any:
    return api.messages()


def test_every_request_type_of_the_service_has_a_check(pb: Any) -> None:
    service = pb.DESCRIPTOR.services_by_name["FabricController"]
    inputs = {m.input_type.full_name for m in service.methods}
    assert inputs <= set(validate.CHECKS)
    with pytest.raises(TypeError, match="not a request"):
        validate.validate(pb.Partition())


def test_partition_request_needs_its_id(pb: Any) -> None:
    with pytest.raises(InvalidRequest, match=r"names no partition id.*regenerate"):
        validate.validate(pb.PartitionRequest())
    assert validate.validate(pb.PartitionRequest(id=0)) == (0,)
    assert validate.validate(pb.PartitionRequest(id=63)) == (63,)
    with pytest.raises(InvalidRequest, match="partition id 64 out of range: partition ids are 0-63"):
        validate.validate(pb.PartitionRequest(id=64))


def test_field_presence_is_wire_compatible(pb: Any) -> None:
    """The bytes a client of the plain ``uint32 id = 1`` sends: 5 is 08 05, 0 is nothing at all."""
    assert validate.validate(pb.PartitionRequest.FromString(b"\x08\x05")) == (5,)
    assert pb.PartitionRequest(id=5).SerializeToString() == b"\x08\x05"
    assert pb.PartitionRequest(id=0).SerializeToString() == b"\x08\x00"
    with pytest.raises(InvalidRequest):
        validate.validate(pb.PartitionRequest.FromString(b""))


def test_set_activated_ids(pb: Any) -> None:
    assert validate.validate(pb.SetActivatedRequest()) == ()
    assert validate.validate(pb.SetActivatedRequest(ids=[5, 1, 3])) == (5, 1, 3)
    with pytest.raises(InvalidRequest, match=r"partition ids repeat: 1,3; name each partition once"):
        validate.validate(pb.SetActivatedRequest(ids=[1, 3, 1, 2, 3]))
    with pytest.raises(InvalidRequest, match="65 partition ids; fabricmanager takes at most 64"):
        validate.validate(pb.SetActivatedRequest(ids=range(65)))
    assert validate.validate(pb.SetActivatedRequest(ids=range(64))) == tuple(range(64))
    with pytest.raises(InvalidRequest, match=r"partition ids 64,4294967295 out of range"):
        validate.validate(pb.SetActivatedRequest(ids=[1, 64, 2**32 - 1]))


def test_messages_about_many_ids_stay_short(pb: Any) -> None:
    with pytest.raises(InvalidRequest) as info:
        validate.validate(pb.SetActivatedRequest(ids=[7] * 1000))
    assert len(str(info.value)) < 200
    repeated = [i for i in range(40) for _ in (0, 1)]
    with pytest.raises(InvalidRequest, match=r"repeat: 0,1,2,3,4,5,6,7,\.\.\. \(and 32 more\)") as info:
        validate.validate(pb.SetActivatedRequest(ids=repeated))
    assert validate.ids_preview([1, 2]) == "1,2"


@pytest.mark.parametrize("text", ["", "short", "x" * 400, "x" * 401, "é" * 1000, "a" + "€" * 5000])
def test_bounded_messages(text: str) -> None:
    out = statuses.bounded(text)
    assert len(out.encode()) <= statuses.MAX_DETAILS
    if len(text.encode()) <= statuses.MAX_DETAILS:
        assert out == text
    else:
        kept, _, note = out.rpartition(" ... (")
        assert text.startswith(kept) and len(kept.encode()) > statuses.MAX_DETAILS // 2
        assert note == f"{len(text.encode()) - len(kept.encode())} bytes left out)"


def _error(call: Any, request: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=5)
    return info.value


def test_the_controller_refuses_bad_requests(controller: ControllerProcess, fm: FakeFabricManager) -> None:
    with stub(controller.address) as (s, pb):
        for call in (s.ActivatePartition, s.DeactivatePartition, s.GetPartition):
            e = _error(call, pb.PartitionRequest())
            assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "names no partition id" in e.details()
        e = _error(s.SetActivatedPartitions, pb.SetActivatedRequest(ids=[1] * 1000))
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "partition ids repeat: 1;" in e.details()
        e = _error(s.SetActivatedPartitions, pb.SetActivatedRequest(ids=range(1000, 3000)))
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and len(e.details()) <= statuses.MAX_DETAILS
        e = _error(s.ActivatePartition, pb.PartitionRequest(id=2**32 - 1))
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "out of range" in e.details()
        assert s.ActivatePartition(pb.PartitionRequest(id=0), timeout=5).changed  # 0 is a real id
        status = s.GetStatus(pb.Empty(), timeout=5)
    assert fm.active() == [0] and list(status.active_ids) == [0]
