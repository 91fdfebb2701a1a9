"""The service VM's generated configuration, start script and service files; and (boot tests) the
built image: fm-controller under the image's own grpcio 1.51 / protobuf 3.21, and a QEMU boot
without NVIDIA's fabricmanager (READY with X_GUESTINIT_DEGRADED=fabricmanager, NOT_SERVING)."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import textwrap
import tomllib
from pathlib import Path

import pytest
from fabric_harness import FakeFabricManager, wait_for

from guestinit.fabric import render

REPO = Path(__file__).resolve().parents[2]
SERVICE_VM = REPO / "service-vm"
START = SERVICE_VM / "mkosi.extra/usr/libexec/guestinit/fabricmanager-start"


def test_fabricmanager_cfg_for_shared_nvswitch_mode() -> None:
    text = render.fabricmanager_cfg({"FM_CMD_PORT_NUMBER": "7000"})
    values = dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert values["FABRIC_MODE"] == "1"
    assert values["FM_CMD_BIND_INTERFACE"] == "127.0.0.1" and values["FM_CMD_PORT_NUMBER"] == "7000"
    assert values["FABRIC_MODE_RESTART"] == "0" and values["DAEMONIZE"] == "0"
    assert values["STATE_FILE_NAME"] == "/run/fabricmanager/fabricmanager.state"
    assert values["TOPOLOGY_FILE_PATH"] == "/usr/share/nvidia/nvswitch"
    assert values["LOG_USE_SYSLOG"] == "1"
    assert set(values) == {k.key for k in render.FABRICMANAGER_KEYS}


def test_fabricmanager_cfg_refuses_bad_values() -> None:
    with pytest.raises(render.RenderError, match="no key 'FABRIC_MODEE'"):
        render.fabricmanager_cfg({"FABRIC_MODEE": "1"})
    with pytest.raises(render.RenderError, match="FABRIC_MODE='7': choose one of 0, 1, 2"):
        render.fabricmanager_cfg({"FABRIC_MODE": "7"})
    with pytest.raises(render.RenderError, match="expected a number"):
        render.fabricmanager_cfg({"FM_CMD_PORT_NUMBER": "66x"})
    assert render.main(["fabricmanager-cfg", "--set", "nonsense"]) == 2


def test_libvirt_domain_validates_against_libvirts_schema(tmp_path: Path) -> None:
    spec = render.DomainSpec(
        kernel="/var/lib/guestinit/guestinit-servicevm.vmlinuz",
        initrd="/var/lib/guestinit/guestinit-servicevm.cpio.lz4",
        nvswitches=tuple(
            render.PciAddress.parse(a) for a in ("0000:05:00.0", "06:00.0", "0000:07:00.0", "0000:08:00.0")
        ),
        extra_functions=(render.PciAddress.parse("0000:03:00.1"),),
        vsock_cid=42,
        console_log="/var/log/servicevm.log",
    )
    xml = tmp_path / "domain.xml"
    xml.write_text(render.libvirt_domain(spec))
    r = subprocess.run(["virt-xml-validate", str(xml), "domain"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    text = xml.read_text()
    assert text.count("<hostdev mode='subsystem' type='pci' managed='yes'>") == 5
    assert "<address domain='0x0000' bus='0x03' slot='0x00' function='0x1'/>" in text
    assert "<cid auto='no' address='42'/>" in text
    # the same through the command line
    out = tmp_path / "cli.xml"
    argv = [
        "libvirt-domain",
        "--kernel",
        "/k",
        "--initrd",
        "/i",
        "--nvswitch",
        "0000:05:00.0",
        "--output",
        str(out),
    ]
    assert render.main(argv) == 0
    assert subprocess.run(["virt-xml-validate", str(out), "domain"], capture_output=True).returncode == 0


def test_libvirt_domain_refuses_bad_input() -> None:
    with pytest.raises(render.RenderError, match=r"expected DDDD:BB:SS\.F"):
        render.PciAddress.parse("05:00")
    with pytest.raises(render.RenderError, match="at least one NVSwitch"):
        render.libvirt_domain(render.DomainSpec(kernel="/k", initrd="/i", nvswitches=()))
    one = render.PciAddress.parse("0000:05:00.0")
    with pytest.raises(render.RenderError, match="given twice"):
        render.libvirt_domain(render.DomainSpec(kernel="/k", initrd="/i", nvswitches=(one, one)))


def test_start_script_restarts_in_restart_mode(fakes: tuple[Path, Path], tmp_path: Path) -> None:
    fake = FakeFabricManager(fakes[1], tmp_path / "fm")
    render.write_atomically(fake.cfg, render.fabricmanager_cfg(fake.overrides))
    env = {
        **os.environ,
        "FM_BINARY": str(fakes[1]),
        "FM_CONFIG": str(fake.cfg),
        "FM_RUN_DIR": str(tmp_path / "run"),
    }
    env["FAKE_FM_INIT_MS"] = "0"
    first = subprocess.Popen([str(START)], env=env, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: "started (h100, FABRIC_MODE=1)" in fake.log(), 5)
    finally:
        first.kill()
        first.wait()
    second = subprocess.Popen([str(START)], env=env, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: "started in restart mode" in fake.log(), 5)
    finally:
        second.kill()
        second.wait()
    missing = subprocess.run(
        [str(START)],
        env={**env, "FM_BINARY": str(tmp_path / "nv-fabricmanager")},
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 1 and "guestctl build servicevm --fabricmanager DIR" in missing.stderr


@pytest.mark.parametrize("name", ["fabricmanager.toml", "fabricmanager-absent.toml", "fm-controller.toml"])
def test_service_files_are_valid_for_guestinit(name: str) -> None:
    from guestinit.init.services import files

    path = SERVICE_VM / "services" / name
    spec = files.from_table(name.removesuffix(".toml"), str(path), tomllib.loads(path.read_text()))
    assert spec.error == "" and spec.problems == []
    if name == "fm-controller.toml":
        assert (
            spec.after == ("fabricmanager",)
            and spec.critical
            and spec.ready == ("file", "/run/fm-controller/ready")
        )
        assert "vsock:6000" in spec.command and "127.0.0.1:6666" in spec.command
    if name == "fabricmanager.toml":
        assert spec.condition_path_exists == "/usr/bin/nv-fabricmanager"
        assert spec.ready == ("tcp", ("127.0.0.1", 6666)) and not spec.critical


# --- the built image (slow: builds it when its inputs changed) ---------------------------------


@pytest.fixture(scope="module")
def servicevm_image() -> Path:
    from guestinit.host.build.builder import build

    manifest = build("servicevm", if_needed=True, log=io.StringIO())
    return manifest.parent / "guestinit-servicevm.cpio.lz4"


@pytest.mark.boot
def test_image_runs_compiled_init_with_its_toml_files_parsed_ahead(servicevm_image: Path) -> None:
    """As the Kata image: /init runs init.py's compiled form (a script given as source is compiled
    on every boot), and the TOML files the boot reads are cached parsed (no tomllib at boot)."""
    import json

    from guestinit.host.build import newc

    members = {e.name: e for e in newc.read_file(servicevm_image)}
    site = "/usr/lib/python3/dist-packages/guestinit/init"
    assert members["init"].data.decode() == f"#!/usr/bin/env -S /usr/bin/python3 -IS {site}/init.pyc\n"
    assert f"{site}/init.pyc".lstrip("/") in members and "usr/bin/env" in members
    cache = json.loads(members["etc/guestinit/toml-cache.json"].data)
    for name in ("guestinit.toml", "services.d/fm-controller.toml", "services.d/fabricmanager.toml"):
        path = f"/etc/guestinit/{name}"
        assert cache[path]["text"] == members[path.lstrip("/")].data.decode(), path


@pytest.mark.boot
def test_image_runtime_runs_fm_controller(
    servicevm_image: Path, fakes: tuple[Path, Path], tmp_path: Path
) -> None:
    """fm-controller and fmctl inside the image tree (Python 3.13, Debian's grpcio 1.51 and
    protobuf 3.21, the gRPC code generated there), against the fake fabricmanager."""
    if os.geteuid() != 0:
        pytest.skip("chroot needs root")
    root = tmp_path / "root"
    root.mkdir()
    unpack = f"lz4 -dc {servicevm_image} | cpio -idm --quiet"
    subprocess.run(unpack, shell=True, cwd=root, check=True)
    work = root / "tmp/fk"
    work.mkdir(parents=True)
    shutil.copy(fakes[0], work / "libnvfm.so.1")
    fake = FakeFabricManager(fakes[1], work).start()
    ctl = subprocess.Popen(
        [
            "chroot",
            str(root),
            "/usr/bin/fm-controller",
            "--listen",
            "unix:/tmp/fk/ctl.sock",
            "--libnvfm",
            "/tmp/fk/libnvfm.so.1",
            "--fm-address",
            "unix:/tmp/fk/fm.sock",
            "--state",
            "/tmp/fk/state.json",
            "--ready-file",
            "/tmp/fk/ready",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_for(lambda: (work / "ready").exists(), 30)
        fmctl = ["chroot", str(root), "/usr/bin/fmctl", "--address", "unix:/tmp/fk/ctl.sock"]
        versions = subprocess.run(
            [
                "chroot",
                str(root),
                "python3",
                "-c",
                "import grpc, google.protobuf as p; print(grpc.__version__, p.__version__)",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        assert versions[0].startswith("1.51.")
        r = subprocess.run([*fmctl, "activate", "2"], capture_output=True, text=True, timeout=60)
        assert (r.returncode, r.stdout) == (0, "partition 2 activated\n"), r.stderr
        r = subprocess.run([*fmctl, "list"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and "2             Active    4     72       5,6,7,8" in r.stdout
        assert wait_for(lambda: fake.active() == [2], 5)
    finally:
        ctl.terminate()
        ctl.wait(10)
        fake.stop()


PROBE = """\
import json, subprocess, sys
r = subprocess.run(["/usr/bin/fmctl", "--json", "status"], capture_output=True, text=True)
status = json.loads(r.stdout)
ok = r.returncode == 3 and not status["serving"] and "libnvfm.so.1" in status["last_error"]
from grpc_health.v1 import health_pb2, health_pb2_grpc
import grpc
with grpc.insecure_channel("unix:/run/fm-controller/fm-controller.sock") as ch:
    h = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
