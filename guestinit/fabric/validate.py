"""Every request fm-controller takes, checked before anything acts on it: one pure function.

:func:`validate` takes a decoded request message of the API and returns the partition ids it
names, or raises :class:`InvalidRequest` (INVALID_ARGUMENT) with a short message saying what is
wrong and what to send instead. It reads nothing but the message, so it can be fuzzed on its own.

- A PartitionRequest must carry its id (field presence: a missing id is not partition 0).
- Partition ids are below FM_MAX_FABRIC_PARTITIONS (64): fabricmanager's tables hold at most that
  many partitions, numbered from 0 (H100/H200, A100) or 1 (B200/B300).
- SetActivatedRequest names each id once (checked first), and at most FM_MAX_FABRIC_PARTITIONS ids;
  an empty list is valid (a restarted fabricmanager with nothing active).
- Requests without ids (Empty, ListPartitionsRequest, WatchRequest) are always valid.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from guestinit.fabric.nvfm.layout import FM_MAX_FABRIC_PARTITIONS

MAX_PARTITION_ID = FM_MAX_FABRIC_PARTITIONS - 1
SHOWN_IDS = 8  # ids quoted in a message, at most


class InvalidRequest(ValueError):
    """A request refused as INVALID_ARGUMENT; the message is short (a few ids at most)."""


def ids_preview(ids: Sequence[int], shown: int = SHOWN_IDS) -> str:
    """``1,2,3`` for a short list, ``1,2,...,8 (and 992 more)`` for a long one."""
    head = ",".join(str(i) for i in ids[:shown])
    return head if len(ids) <= shown else f"{head},... (and {len(ids) - shown} more)"


def _check_range(ids: Sequence[int], what: str) -> None:
    bad = [i for i in ids if not 0 <= i <= MAX_PARTITION_ID]
    if bad:
        raise InvalidRequest(
            f"{what} {ids_preview(bad)} out of range: partition ids are 0-{MAX_PARTITION_ID} "
            f"(FM_MAX_FABRIC_PARTITIONS is {FM_MAX_FABRIC_PARTITIONS}); see `fmctl list`"
        )


def partition_request(request: Any) -> tuple[int, ...]:
    if not request.HasField("id"):
        raise InvalidRequest(
            "the request names no partition id; send the id of a partition (see `fmctl list`). "
            "A client generated from a fabric.proto without field presence sends partition 0 as "
            "no id: regenerate it"
        )
    partition_id = int(request.id)
    _check_range([partition_id], "partition id")
    return (partition_id,)


def set_activated_request(request: Any) -> tuple[int, ...]:
    ids = tuple(int(i) for i in request.ids)
    repeated = sorted(i for i, n in Counter(ids).items() if n > 1)
    if repeated:
        raise InvalidRequest(f"partition ids repeat: {ids_preview(repeated)}; name each partition once")
    if len(ids) > FM_MAX_FABRIC_PARTITIONS:
        raise InvalidRequest(
            f"{len(ids)} partition ids; fabricmanager takes at most {FM_MAX_FABRIC_PARTITIONS} "
            "(FM_MAX_FABRIC_PARTITIONS)"
        )
    _check_range(ids, "partition ids")
    return ids


def no_ids(request: Any) -> tuple[int, ...]:
    return ()


# message full name -> its check; every request type of the service has one (a test checks it)
CHECKS: dict[str, Callable[[Any], tuple[int, ...]]] = {
    "guestinit.fabric.v1.PartitionRequest": partition_request,
    "guestinit.fabric.v1.SetActivatedRequest": set_activated_request,
    "guestinit.fabric.v1.Empty": no_ids,
    "guestinit.fabric.v1.ListPartitionsRequest": no_ids,
    "guestinit.fabric.v1.WatchRequest": no_ids,
}


def validate(request: Any) -> tuple[int, ...]:
    """The partition ids ``request`` names, in its order; InvalidRequest when it is not valid.
    A message type that is not a request of the API is a programming error (TypeError)."""
    name = request.DESCRIPTOR.full_name
    check = CHECKS.get(name)
    if check is None:
        raise TypeError(f"{name} is not a request of guestinit.fabric.v1.FabricController")
    return check(request)
