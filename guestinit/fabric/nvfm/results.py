"""What the SDK's calls return, as plain frozen dataclasses (no ctypes in them)."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Gpu:
    physical_id: int
    uuid: str
    pci_bus_id: str
    nvlinks_available: int
    max_nvlinks: int
    nvlink_line_rate_mbps: int


@dataclass(frozen=True)
class Partition:
    id: int
    active: bool
    gpus: tuple[Gpu, ...]

    @property
    def physical_ids(self) -> tuple[int, ...]:
        return tuple(g.physical_id for g in self.gpus)

    @property
    def nvlinks(self) -> int:
        return sum(g.nvlinks_available for g in self.gpus)


@dataclass(frozen=True)
class PartitionTable:
    partitions: tuple[Partition, ...]
    max_partitions: int

    def get(self, partition_id: int) -> Partition | None:
        for p in self.partitions:
            if p.id == partition_id:
                return p
        return None

    @property
    def active_ids(self) -> tuple[int, ...]:
        return tuple(sorted(p.id for p in self.partitions if p.active))

    def with_active(self, partition_id: int, active: bool) -> PartitionTable:
        """This table with one partition's state changed (as fabricmanager now has it)."""
        parts = tuple(replace(p, active=active) if p.id == partition_id else p for p in self.partitions)
        return PartitionTable(parts, self.max_partitions)


@dataclass(frozen=True)
class FailedDevice:
    uuid: str
    pci_bus_id: str
    ports: tuple[int, ...]


@dataclass(frozen=True)
class FailedDevices:
    gpus: tuple[FailedDevice, ...]
    switches: tuple[FailedDevice, ...]


@dataclass(frozen=True)
class UnsupportedPartition:
    id: int
    physical_ids: tuple[int, ...]