ok = ok and h.status == health_pb2.HealthCheckResponse.NOT_SERVING
# the host's way in: vsock (here over the guest's loopback transport, CID 1) through fmctl's bridge
argv = ["/usr/bin/fmctl", "--address", "vsock:1:6000", "--json", "status"]
r = subprocess.run(argv, capture_output=True, text=True)
ok = ok and r.returncode == 3 and json.loads(r.stdout)["serving"] is False
sys.exit(0 if ok else 1)
"""


@pytest.mark.boot
def test_servicevm_boots_degraded_without_fabricmanager(servicevm_image: Path, tmp_path: Path) -> None:
    """No NVIDIA packages: READY with X_GUESTINIT_DEGRADED=fabricmanager, fm-controller up and its
    standard health NOT_SERVING, also over vsock (checked in the guest by a probe service added as
    an extra initrd)."""
    from guestinit.host.boot import BootOptions, boot

    extra = tmp_path / "extra"
    (extra / "etc/guestinit/services.d").mkdir(parents=True)
    (extra / "etc/guestinit/health_probe.py").write_text(PROBE)
    (extra / "etc/guestinit/services.d/health-probe.toml").write_text(
        textwrap.dedent(
            """\
            command = ["/usr/bin/python3", "-c", "import time; time.sleep(86400)"]
            after = ["fm-controller"]
            ready = { command = ["/usr/bin/python3", "/etc/guestinit/health_probe.py"] }
            ready_timeout = 90
            """
        )
    )
    archive = tmp_path / "extra.cpio"
    files = subprocess.run(["find", "."], cwd=extra, capture_output=True, text=True, check=True).stdout
    with open(archive, "wb") as out:
        subprocess.run(
            ["cpio", "-o", "-H", "newc", "--quiet"], cwd=extra, input=files.encode(), stdout=out, check=True
        )
    result = boot(
        BootOptions(image=servicevm_image, extra_initrd=[archive], timeout_s=180, run_dir=tmp_path / "run")
    )
    assert result.ready, f"{result.error}; console: {Path(result.console_log).read_text()[-3000:]}"
    assert result.notify.get("X_GUESTINIT_DEGRADED") == "fabricmanager"
    services = result.notify.get("X_GUESTINIT_SERVICES", "")
    assert '"name":"fm-controller","state":"ready"' in services
    assert '"name":"health-probe","state":"ready"' in services


def test_loopback_is_brought_up_in_a_fresh_network_namespace() -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare for a private network namespace")
    import sys

    script = (
        "from guestinit.fabric import loopback as l; import sys; "
        "before = l.flags() & l.IFF_UP; changed = l.up(); again = l.up(); "
        "sys.exit(0 if (before, changed, again, l.flags() & l.IFF_UP) == (0, True, False, 1) else 1)"
    )
    r = subprocess.run(
        ["unshare", "-n", sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    from guestinit.fabric import loopback

    assert loopback.main(["no-such-if0"]) == 1


# --- the whole path with a stand-in for NVIDIA's package ----------------------------------------

FULL_PROBE = """\
import json, os, signal, subprocess, sys, time

