"""50 concurrent clients activating and deactivating overlapping partitions through fm-controller:
never two overlapping partitions active, and the final state everywhere equal to the fake's.
Prints p50/p99 latency of ListPartitions and ActivatePartition (no timed assertion)."""

from __future__ import annotations

import json

from fabric_harness import ControllerProcess, FakeFabricManager, concurrent_workload, replay_fake_log, stub
from test_nvfm import H100


def test_fifty_concurrent_clients(controller: ControllerProcess, fm: FakeFabricManager) -> None:
    result = concurrent_workload(controller.address, clients=50, rounds=6)
    print("\nfm-controller under 50 concurrent clients:", json.dumps(result["latency"]), result["outcomes"])
    assert result["errors"] == []
    outcomes = result["outcomes"]
    assert outcomes.get("ActivatePartition:changed", 0) > 0
    assert outcomes.get("ActivatePartition:FAILED_PRECONDITION", 0) > 0  # overlaps were refused
    final, overlapping_pairs = replay_fake_log(fm.log(), H100)
    assert overlapping_pairs == 0
    with stub(controller.address) as (s, pb):
        listed = [
            p.id for p in s.ListPartitions(pb.ListPartitionsRequest(), timeout=5).partitions if p.active
        ]
        status = s.GetStatus(pb.Empty(), timeout=5)
    assert (
        final
        == fm.active()
        == listed
        == list(status.active_ids)
        == json.loads(controller.state.read_text())["active"]
    )
    activations = sum(1 for line in fm.log().splitlines() if line.endswith(" activated"))
    assert activations == outcomes.get("ActivatePartition:changed", 0)
