"""The kata-agent stand-in, both builds, on the host: its --version line, the report of what it
was started with, the ttrpc health service over a Unix socket, and the test-only exit key."""

from __future__ import annotations

import os
import resource
import socket
import struct
import subprocess
import threading
from pathlib import Path

import pytest
import ttrpc_client
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from standin_harness import EXIT_MARKER, REPORT_MARKER, VERSION, Run, console_report

from guestinit.host.agentsource import elf, version

BUILDS = ["static", "dynamic"]


@pytest.fixture(params=BUILDS)
def build(request: pytest.FixtureRequest, standins: dict[str, Path]) -> tuple[str, Path]:
    return request.param, standins[request.param]


@pytest.fixture
def running(build: tuple[str, Path], tmp_path: Path):  # type: ignore[no-untyped-def]
    run = Run(build[1], tmp_path / "run", cmdline="console=ttyS0 agent.log=debug quiet").start()
    yield run
    run.stop()


def test_the_builds_are_linked_like_the_real_agents(standins: dict[str, Path]) -> None:
    static = elf.read(standins["static"])
    dynamic = elf.read(standins["dynamic"])
    assert static.linking == "static" and static.needed == ()
    assert dynamic.interpreter == "/lib64/ld-linux-x86-64.so.2"
    assert {"libdevmapper.so.1.02.1", "libseccomp.so.2", "libc.so.6"} <= set(dynamic.needed)


@pytest.mark.parametrize("flag", ["--version", "-v"])
def test_version_line_is_the_agents(build: tuple[str, Path], flag: str) -> None:
    out = subprocess.run([str(build[1]), flag], capture_output=True, text=True, check=True).stdout
    assert out.startswith(f"kata-agent version {VERSION} (api version: 0.0.1, commit version: 3.99.0-")
    info = version.parse(out)
    assert info.version == VERSION and info.api_version == "0.0.1"
    assert info.features == (("seccomp",) if build[0] == "dynamic" else ())


def test_an_unknown_argument_is_refused_like_clap(build: tuple[str, Path]) -> None:
    proc = subprocess.run([str(build[1]), "--frobnicate"], capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and "unexpected argument '--frobnicate'" in proc.stderr


def test_report_records_how_it_was_started(build: tuple[str, Path], tmp_path: Path) -> None:
    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1000, 2000))
        Path("/proc/self/oom_score_adj").write_text("500")

    run = Run(
        build[1], tmp_path / "run", cmdline='quiet agent.log=debug "agent.x=a b" agent.hotplug_timeout=3'
    )
    run.start(
        "--config", "/etc/agent.toml", env={"PATH": "/bin:/sbin/:/usr/bin/:/usr/sbin/"}, preexec=preexec
    )
    try:
        report = run.report()
        assert run.proc is not None
        assert report["pid"] == run.proc.pid and report["ppid"] == os.getpid()
        assert report["build"] == build[0] and report["version"] == VERSION
        assert report["argv"] == [str(build[1]), "--config", "/etc/agent.toml"]
        assert report["environ"]["KATA_STANDIN_SOCKET"] == str(run.socket)
        assert report["path"] == "/bin:/sbin/:/usr/bin/:/usr/sbin/"
        assert report["cwd"] == str(run.workdir)
        assert report["rlimit_nofile"] == {"soft": 1000, "hard": 2000}
        assert report["oom_score_adj"] == 500
        assert report["agent_cmdline"] == {
            "agent.log": "debug",
            "agent.x": "a b",
            "agent.hotplug_timeout": "3",
        }
        assert report["child_subreaper"] is True
        assert report["listen"] == f"unix:{run.socket}"
        assert report["uid"] == os.getuid() and report["sid"] == os.getsid(0)
        assert report["hostname"] == socket.gethostname()
        assert {"target": "/proc", "type": "proc"} in report["mounts"]
        assert report["cgroup"] == Path("/proc/self/cgroup").read_text().rstrip("\n")
        assert isinstance(report["lo_up"], bool) and isinstance(report["resolv_conf"], bool)
        assert report["sig_blocked"] == "0000000000000000"
        if build[0] == "dynamic":
            assert report["libseccomp"].count(".") == 2 and report["libdevmapper"]
        # The console line carries the same object behind its marker.
        lines = run.console_lines()
        assert lines[0].startswith(REPORT_MARKER)
        assert console_report("kernel noise\n" + lines[0]) == report
    finally:
        run.stop()


def test_health_check_answers_serving(running: Run) -> None:
    client = ttrpc_client.Client(ttrpc_client.connect(f"unix:{running.socket}"))
    try:
        assert client.check() == ttrpc_client.SERVING
        assert client.check("grpc.AgentService") == ttrpc_client.SERVING
        assert client.version() == ("0.0.1", VERSION)
        # The shim polls Check on one connection: keep going on the same one.
        for _ in range(5):
            assert client.check() == ttrpc_client.SERVING
    finally:
        client.close()


def test_unknown_methods_are_unimplemented(running: Run) -> None:
    client = ttrpc_client.Client(ttrpc_client.connect(f"unix:{running.socket}"))
    try:
        with pytest.raises(ttrpc_client.TtrpcError) as err:
            client.call("grpc.AgentService", "CreateSandbox", b"")
        assert err.value.code == 12 and "CreateSandbox" in err.value.message
        with pytest.raises(ttrpc_client.TtrpcError) as err:
            client.call("grpc.Health", "Check", b"\xff\xff")  # not a CheckRequest
        assert err.value.code == 3
        assert client.check() == ttrpc_client.SERVING
    finally:
        client.close()


