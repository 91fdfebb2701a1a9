"""The readiness channel in real QEMU boots of the Kata image (two boots):

1. systemd's vmm.notify_socket credential on SMBIOS type 11 (as ``mkosi vm`` passes it) names
   ``vsock-stream:1:PORT``; guestinit sends READY over the AF_VSOCK loopback (CID 1) to the real
   host Listener running inside the guest (tests/boot/test_notify_guest.py), which relays it to
   the host over virtio-serial. The same boot measures READY latency on every transport it can:
   AF_VSOCK loopback (in the guest, one clock) to a stream and a seqpacket listener, for every
   vsock address kind, virtio-serial and console (by round trip).
2. The credential on the kernel command line names ``console``: READY and, on power-off,
   X_SYSTEMD_SHUTDOWN arrive as marked console lines, which ``guestctl boot`` reads.
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from guestinit.host.boot import BootOptions, boot
from guestinit.host.listen.listener import Listener
from guestinit.host.listen.messages import Message
from guestinit.host.result import BootResult, format_timeline, timeline

pytestmark = pytest.mark.boot

REPO = Path(__file__).resolve().parents[2]
VSOCK_PORT = 7777  # tests/boot/test_notify_guest.py listens here (stream)
SEQPACKET_PORT = 7778  # and here (seqpacket)
PROBES_PER_KIND = 30  # its PROBES
PINGS = 20

TEST_INIT = b"""#!/usr/bin/python3 -I
# Test-only rdinit: fork the guest half of the notify boot test, then become guestinit (PID 1).
import os
import sys

if os.fork() == 0:
    sys.path[:0] = ["/test", "/usr/lib/python3/dist-packages"]
    try:
        import test_notify_guest

        test_notify_guest.main()
    finally:
        os._exit(0)
