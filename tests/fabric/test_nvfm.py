"""The ctypes binding (guestinit.fabric.nvfm) against the documented ABI and the C test double of
libnvfm.so.1."""

from __future__ import annotations

import ctypes
import time
from pathlib import Path

import pytest
from fabric_harness import FakeFabricManager, wait_for

from guestinit.fabric import nvfm
from guestinit.fabric.nvfm import layout

# references §4: the default partitions of an 8-GPU H100/H200 baseboard and of a B200.
H100 = {
    0: (1, 2, 3, 4, 5, 6, 7, 8),
    1: (1, 2, 3, 4),
    2: (5, 6, 7, 8),
    3: (1, 3),
    4: (2, 4),
    5: (5, 7),
    6: (6, 8),
}
H100.update({6 + g: (g,) for g in range(1, 9)})
B200 = {
    1: (1, 2, 3, 4, 5, 6, 7, 8),
    2: (1, 2, 3, 4),
    3: (5, 6, 7, 8),
    4: (1, 2),
    5: (3, 4),
    6: (5, 6),
    7: (7, 8),
}
B200.update({7 + g: (g,) for g in range(1, 9)})


def test_struct_sizes_and_version_words_match_the_sdk() -> None:
    assert ctypes.sizeof(layout.FabricPartitionGpuInfo) == 128
    assert ctypes.sizeof(layout.FabricPartitionInfo) == 2060
    assert ctypes.sizeof(layout.FabricPartitionList) == 131852
    assert layout.FABRIC_PARTITION_LIST_VERSION == 0x0102030C
    assert layout.ACTIVATED_LIST_VERSION == 0x01000108
    assert layout.NVLINK_FAILED_DEVICES_VERSION == 0x010028BC
    assert layout.UNSUPPORTED_LIST_VERSION == 0x01001208
    assert layout.CONNECT_PARAMS_V1 == 0x0100010C
    assert layout.CONNECT_PARAMS_V2 == 0x02000110
    assert layout.ConnectParamsV2.addressType.offset == 268


def test_every_return_code_has_a_named_exception() -> None:
    assert sorted(nvfm.ERRORS) == list(range(-29, 0))
    assert len({cls.name for cls in nvfm.ERRORS.values()}) == 29
    for code, cls in nvfm.ERRORS.items():
        with pytest.raises(cls) as info:
            nvfm.check(code, "fmSomething")
        assert cls.name in str(info.value) and "fmSomething" in str(info.value)
    assert nvfm.ERRORS[-7] is nvfm.InUse and nvfm.ERRORS[-8] is nvfm.NotConfigured
    assert nvfm.ERRORS[-22].name == "FM_ST_NOT_READY"
    with pytest.raises(nvfm.FMError, match=r"\(-99\)"):
        nvfm.check(-99, "fmX")
    nvfm.check(0, "fmX")


@pytest.mark.parametrize(
    ("text", "kind", "info"),
    [
        ("127.0.0.1:6666", layout.ADDR_TYPE_INET, "127.0.0.1:6666"),
        ("10.0.0.1", layout.ADDR_TYPE_INET, "10.0.0.1:6666"),
        ("tcp:127.0.0.1:7000", layout.ADDR_TYPE_INET, "127.0.0.1:7000"),
        ("unix:/run/fm.sock", layout.ADDR_TYPE_UNIX, "/run/fm.sock"),
        ("/run/fm.sock", layout.ADDR_TYPE_UNIX, "/run/fm.sock"),
        ("vsock:3:6666", layout.ADDR_TYPE_VSOCK, "3:6666"),
    ],
)
def test_fm_addresses(text: str, kind: int, info: str) -> None:
    address = nvfm.FMAddress.parse(text)
    assert (address.kind, address.info) == (kind, info)


@pytest.mark.parametrize("text", ["", "unix:relative", "vsock:3", "host:notaport", "host:70000"])
def test_bad_fm_addresses_say_what_to_write(text: str) -> None:
    with pytest.raises(nvfm.AddressError, match="fabricmanager address"):
        nvfm.FMAddress.parse(text)


def test_missing_library_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(nvfm.LibraryError, match="install NVIDIA's fabricmanager"):
        nvfm.Library(str(tmp_path / "libnvfm.so.1"))


@pytest.fixture(scope="module")
def library(fakes: tuple[Path, Path]) -> nvfm.Library:
    lib = nvfm.Library(str(fakes[0]))
    lib.init()
    with pytest.raises(nvfm.InUse):  # documented: fmLibInit twice
        lib.init()
    lib.initialized = True
    return lib