def test_hostile_frames_close_only_that_connection(running: Run) -> None:
    good = ttrpc_client.Client(ttrpc_client.connect(f"unix:{running.socket}"))
    bad = ttrpc_client.connect(f"unix:{running.socket}")
    try:
        bad.sendall(struct.pack(">IIBB", (4 << 20) + 1, 1, 1, 0))  # over ttrpc's 4 MiB limit
        assert bad.recv(16) == b""
        garbage = ttrpc_client.connect(f"unix:{running.socket}")
        garbage.sendall(ttrpc_client.frame(1, 1, b"\x0a\xff\xff\xff\xff\x0f"))  # bad protobuf
        header = garbage.recv(10)
        assert len(header) == 10 and header[8] == 2
        garbage.close()
        assert good.check() == ttrpc_client.SERVING
    finally:
        bad.close()
        good.close()


def test_concurrent_clients_are_all_answered(running: Run) -> None:
    results: list[int] = []

    def one() -> None:
        client = ttrpc_client.Client(ttrpc_client.connect(f"unix:{running.socket}"))
        try:
            results.extend(client.check() for _ in range(10))
        finally:
            client.close()

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == [ttrpc_client.SERVING] * 80


def _message_classes() -> dict[str, type]:
    """ttrpc.Request/Response, google.rpc.Status and grpc.Health's messages, built by the real
    protobuf library from their .proto definitions (containerd/ttrpc request.proto, kata health.proto)."""
    f = descriptor_pb2.FileDescriptorProto(name="standin_check.proto", package="check", syntax="proto3")
    T = descriptor_pb2.FieldDescriptorProto

    def message(name: str, *fields: tuple[str, int, int, str]) -> None:
        m = f.message_type.add(name=name)
        for fname, number, ftype, type_name in fields:
            field = m.field.add(name=fname, number=number, type=ftype, label=T.LABEL_OPTIONAL)
            if type_name:
                field.type_name = type_name
                if fname == "metadata":
                    field.label = T.LABEL_REPEATED

    message("KeyValue", ("key", 1, T.TYPE_STRING, ""), ("value", 2, T.TYPE_STRING, ""))
    message("Status", ("code", 1, T.TYPE_INT32, ""), ("message", 2, T.TYPE_STRING, ""))
    message(
        "Request",
        ("service", 1, T.TYPE_STRING, ""),
        ("method", 2, T.TYPE_STRING, ""),
        ("payload", 3, T.TYPE_BYTES, ""),
        ("timeout_nano", 4, T.TYPE_INT64, ""),
        ("metadata", 5, T.TYPE_MESSAGE, ".check.KeyValue"),
    )
    message("Response", ("status", 1, T.TYPE_MESSAGE, ".check.Status"), ("payload", 2, T.TYPE_BYTES, ""))
    message("CheckRequest", ("service", 1, T.TYPE_STRING, ""))
    message("HealthCheckResponse", ("status", 1, T.TYPE_ENUM, ".check.ServingStatus"))
    message(
        "VersionCheckResponse",
        ("grpc_version", 1, T.TYPE_STRING, ""),
        ("agent_version", 2, T.TYPE_STRING, ""),
    )
    enum = f.enum_type.add(name="ServingStatus")
    for i, n in enumerate(["UNKNOWN", "SERVING", "NOT_SERVING"]):
        enum.value.add(name=n, number=i)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    names = ["Request", "Response", "CheckRequest", "HealthCheckResponse", "VersionCheckResponse"]
    return {n: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"check.{n}")) for n in names}


def test_the_wire_format_is_what_protobuf_reads(running: Run) -> None:
    """Requests encoded by the real protobuf library (with metadata and a timeout the stand-in must
    skip), answers decoded by it: the stand-in and the test client agree with protobuf itself."""
    m = _message_classes()
    sock = ttrpc_client.connect(f"unix:{running.socket}")
    try:
        for stream, method in ((1, "Check"), (3, "Version")):
            req = m["Request"](
                service="grpc.Health",
                method=method,
                payload=m["CheckRequest"](service="").SerializeToString(),
                timeout_nano=5_000_000_000,
            )
            req.metadata.add(key="kata", value="shim")
            sock.sendall(ttrpc_client.frame(stream, 1, req.SerializeToString()))
            length, got, kind, flags = struct.unpack(">IIBB", ttrpc_client._read_exact(sock, 10))
            assert (got, kind, flags) == (stream, 2, 0)
            resp = m["Response"].FromString(ttrpc_client._read_exact(sock, length))
            assert resp.status.code == 0
            if method == "Check":
                assert m["HealthCheckResponse"].FromString(resp.payload).status == 1
            else:
                out = m["VersionCheckResponse"].FromString(resp.payload)
                assert (out.grpc_version, out.agent_version) == ("0.0.1", VERSION)
    finally:
        sock.close()


@pytest.mark.parametrize(("key", "status"), [("agent.standin_exit=7:0.3", 7), ("agent.standin_exit=0", 0)])
def test_the_exit_key_ends_it_with_that_status(
    build: tuple[str, Path], tmp_path: Path, key: str, status: int
) -> None:
    run = Run(build[1], tmp_path / "run", cmdline=f"console=hvc0 {key}")
    run.start()
    try:
        if status:  # still serving until then
            client = ttrpc_client.Client(ttrpc_client.connect(f"unix:{run.socket}"))
            assert client.check() == ttrpc_client.SERVING
            client.close()
        assert run.wait() == status
        lines = run.console_lines()
        assert lines[-1].startswith(f"{EXIT_MARKER}status={status}")
        assert not run.socket.exists()
    finally:
        run.stop()


def test_without_the_key_it_keeps_serving_until_stopped(running: Run) -> None:
    assert running.proc is not None and running.proc.poll() is None
    assert all(EXIT_MARKER not in line for line in running.console_lines())
