from __future__ import annotations

import os
from pathlib import Path

import pytest

from guestinit.init import modules
from guestinit.init.root import Root

KVER = "6.12.0-test"


@pytest.fixture
def tree(tmp_path: Path) -> modules.ModuleTree:
    base = tmp_path / "usr/lib/modules" / KVER
    base.mkdir(parents=True)
    (base / "modules.dep").write_text(
        "kernel/net/vmw_vsock/vsock.ko.xz:\n"
        "kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko.xz: kernel/net/vmw_vsock/vsock.ko.xz\n"
        "kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko.xz: "
        "kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko.xz kernel/net/vmw_vsock/vsock.ko.xz\n"
        "updates/nvidia.ko:\n"
        "updates/nvidia-uvm.ko: updates/nvidia.ko\n"
    )
    (base / "modules.builtin").write_text("kernel/drivers/char/virtio_console.ko\n")
    (base / "modules.alias").write_text("alias net-pf-40 vsock\nalias pci:v000010DEd*sv* nvidia\n")
    (tmp_path / "etc/modprobe.d").mkdir(parents=True)
    (tmp_path / "etc/modprobe.d/nvidia.conf").write_text(
        "options nvidia NVreg_DeviceFileMode=0660 # comment\n"
    )
    (tmp_path / "sys/module/already").mkdir(parents=True)
    return modules.ModuleTree(Root(tmp_path), KVER)


def test_dependencies_load_first_and_once(tree: modules.ModuleTree) -> None:
    order = tree.order(["vmw_vsock_virtio_transport", "vsock", "nvidia-uvm"])
    assert order == [
        "vsock",
        "vmw_vsock_virtio_transport_common",
        "vmw_vsock_virtio_transport",
        "nvidia",
        "nvidia_uvm",
    ]


def test_alias_and_builtin_resolve(tree: modules.ModuleTree) -> None:
    assert tree.resolve("net-pf-40") == "vsock"
    assert tree.resolve("virtio-console") == "virtio_console"
    assert tree.resolve("nope") is None


def test_options_from_modprobe_d(tree: modules.ModuleTree) -> None:
    assert tree.options["nvidia"] == "NVreg_DeviceFileMode=0660"


def test_builtin_and_loaded_are_skipped(tree: modules.ModuleTree) -> None:
    assert modules.load_one(tree, "virtio_console").how == "builtin"
    tree.paths["already"] = "kernel/already.ko"
    assert modules.load_one(tree, "already").how == "loaded"


def test_failed_dependency_fails_dependents(tree: modules.ModuleTree, fp) -> None:  # type: ignore[no-untyped-def]
    # The files are not real modules: finit_module fails, modprobe (faked) fails too.
    fp.register(["modprobe", fp.any()], returncode=1, stderr="modprobe: FATAL")
    fp.keep_last_process(True)
    results = modules.load(tree, ["vmw_vsock_virtio_transport"])
    assert [r.how for r in results] == ["failed", "failed", "failed"]
    assert "dependency vsock failed" in results[1].error


def test_modprobe_fallback_keeps_parameters(tree: modules.ModuleTree, fp) -> None:  # type: ignore[no-untyped-def]
    fp.register(["modprobe", "-d", tree.root.path, "-S", KVER, "nvidia", "NVreg_NvLinkDisable=1"])
    result = modules.load_one(tree, "nvidia", "NVreg_NvLinkDisable=1")
    assert result.how == "modprobe"
    assert (
        fp.call_count(["modprobe", "-d", tree.root.path, "-S", KVER, "nvidia", "NVreg_NvLinkDisable=1"]) == 1
    )