os.execv("/init", ["/init"])
"""


def newc(entries: list[tuple[str, int, bytes]]) -> bytes:
    """A newc cpio archive of (path, mode, data); directories have mode 0o040755 and no data."""
    out = bytearray()

    def add(name: str, mode: int, data: bytes, ino: int) -> None:
        encoded = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
        out.extend(b"070701" + b"".join(b"%08X" % f for f in fields) + encoded)
        out.extend(b"\0" * (-len(out) % 4) + data)
        out.extend(b"\0" * (-len(out) % 4))

    for ino, (name, mode, data) in enumerate(entries, 1):
        add(name, mode, data, ino)
    add("TRAILER!!!", 0, b"", 0)
    return bytes(out)


def relay_initrd(path: Path) -> Path:
    """/test-init, the guest program and a copy of the host listener package with the one host
    module it imports (test-only content)."""
    dist = "usr/lib/python3/dist-packages/guestinit/host"
    package = REPO / "guestinit/host/listen"
    entries = [
        ("test-init", 0o100755, TEST_INIT),
        ("test", 0o040755, b""),
        ("test/test_notify_guest.py", 0o100644, (REPO / "tests/boot/test_notify_guest.py").read_bytes()),
        (dist, 0o040755, b""),
        (f"{dist}/__init__.py", 0o100644, b""),
        (f"{dist}/errors.py", 0o100644, (REPO / "guestinit/host/errors.py").read_bytes()),
        (f"{dist}/listen", 0o040755, b""),
    ]
    entries += [
        (f"{dist}/listen/{module.name}", 0o100644, module.read_bytes())
        for module in sorted(package.glob("*.py"))
    ]
    path.write_bytes(newc(entries))
    return path


def test_relay_initrd_carries_the_whole_listener_package(tmp_path: Path) -> None:
    """Every module of guestinit/host/listen is in the extra initrd (what the package may
    import is checked by tests/host/test_listen_package.py)."""
    data = relay_initrd(tmp_path / "relay.cpio").read_bytes()
    for module in (REPO / "guestinit/host/listen").glob("*.py"):
        assert f"guestinit/host/listen/{module.name}\0".encode() in data, module.name


def wait_message(listener: Listener, want: Callable[[Message], bool], until: float) -> Message:
    while time.monotonic() < until:
        msg = listener.get(timeout=0.2)
        if msg is not None and want(msg):
            return msg
    raise AssertionError("expected message never arrived")


def ms(values: list[float]) -> str:
    v = sorted(x * 1000 for x in values)
    return f"median {statistics.median(v):.2f} ms, min {v[0]:.2f}, max {v[-1]:.2f} (n={len(v)})"


def test_ready_over_vsock_loopback_from_smbios_credential(kata_image: Path, tmp_path: Path) -> None:
    socks = Path(tempfile.mkdtemp(prefix="gi-notify-"))  # AF_UNIX paths must stay short
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    credential = base64.b64encode(f"vsock-stream:1:{VSOCK_PORT}".encode()).decode()
    opts = BootOptions(
        image=kata_image,
        transport="serial",
        timeout_s=240,
        run_dir=run_dir,
        extra_initrd=[relay_initrd(tmp_path / "relay.cpio")],
        # guestctl boot passes guestinit.notify=serial:...; an empty value restores "auto", so the
        # credential decides, as it would for an image booted by mkosi vm. The vsock loopback
        # transport is no device: it loads only when asked for (its dependencies with it).
        append="rdinit=/test-init guestinit.notify= guestinit.modules=vsock_loopback",
        qemu_extra=(
            "-smbios",
            f"type=11,value=io.systemd.credential.binary:vmm.notify_socket={credential}",
            "-chardev",
            f"socket,id=ping0,path={socks}/ping.sock,server=on,wait=off",
            "-device",
            "virtserialport,bus=vser0.0,chardev=ping0,name=test.ping",
            "-chardev",
            f"socket,id=pong0,path={socks}/pong.sock,reconnect=1",
            "-device",
            "virtserialport,bus=vser0.0,chardev=pong0,name=test.pong",
        ),
    )
    outcome: dict[str, BootResult] = {}
    pongs = Listener([f"serial:{socks}/pong.sock", f"console:{run_dir}/console.log"]).start()
    booting = threading.Thread(target=lambda: outcome.update(result=boot(opts)))
    booting.start()
    serial_rtt: list[float] = []
    serial_oneway: list[float] = []
    console_rtt: list[float] = []
    console_oneway: list[float] = []
    try:
        wait_message(pongs, lambda m: "X_PING_READY" in m.fields, time.monotonic() + 200)
        with socket.socket(socket.AF_UNIX) as ping:
            ping.connect(f"{socks}/ping.sock")
            for how, rtts, oneway in (
                ("serial", serial_rtt, serial_oneway),
                ("console", console_rtt, console_oneway),
            ):
                for i in range(PINGS):
                    sent = time.monotonic()
                    ping.sendall(f"PING {how} {i}\n".encode())
                    pong = wait_message(pongs, lambda m, i=i: m.fields.get("X_PONG") == str(i), sent + 10)
                    assert pong.source.startswith("serial:" if how == "serial" else "console:")
                    rtt = pong.received - sent
                    in_guest = float(pong.fields["X_PONG_SENT_S"]) - float(pong.fields["X_PONG_RECV_S"])
                    rtts.append(rtt)
                    oneway.append(rtt - in_guest)  # upper bound of guest send -> host report
            ping.sendall(b"DONE\n")
        booting.join(timeout=120)
    finally:
        pongs.close()
        booting.join(timeout=60)
        shutil.rmtree(socks, ignore_errors=True)
    result = outcome["result"]
    assert result.ready, (
        f"{result.error} {result.status}; console: {Path(result.console_log).read_text()[-3000:]}"
    )
    relayed = json.loads(result.notify["X_RELAY_FIELDS"])
    # guestinit itself sent this READY over AF_VSOCK (CID 1) to the real Listener: the only place
    # that address came from is the SMBIOS credential.
    assert result.notify["X_RELAY_SOURCE"].startswith(f"vsock:{VSOCK_PORT} cid ")
    assert relayed["READY"] == "1" and relayed["X_GUESTINIT_VERSION"]
    vsock = json.loads(result.notify["X_RELAY_VSOCK"])
    stream, seqpacket = f"vsock:{VSOCK_PORT} cid 1", f"vsock-seqpacket:{SEQPACKET_PORT} cid 1"
    for address, endpoint in (
        (f"vsock-stream:1:{VSOCK_PORT}", stream),
        (f"vsock-seqpacket:1:{SEQPACKET_PORT}", seqpacket),
        (f"vsock:1:{SEQPACKET_PORT}", seqpacket),  # systemd's reading of vsock: on virtio-vsock
        (f"vsock:1:{VSOCK_PORT}", stream),  # and our fall back to a stream listener
    ):
        assert vsock[address]["n"] == PROBES_PER_KIND and vsock[address]["sources"] == [endpoint], vsock
    assert vsock[f"vsock-seqpacket:1:{VSOCK_PORT}"]["n"] == 0  # a type mismatch is refused
    assert vsock[f"vsock-dgram:1:{VSOCK_PORT}"]["n"] == 0  # virtio-vsock has no datagrams
    # guestinit (PID 1, root) sent from a privileged source port, as systemd's sd_notify does.
    assert int(result.notify["X_RELAY_SOURCE"].rsplit(" port ", 1)[1]) < 1024
    assert result.notify["X_RELAY_PONGS"] == str(2 * PINGS)
    print(f"\nREADY latency, guest send -> host report ({result.accel}):")
    for kind, entry in vsock.items():  # kind: the guest's address
        detail = (
            f"median {entry['median_ms']} ms, p90 {entry['p90_ms']}, max {entry['max_ms']}"
            if entry["n"]
            else ""
        )
        print(f"  {kind:24} n={entry['n']:<3} {detail} {entry['error']}")
    print(f"  virtio-serial round trip      {ms(serial_rtt)}")
    print(f"  virtio-serial one way (upper) {ms(serial_oneway)}")
    print(f"  console round trip            {ms(console_rtt)}")
    print(f"  console one way (upper)       {ms(console_oneway)}")
    ready_s = float(relayed["X_GUESTINIT_READY_S"])
    print(
        f"  guestinit READY over vsock: sent {ready_s:.4f}, received {result.notify['X_RELAY_READY_RECV_S']} "
        f"(listener bound at {result.notify['X_RELAY_BOUND_S']}) guest s"
    )


def test_ready_and_shutdown_on_console_from_cmdline_credential(kata_image: Path, tmp_path: Path) -> None:
    result = boot(
        BootOptions(
            image=kata_image,
            timeout_s=180,
            run_dir=tmp_path,
            shutdown=True,
            append="guestinit.notify= systemd.set_credential=vmm.notify_socket:console",
        )
    )
    assert result.ready, f"{result.error}; console: {Path(result.console_log).read_text()[-3000:]}"
    received = [(str(m["source"]), dict(m["fields"])) for m in result.messages]
    # Every message came as a console line, although the virtio-serial port exists too.
    assert received and all(source.startswith("console:") for source, _ in received)
    ready = next(fields for _, fields in received if fields.get("READY") == "1")
    assert ready["X_GUESTINIT_VERSION"] and float(ready["X_GUESTINIT_READY_S"]) > 0
    assert received[-1][1].get("X_SYSTEMD_SHUTDOWN") == "poweroff", received
    assert result.shutdown_s is not None
    events = [str(row["event"]) for row in timeline(result)]
    for event in ("vm start", "kernel start (est.)", "guestinit start", "phase early mounts", "READY sent"):
        assert event in events
    assert "received READY,STATUS" in events
    assert any(e.startswith("received X_SYSTEMD_SHUTDOWN") for e in events)
    print("\n" + format_timeline(result))