def say(text):
    with open("/dev/kmsg", "w") as k:
        k.write("<3>health-probe: " + text + "\\n")

def fmctl(*args, address="unix:/run/fm-controller/fm-controller.sock"):
    argv = ["/usr/bin/fmctl", "--address", address, "--json", *args]
    r = subprocess.run(argv, capture_output=True, text=True)
    return r.returncode, json.loads(r.stdout) if r.stdout.strip() else r.stderr

def active():
    code, data = fmctl("list")
    return [p["id"] for p in data["partitions"] if p["active"]] if code == 0 else None

def fabricmanager_pid():
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if f.read().split(b"\\0")[0].endswith(b"nv-fabricmanager"):
                        return int(pid)
            except OSError:
                pass
    return None

code, status = fmctl("status")
if code != 0 or not status["serving"]:
    say(f"not serving: {code} {status}")
    sys.exit(1)
for pid in (3, 6):
    code, _ = fmctl("activate", str(pid), address="vsock:1:6000")
    if code != 0:
        say(f"activate {pid} over vsock: exit {code}")
        sys.exit(1)
# fabricmanager crashes; guestinit restarts it with --restart; fm-controller re-sends [3, 6].
os.kill(fabricmanager_pid(), signal.SIGKILL)
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    code, status = fmctl("status")
    if code == 0 and status["restores"] >= 1 and status["serving"]:
        break
    time.sleep(0.5)