def _connect(library: nvfm.Library, fm: FakeFabricManager) -> nvfm.Connection:
    conn = library.connect(nvfm.FMAddress.parse(fm.address))
    assert wait_for(lambda: _ready(conn), 5)
    return conn


def _ready(conn: nvfm.Connection) -> bool:
    try:
        conn.partitions()
    except nvfm.NotConfigured:
        return False
    return True


def test_not_configured_for_a_moment_after_start(
    library: nvfm.Library, fakes: tuple[Path, Path], tmp_path: Path
) -> None:
    fake = FakeFabricManager(fakes[1], tmp_path / "fm", FAKE_FM_INIT_MS="400").start()
    try:
        conn = library.connect(nvfm.FMAddress.parse(fake.address))
        with pytest.raises(nvfm.NotConfigured):
            conn.partitions()
        assert wait_for(lambda: _ready(conn), 5)
        conn.disconnect()
    finally:
        fake.stop()


def test_h100_default_table_and_documented_answers(library: nvfm.Library, fm: FakeFabricManager) -> None:
    conn = _connect(library, fm)
    table = conn.partitions()
    assert {p.id: p.physical_ids for p in table.partitions} == H100
    assert [p.nvlinks for p in table.partitions[:7]] == [144, 72, 72, 36, 36, 36, 36]
    assert all(p.nvlinks == 0 for p in table.partitions[7:])
    assert all(g.uuid == "" and g.pci_bus_id == "" for p in table.partitions for g in p.gpus)
    conn.activate(1)
    with pytest.raises(nvfm.InUse):
        conn.activate(1)  # already active
    with pytest.raises(nvfm.InUse):
        conn.activate(3)  # shares GPUs 1 and 3 with partition 1
    with pytest.raises(nvfm.Uninitialized):
        conn.deactivate(2)  # not active
    with pytest.raises(nvfm.BadParam):
        conn.activate(99)
    with pytest.raises(nvfm.NotSupported):
        conn.activate_with_vfs(2, [(0, 0x41, 0, 1)] * 4)  # vGPU mode only
    with pytest.raises(nvfm.NotSupported):
        conn.set_activated([])  # only after a restart
    assert conn.partitions().active_ids == (1,)
    conn.deactivate(1)
    assert conn.partitions().active_ids == ()
    assert fm.active() == []
    conn.disconnect()


def test_b200_table_is_numbered_from_one(
    library: nvfm.Library, fakes: tuple[Path, Path], tmp_path: Path
) -> None:
    fake = FakeFabricManager(fakes[1], tmp_path / "fm", FAKE_FM_PLATFORM="b200").start()
    try:
        conn = _connect(library, fake)
        assert {p.id: p.physical_ids for p in conn.partitions().partitions} == B200
        conn.disconnect()
    finally:
        fake.stop()


def test_missing_gpu_makes_partitions_unsupported_and_failed_links_are_listed(
    library: nvfm.Library, fakes: tuple[Path, Path], tmp_path: Path
) -> None:
    fake = FakeFabricManager(
        fakes[1], tmp_path / "fm", FAKE_FM_MISSING_GPUS="8", FAKE_FM_FAILED="g3:0,1;s2:5"
    ).start()
    try:
        conn = _connect(library, fake)
        listed = {p.id for p in conn.partitions().partitions}
        unsupported = {u.id: u.physical_ids for u in conn.unsupported_partitions()}
        assert unsupported == {0: H100[0], 2: H100[2], 6: H100[6], 14: (8,)}
        assert listed == set(H100) - set(unsupported)
        failed = conn.nvlink_failed_devices()
        assert [d.ports for d in failed.gpus] == [(0, 1)]
        assert [(d.pci_bus_id, d.ports) for d in failed.switches] == [("00000000:07:00.0", (5,))]
        conn.disconnect()
    finally:
        fake.stop()