def test_no_modprobe_fork_when_the_kernel_refuses_the_module(
    tree: modules.ModuleTree, fp, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    import errno

    (Path(tree.root(tree.base)) / "updates").mkdir(parents=True)
    (Path(tree.root(tree.base)) / "updates/nvidia.ko").write_bytes(b"\x7fELF")

    def no_device(fd: int, params: str = "", flags: int = 0) -> None:
        raise OSError(errno.ENODEV, "finit_module: No such device")

    monkeypatch.setattr(modules.syscalls, "finit_module", no_device)
    result = modules.load_one(tree, "nvidia")
    assert result.how == "failed" and "No such device" in result.error
    assert fp.call_count(["modprobe", fp.any()]) == 0


def test_parallel_load_overlaps_independent_modules_and_keeps_dependency_order(
    tree: modules.ModuleTree, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading
    import time

    for rel in tree.paths.values():
        path = Path(tree.root(f"{tree.base}/{rel}"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\x7fELF")
    spans: dict[str, tuple[float, float]] = {}
    lock = threading.Lock()

    def fake_finit(fd: int, params: str = "", flags: int = 0) -> None:
        name = modules.module_name(os.readlink(f"/proc/self/fd/{fd}"))
        start = time.monotonic()
        time.sleep(0.2)
        with lock:
            spans[name] = (start, time.monotonic())

    monkeypatch.setattr(modules.syscalls, "finit_module", fake_finit)
    results = modules.load(tree, ["vmw_vsock_virtio_transport", "nvidia-uvm"], parallel=True, workers=2)
    assert [r.name for r in results] == tree.order(["vmw_vsock_virtio_transport", "nvidia-uvm"])
    assert all(r.how == "finit" for r in results)
    # same level: they ran at the same time; a dependent started after its dependency ended
    assert spans["nvidia"][0] < spans["vsock"][1] and spans["vsock"][0] < spans["nvidia"][1]
    assert spans["vmw_vsock_virtio_transport_common"][0] >= spans["vsock"][1]
    assert spans["nvidia_uvm"][0] >= spans["nvidia"][1]
    assert spans["vmw_vsock_virtio_transport"][0] >= spans["vmw_vsock_virtio_transport_common"][1]


def test_no_more_loads_at_once_than_workers(
    tree: modules.ModuleTree, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading
    import time

    _fake_modules(tree)
    running: list[int] = [0]
    most: list[int] = [0]
    order: list[str] = []
    lock = threading.Lock()

    def fake_finit(fd: int, params: str = "", flags: int = 0) -> None:
        name = modules.module_name(os.readlink(f"/proc/self/fd/{fd}"))
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
            order.append(name)
        time.sleep(0.05)
        with lock:
            running[0] -= 1

    monkeypatch.setattr(modules.syscalls, "finit_module", fake_finit)
    names = ["vmw_vsock_virtio_transport", "nvidia-uvm"]
    results = modules.Loading(tree, names, workers=1).wait()
    assert [r.name for r in results] == tree.order(names) and all(r.how == "finit" for r in results)
    assert most[0] == 1
    # one at a time, each still after its own dependencies
    for dependent, dependency in (("nvidia_uvm", "nvidia"), ("vmw_vsock_virtio_transport_common", "vsock")):
        assert order.index(dependency) < order.index(dependent)


def test_workers_default_to_the_cpus_beyond_the_inits_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(modules.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert modules.spare_cpus() == 3
    monkeypatch.setattr(modules.os, "sched_getaffinity", lambda pid: {0})
    assert modules.spare_cpus() == 1  # one CPU: the loads still go on beside the init

    def refused(pid: int) -> set[int]:
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(modules.os, "sched_getaffinity", refused)
    assert modules.spare_cpus() == 1


def _fake_modules(tree: modules.ModuleTree) -> None:
    for rel in tree.paths.values():
        path = Path(tree.root(f"{tree.base}/{rel}"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\x7fELF")


def test_a_dependent_starts_when_its_own_dependencies_are_in_not_a_whole_level(
    tree: modules.ModuleTree, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading
    import time

    _fake_modules(tree)
    spans: dict[str, tuple[float, float]] = {}
    lock = threading.Lock()
    slow = {"nvidia": 0.8}

    def fake_finit(fd: int, params: str = "", flags: int = 0) -> None:
        name = modules.module_name(os.readlink(f"/proc/self/fd/{fd}"))
        start = time.monotonic()
        time.sleep(slow.get(name, 0.05))
        with lock:
            spans[name] = (start, time.monotonic())

    monkeypatch.setattr(modules.syscalls, "finit_module", fake_finit)
    loading = modules.Loading(tree, ["vmw_vsock_virtio_transport", "nvidia"], workers=2)
    results = loading.wait()
    assert loading.done and all(r.how == "finit" for r in results)
    # the vsock chain went on while nvidia (same level as vsock) was still loading
    assert spans["vmw_vsock_virtio_transport"][1] < spans["nvidia"][1]


def test_background_loading_fails_dependents_and_never_hangs_on_an_exception(
    tree: modules.ModuleTree, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    _fake_modules(tree)

    def fake_finit(fd: int, params: str = "", flags: int = 0) -> None:
        name = modules.module_name(os.readlink(f"/proc/self/fd/{fd}"))
        if name == "vsock":
            raise OSError(errno.ENOMEM, "finit_module: Cannot allocate memory")
        if name == "nvidia":
            raise RuntimeError("a bug in the loader")

    monkeypatch.setattr(modules.syscalls, "finit_module", fake_finit)
    results = {r.name: r for r in modules.Loading(tree, ["vmw_vsock_virtio_transport", "nvidia-uvm"]).wait()}
    assert results["vsock"].how == "failed" and "Cannot allocate" in results["vsock"].error
    assert results["vmw_vsock_virtio_transport_common"].error == "dependency vsock failed"
    assert results["vmw_vsock_virtio_transport"].how == "failed"
    assert (
        results["nvidia"].how == "failed" and "RuntimeError: a bug in the loader" in results["nvidia"].error
    )
    assert results["nvidia_uvm"].error == "dependency nvidia failed"


def test_nothing_to_load_is_done_at_once(tree: modules.ModuleTree) -> None:
    loading = modules.Loading(tree, [])
    assert loading.done and loading.wait() == []