else:
    say(f"no restore after the crash: {status}")
    sys.exit(1)
if active() != [3, 6]:
    say(f"active after restart: {active()}")
    sys.exit(1)
"""


def _fake_nvidia_package(fakes: tuple[Path, Path], directory: Path) -> Path:
    root = directory / "pkg"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN/control").write_text(
        "Package: nvidia-fabricmanager-testdouble\nVersion: 0.0.1\nArchitecture: amd64\n"
        "Section: non-free/admin\nPriority: optional\n"
        "Maintainer: guestinit tests <tests@invalid>\n"
        "Description: stand-in for NVIDIA fabricmanager: the fake nv-fabricmanager and libnvfm.so.1\n"
    )
    for source, target in (
        (fakes[1], "usr/bin/nv-fabricmanager"),
        (fakes[0], "usr/lib/x86_64-linux-gnu/libnvfm.so.1"),
    ):
        (root / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, root / target)
    (root / "usr/share/nvidia/nvswitch").mkdir(parents=True)
    (root / "usr/share/nvidia/nvswitch/README").write_text("test double: no topology files\n")
    debs = directory / "debs"
    debs.mkdir()
    deb = debs / "nvidia-fabricmanager-testdouble_0.0.1_amd64.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "--build", str(root), str(deb)], check=True, capture_output=True
    )
    return debs


@pytest.mark.boot
def test_servicevm_with_fabricmanager_survives_its_restart(fakes: tuple[Path, Path], tmp_path: Path) -> None:
    """Build the image with a package directory holding a stand-in for NVIDIA's fabricmanager (the
    C test doubles), boot it: no DEGRADED, health SERVING, activation over vsock, and after
    fabricmanager is killed guestinit restarts it in restart mode and fm-controller re-sends the set."""
    from guestinit.host.boot import BootOptions, boot
    from guestinit.host.build import images as build

    debs = _fake_nvidia_package(fakes, tmp_path)
    out = tmp_path / "image"
    argv = build.mkosi_command(build.repo_root(), build.target("servicevm"), out, {})
    argv[argv.index("-f") : argv.index("-f")] = ["--volatile-package-directory", str(debs)]
    # mkosi keys its image cache by distribution~release~arch only: a cache of our own, or this
    # build and the regular ones would keep discarding each other's.
    argv[argv.index("--cache-directory") + 1] = str(
        build.cache_dir() / "mkosi" / "cache-servicevm-fabric-test"
    )
    env = {**os.environ, "PYTHONPATH": str(build.mkosi_python_path())}
    r = subprocess.run(argv, env=env, cwd=build.repo_root(), capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "installing nvidia-fabricmanager-testdouble" in r.stderr + r.stdout

    extra = tmp_path / "extra"
    (extra / "etc/guestinit/services.d").mkdir(parents=True)
    (extra / "etc/guestinit/health_probe.py").write_text(FULL_PROBE)
    (extra / "etc/guestinit/services.d/health-probe.toml").write_text(
        'command = ["/usr/bin/python3", "-c", "import time; time.sleep(86400)"]\n'
        'after = ["fm-controller"]\n'
        'ready = { command = ["/usr/bin/python3", "/etc/guestinit/health_probe.py"] }\n'
        "ready_timeout = 150\n"
    )
    archive = tmp_path / "extra.cpio"
    files = subprocess.run(["find", "."], cwd=extra, capture_output=True, text=True, check=True).stdout
    with open(archive, "wb") as f:
        subprocess.run(
            ["cpio", "-o", "-H", "newc", "--quiet"], cwd=extra, input=files.encode(), stdout=f, check=True
        )
    image = out / "guestinit-servicevm.cpio"  # mkosi's own output; guestctl build would pack it
    result = boot(BootOptions(image=image, extra_initrd=[archive], timeout_s=240, run_dir=tmp_path / "run"))
    console = Path(result.console_log).read_text() if result.console_log else ""
    assert result.ready, f"{result.error}; console: {console[-3000:]}"
    assert "X_GUESTINIT_DEGRADED" not in result.notify, console[-3000:]
    services = result.notify.get("X_GUESTINIT_SERVICES", "")
    # health-probe is ready only when every check of FULL_PROBE passed (its failures go to the console)
    for name in ("fabricmanager", "fm-controller", "health-probe"):
        assert f'"name":"{name}","state":"ready"' in services, services + console[-3000:]
