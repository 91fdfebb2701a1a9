"""The controller's core, free of gRPC: one connection to fabricmanager through libnvfm, every SDK
call serialized, partition semantics the host can rely on, and resiliency.

- Activating an active partition succeeds with ``changed=False``; one sharing a GPU with an active
  partition is refused, naming that partition. Deactivating an inactive one succeeds unchanged.
- The active set is persisted (:mod:`guestinit.fabric.state`) after every change.
- A monitor thread notices a lost fabricmanager (its connection fails), reconnects, and when
  fabricmanager came back in restart mode (it refuses the partition list) re-sends the persisted set
  with fmSetActivatedFabricPartitions, well inside fabricmanager's 60 s window.
- A restarted controller loads the persisted set and, when fabricmanager kept running, adopts
  fabricmanager's own view.
- fabricmanager's partition table is kept as last read or changed through the controller, and
  refreshed by every monitor check. Reads (ListPartitions, GetPartition) are answered from it
  without waiting for the SDK, so they never queue behind changes; a change made around the
  controller (fmpm) shows within one poll interval. A change is always made, and a no-op or a
  refusal always decided, on fabricmanager's own answer or a table read at that moment.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from guestinit.fabric import nvfm
from guestinit.fabric.events import (
    ACTIVATED,
    CHANGED_OUTSIDE,
    DEACTIVATED,
    FM_CONNECTED,
    FM_LOST,
    RESTORED,
    SET_ACTIVATED,
    SNAPSHOT,
    Event,
    Events,
)
from guestinit.fabric.state import StateFile

T = TypeVar("T")


class Refused(Exception):
    """A request the controller turns down; ``status`` names the grpc.StatusCode to answer with."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Change:
    partition: nvfm.Partition
    changed: bool
    message: str
    active_ids: tuple[int, ...]


@dataclass
class Status:
    serving: bool
    fm_connected: bool
    fm_address: str
    library: str
    connect_version: int
    active_ids: tuple[int, ...]
    persisted_ids: tuple[int, ...]
    state_path: str
    last_error: str
    restores: int
    uptime_s: float
    extra: dict[str, str] = field(default_factory=dict)


def overlapping(table: nvfm.PartitionTable, wanted: nvfm.Partition) -> nvfm.Partition | None:
    """The first active partition that shares a GPU with ``wanted`` (not ``wanted`` itself)."""
    mine = set(wanted.physical_ids)
    for p in table.partitions:
        if p.active and p.id != wanted.id and mine & set(p.physical_ids):
            return p
    return None


def _ids(ids: Iterable[int]) -> str:
    return ",".join(str(i) for i in ids)