def test_restart_mode_needs_the_activated_set_within_the_window(
    library: nvfm.Library, fakes: tuple[Path, Path], tmp_path: Path
) -> None:
    fake = FakeFabricManager(fakes[1], tmp_path / "fm").start()
    conn = _connect(library, fake)
    conn.activate(3)
    conn.activate(6)
    fake.kill()
    with pytest.raises(nvfm.ConnectionNotValid):
        conn.partitions()  # the old handle died with fabricmanager
    conn.disconnect()
    fake.start(restart=True, FAKE_FM_RESTART_WINDOW_MS="3000")
    conn = library.connect(nvfm.FMAddress.parse(fake.address))
    time.sleep(0.15)  # past the initializing moment
    with pytest.raises(nvfm.NotConfigured):
        conn.partitions()  # refused until the activated set arrives
    with pytest.raises(nvfm.NotSupported):
        conn.nvlink_failed_devices()  # not supported in restart mode
    with pytest.raises(nvfm.BadParam):
        conn.set_activated([1, 3])  # overlapping
    conn.set_activated([3, 6])
    assert conn.partitions().active_ids == (3, 6)
    conn.disconnect()
    fake.stop()
    # A restart that nobody answers: fabricmanager gives up when the window closes.
    fake.start(restart=True, FAKE_FM_RESTART_WINDOW_MS="300")
    assert fake.proc is not None
    assert fake.proc.wait(5) == 1
    assert "not received within 300 ms" in fake.log()


def test_connect_falls_back_to_v1_params(
    library: nvfm.Library, fm: FakeFabricManager, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trace = tmp_path / "trace"
    monkeypatch.setenv("FAKE_NVFM_TRACE", str(trace))
    monkeypatch.setenv("FAKE_NVFM_CONNECT_VERSIONS", "1")
    conn = library.connect(nvfm.FMAddress.parse(fm.address))
    assert conn.connect_version == 1
    conn.disconnect()
    monkeypatch.setenv("FAKE_NVFM_CONNECT_VERSIONS", "2")
    conn = library.connect(nvfm.FMAddress.parse(fm.address))
    assert conn.connect_version == 2
    conn.disconnect()
    lines = trace.read_text().splitlines()
    assert lines[0] == "connect version=0x02000110 rejected"
    assert lines[1].startswith(f"connect version=0x0100010c type=2 address={fm.socket} ")
    assert lines[2].startswith(f"connect version=0x02000110 type=2 address={fm.socket} ")
    # vsock needs v2: with a v1-only library the binding says so instead of guessing.
    monkeypatch.setenv("FAKE_NVFM_CONNECT_VERSIONS", "1")
    with pytest.raises(nvfm.VersionMismatch, match="needs fmConnectParams_v2"):
        library.connect(nvfm.FMAddress.parse("vsock:3:6666"))
    # with v2 the vsock address goes out as "<cid>:<port>" with addressType 3 (the fake does not
    # open the test machine's vsock; it answers CONNECTION_NOT_VALID)
    monkeypatch.setenv("FAKE_NVFM_CONNECT_VERSIONS", "1,2")
    with pytest.raises(nvfm.ConnectionNotValid):
        library.connect(nvfm.FMAddress.parse("vsock:3:6666"), timeout_ms=1234)
    assert (
        trace.read_text().splitlines()[-1]
        == "connect version=0x02000110 type=3 address=3:6666 timeout_ms=1234"
    )
    with pytest.raises(nvfm.ConnectionNotValid):
        library.connect(nvfm.FMAddress.parse("127.0.0.1:1"))  # nothing listens there


def test_vgpu_mode_activates_with_vfs_only(
    library: nvfm.Library, fakes: tuple[Path, Path], tmp_path: Path
) -> None:
    fake = FakeFabricManager(fakes[1], tmp_path / "fm")
    fake.overrides["FABRIC_MODE"] = "2"
    fake.start()
    try:
        conn = _connect(library, fake)
        with pytest.raises(nvfm.NotSupported):
            conn.activate(2)  # Shared NVSwitch mode only
        with pytest.raises(nvfm.BadParam):
            conn.activate_with_vfs(2, [(0, 0x41, 0, 1)])  # one VF per GPU of the partition
        conn.activate_with_vfs(2, [(0, 0x41 + i, 0, 1) for i in range(4)])
        assert conn.partitions().active_ids == (2,)
        conn.disconnect()
    finally:
        fake.stop()


def test_shutdown_ends_every_connection(library: nvfm.Library, fm: FakeFabricManager) -> None:
    conn = _connect(library, fm)
    library.shutdown()
    with pytest.raises(nvfm.Uninitialized):
        conn.partitions()
    with pytest.raises(nvfm.Uninitialized):
        library.shutdown()
    library.init()
    conn = _connect(library, fm)
    assert len(conn.partitions().partitions) == 15
    conn.disconnect()