class Manager:
    def __init__(
        self,
        library_path: str,
        address: nvfm.FMAddress,
        state: StateFile,
        *,
        poll_s: float = 1.0,
        connect_timeout_ms: int = 2000,
        on_serving: Callable[[bool], None] | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.library_path = library_path
        self.address = address
        self.state = state
        self.poll_s = poll_s
        self.connect_timeout_ms = connect_timeout_ms
        self._on_serving = on_serving
        self._log = log or (lambda text: None)
        self._lock = threading.RLock()  # serializes every SDK call and every change of the fields below
        self._library: nvfm.Library | None = None
        self._conn: nvfm.Connection | None = None
        self._synced = False
        self._serving = False
        self._table: nvfm.PartitionTable | None = None  # fabricmanager's table, None when not known
        self._active: tuple[int, ...] = state.load()
        self._version = 0  # bumped whenever _active changes
        self._durable = 0  # the version last written to the state file
        self._persist_lock = threading.Lock()
        self.last_error = ""
        self.restores = 0
        self.events = Events()
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Try once now, then keep checking in the background."""
        self.check()
        self._thread = threading.Thread(target=self._monitor, name="fm-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            self._drop("controller stopping", publish=False)
            if self._library is not None and self._library.initialized:
                try:
                    self._library.shutdown()
                except nvfm.FMError:
                    pass

    def _monitor(self) -> None:
        while True:
            # Reconnect quickly while out of step (fabricmanager's restart window is 60 s).
            interval = self.poll_s if self._synced else min(self.poll_s, 0.1)
            if self._stop.wait(interval):
                return
            self.check()

    def check(self) -> None:
        """One monitor step: connect, restore after a restart, notice changes made around us."""
        with self._lock:
            try:
                conn = self._connection()
                if not self._synced:
                    self._sync(conn)
                else:
                    table = self._read(conn)
                    self._adopt(table, "fabricmanager's active partitions changed outside the controller")
            except nvfm.ConnectionNotValid as exc:
                self._drop(str(exc))
            except nvfm.LibraryError as exc:
                self._note_error(str(exc))
            except nvfm.NotConfigured as exc:
                self._note_error(f"fabricmanager not ready: {exc}")
            except nvfm.FMError as exc:
                self._note_error(str(exc))
                if isinstance(exc, nvfm.Timeout):
                    self._drop(str(exc))

    # --- connection (lock held) --------------------------------------------------------------

    def _note_error(self, text: str) -> None:
        if text != self.last_error:
            self._log(text)
        self.last_error = text

    def _set_serving(self, serving: bool) -> None:
        if serving != self._serving:
            self._serving = serving
            if self._on_serving is not None:
                self._on_serving(serving)

    def _connection(self) -> nvfm.Connection:
        if self._conn is not None:
            return self._conn
        if self._library is None:
            library = nvfm.Library(self.library_path)
            try:
                library.init()
            except nvfm.InUse:
                library.initialized = True  # already initialized in this process
            self._library = library
        self._conn = self._library.connect(self.address, self.connect_timeout_ms)
        self._synced = False
        self._log(
            f"connected to fabricmanager at {self.address} (fmConnectParams v{self._conn.connect_version})"
        )
        self.events.publish(FM_CONNECTED, self._active, self._serving, message=f"connected to {self.address}")
        return self._conn

    def _drop(self, why: str, publish: bool = True) -> None:
        conn, self._conn = self._conn, None
        self._table = None
        if conn is not None:
            try:
                conn.disconnect()
            except nvfm.FMError:
                pass
        was_synced, self._synced = self._synced, False
        self._set_serving(False)
        if conn is not None:
            self._note_error(f"lost fabricmanager: {why}")
            if publish and was_synced:
                self.events.publish(FM_LOST, self._active, False, message=why)

    def _remember(self, active: Iterable[int]) -> int:
        """Record a new active set (lock held); returns the version to make durable."""
        ids = tuple(sorted(set(active)))
        if ids != self._active:
            self._active = ids  # before the version: whoever sees version v sees a set at least that new
            self._version += 1
        return self._version

    def _persist(self, version: int, force: bool = False) -> None:
        """Make the active set durable up to ``version``. Runs outside the SDK lock, so reads do not
        wait for fsync, and changes that arrive together share one write (group commit)."""
        with self._persist_lock:
            if self._durable >= version and not force:
                return
            current = self._version
            self.state.save(self._active)
            self._durable = current

    def _adopt(self, table: nvfm.PartitionTable, why: str) -> None:
        if table.active_ids != self._active:
            message = f"{why}: was [{_ids(self._active)}], now [{_ids(table.active_ids)}]"
            self._log(message)
            self._persist(self._remember(table.active_ids))
            self.events.publish(CHANGED_OUTSIDE, self._active, self._serving, message=message)

    def _sync(self, conn: nvfm.Connection) -> nvfm.PartitionTable:
        """Bring the controller and fabricmanager into step; raises NotConfigured while it starts."""
        try:
            table = self._read(conn)
        except nvfm.NotConfigured:
            # Initializing, or restarted in restart mode and waiting for the activated set.
            try:
                conn.set_activated(self._active)
            except nvfm.NotSupported:
                raise nvfm.NotConfigured(
                    "fmGetSupportedFabricPartitions", "fabricmanager is initializing"
                ) from None
            except nvfm.BadParam as exc:
                self._note_error(
                    f"fabricmanager refused the persisted partitions [{_ids(self._active)}]: {exc}"
                )
                raise
            self.restores += 1
            message = f"re-sent activated partitions [{_ids(self._active)}] after fabricmanager restarted"
            self._log(message)
            self.events.publish(RESTORED, self._active, True, message=message)
            table = self._read(conn)
        self._adopt(table, "fabricmanager's active partitions differ from the persisted set")
        if not self.state.path.exists():
            self._persist(self._version, force=True)
        self._synced = True
        self.last_error = ""
        self._set_serving(True)
        return table

    def _with_fm(self, fn: Callable[[nvfm.Connection], T], sync: bool = True) -> T:
        with self._lock:
            for attempt in (1, 2):
                try:
                    conn = self._connection()
                    if sync and not self._synced:
                        self._sync(conn)
                    return fn(conn)
                except nvfm.ConnectionNotValid as exc:
                    self._drop(str(exc))
                    if attempt == 2:
                        raise
                except nvfm.LibraryError as exc:
                    self._note_error(str(exc))
                    raise Refused("UNAVAILABLE", str(exc)) from None
        raise AssertionError("not reached")

    # --- operations --------------------------------------------------------------------------

    def _read(self, conn: nvfm.Connection) -> nvfm.PartitionTable:
        """fabricmanager's table, read now and kept (lock held)."""
        self._table = conn.partitions()
        return self._table

    def _known(self) -> nvfm.PartitionTable | None:
        """The kept table while in step with fabricmanager (no lock: a reference read)."""
        table = self._table
        return table if self._synced else None

    def table(self) -> nvfm.PartitionTable:
        return self._known() or self._with_fm(self._read)

    def _find(
        self, conn: nvfm.Connection, partition_id: int, fresh: bool = False
    ) -> tuple[nvfm.PartitionTable, nvfm.Partition]:
        """fabricmanager's table (the kept one unless ``fresh``, or it lacks the partition) and the
        partition in it; Refused (with the reason) if absent (lock held)."""
        table = self._table
        if fresh or table is None or table.get(partition_id) is None:
            table = self._read(conn)
        found = table.get(partition_id)
        if found is None:
            raise self._unknown(conn, partition_id, table)
        return table, found

    def _unknown(self, conn: nvfm.Connection, partition_id: int, table: nvfm.PartitionTable) -> Refused:
        try:
            unsupported = {u.id: u for u in conn.unsupported_partitions()}
        except nvfm.FMError:
            unsupported = {}
        if partition_id in unsupported:
            gpus = _ids(unsupported[partition_id].physical_ids)
            return Refused(
                "FAILED_PRECONDITION",
                f"partition {partition_id} (GPUs {gpus}) is unsupported on this system now; "
                "see `fmctl unsupported`",
            )
        known = _ids(p.id for p in table.partitions)
        return Refused("NOT_FOUND", f"partition {partition_id} does not exist; partitions here: {known}")

    def partition(self, partition_id: int) -> nvfm.Partition:
        known = self._known()
        found = known.get(partition_id) if known is not None else None
        if found is not None:
            return found

        def op(conn: nvfm.Connection) -> nvfm.Partition:
            return self._find(conn, partition_id)[1]

        return self._with_fm(op)

    def activate(self, partition_id: int) -> Change:
        version = 0

        def op(conn: nvfm.Connection) -> Change:
            nonlocal version
            table, wanted = self._find(conn, partition_id)
            if wanted.active or overlapping(table, wanted) is not None:
                table, wanted = self._find(conn, partition_id, fresh=True)  # no-ops and refusals: as of now
            if wanted.active:
                return Change(wanted, False, f"partition {partition_id} is already active", table.active_ids)
            blocker = overlapping(table, wanted)
            if blocker is None:
                try:
                    conn.activate(partition_id)
                except nvfm.InUse as exc:
                    table = self._read(conn)
                    now = table.get(partition_id)
                    if now is not None and now.active:
                        return Change(
                            now, False, f"partition {partition_id} is already active", table.active_ids
                        )
                    blocker = overlapping(table, wanted)
                    if blocker is None:
                        raise Refused("FAILED_PRECONDITION", f"partition {partition_id}: {exc}") from None
            if blocker is not None:
                shared = _ids(sorted(set(wanted.physical_ids) & set(blocker.physical_ids)))
                raise Refused(
                    "FAILED_PRECONDITION",
                    f"partition {partition_id} overlaps active partition {blocker.id} (GPUs {shared}); "
                    f"deactivate partition {blocker.id} first (FM_ST_IN_USE)",
                )
            self._table = table.with_active(partition_id, True)
            active = self._table.active_ids
            version = self._remember(active)
            self.events.publish(
                ACTIVATED, active, self._serving, partition_id, f"partition {partition_id} activated"
            )
            done = dataclasses.replace(wanted, active=True)
            return Change(done, True, f"partition {partition_id} activated", active)

        change = self._with_fm(op)
        self._persist(version)
        return change

    def deactivate(self, partition_id: int) -> Change:
        version = 0

        def op(conn: nvfm.Connection) -> Change:
            nonlocal version
            table, wanted = self._find(conn, partition_id)
            if not wanted.active:
                table, wanted = self._find(conn, partition_id, fresh=True)
                if not wanted.active:
                    return Change(wanted, False, f"partition {partition_id} is not active", table.active_ids)
            try:
                conn.deactivate(partition_id)
            except nvfm.Uninitialized:  # documented answer for "not active": someone beat us to it
                table = self._read(conn)
                self._adopt(table, "a partition was deactivated outside the controller")
                return Change(wanted, False, f"partition {partition_id} is not active", table.active_ids)
            self._table = table.with_active(partition_id, False)
            active = self._table.active_ids
            version = self._remember(active)
            message = f"partition {partition_id} deactivated"
            self.events.publish(DEACTIVATED, active, self._serving, partition_id, message)
            return Change(dataclasses.replace(wanted, active=False), True, message, active)

        change = self._with_fm(op)
        self._persist(version)
        return change

    def set_activated(self, partition_ids: Iterable[int]) -> tuple[int, ...]:
        ids = tuple(partition_ids)  # validated: each once, at most FM_MAX_FABRIC_PARTITIONS

        def op(conn: nvfm.Connection) -> tuple[int, ...]:
            try:
                conn.set_activated(ids)
            except nvfm.NotSupported:
                raise Refused(
                    "FAILED_PRECONDITION",
                    "fabricmanager is not waiting for the activated set: it takes it only after restarting "
                    "in restart mode, and the controller re-sends it by itself (FM_ST_NOT_SUPPORTED)",
                ) from None
            self._remember(ids)
            self._table = None  # read again when next needed: fabricmanager has just taken the set
            self._synced = True
            self._set_serving(True)
            self.events.publish(
                SET_ACTIVATED, self._active, True, message=f"activated set [{_ids(ids)}] sent"
            )
            return self._active

        active = self._with_fm(op, sync=False)
        self._persist(self._version)
        return active

    def failed_devices(self) -> nvfm.FailedDevices:
        return self._with_fm(lambda conn: conn.nvlink_failed_devices())

    def unsupported(self) -> tuple[nvfm.UnsupportedPartition, ...]:
        return self._with_fm(lambda conn: conn.unsupported_partitions())

    # --- views -------------------------------------------------------------------------------

    @property
    def serving(self) -> bool:
        return self._serving

    def snapshot(self) -> Event:
        with self._lock:
            return Event(SNAPSHOT, 0, time.time(), self._active, self._serving, message="current state")

    def status(self) -> Status:
        with self._lock:
            loaded = self._library
            library = loaded.path if loaded is not None else f"{self.library_path} (not loaded)"
            conn = self._conn
            return Status(
                serving=self._serving,
                fm_connected=conn is not None,
                fm_address=str(self.address),
                library=library,
                connect_version=conn.connect_version if conn is not None else 0,
                active_ids=self._active,
                persisted_ids=self.state.load(),
                state_path=str(self.state.path),
                last_error=self.last_error,
                restores=self.restores,
                uptime_s=time.monotonic() - self._started,
            )
