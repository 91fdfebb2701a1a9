"""Send-to-report latency of the transports that run on this host, with the real Sender and
the real Listener (one clock). A measurement, not a speed goal: it asserts only that every
message arrived, and prints the numbers (pytest -s). The guest transports (AF_VSOCK loopback,
virtio-serial, console) are measured in tests/boot/test_notify_boot.py."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from guestinit.host.listen.listener import Listener
from guestinit.init.report import Sender
from guestinit.notify.address import Target

ROUNDS = 200


def measure(listener: Listener, sender: Sender, rounds: int = ROUNDS) -> list[float]:
    latencies = []
    for i in range(rounds):
        start = time.monotonic()
        assert sender.send({"READY": "1", "X_PROBE": str(i)})
        msg = listener.get(timeout=5)
        assert msg is not None and msg.fields["X_PROBE"] == str(i)
        latencies.append(msg.received - start)
    return latencies


def test_host_transport_latency(tmp_path: Path) -> None:
    uds = tmp_path / "hv.sock"
    cases = {
        "unix-dgram (sd_notify)": (
            f"unix-dgram:{tmp_path}/d.sock",
            Target("unix", path=f"{tmp_path}/d.sock"),
        ),
        "unix stream": (f"unix:{tmp_path}/s.sock", Target("unix", path=f"{tmp_path}/s.sock")),
        "hvsock (Firecracker UDS)": (f"hvsock:{uds}:1024", Target("unix", path=f"{uds}_1024")),
        "console file": (f"console:{tmp_path}/console.log", Target("console")),
    }
    (tmp_path / "console.log").write_bytes(b"")
    lines = []
    for name, (address, target) in cases.items():
        with Listener([address]) as listener:
            sender = Sender(target, console=str(tmp_path / "console.log"))
            rounds = ROUNDS if target.kind != "console" else 50
            ms = sorted(x * 1000 for x in measure(listener, sender, rounds))
        lines.append(
            f"  {name:26} median {statistics.median(ms):7.3f} ms  p90 {ms[int(len(ms) * 0.9)]:7.3f}"
            f"  max {ms[-1]:7.3f}  (n={len(ms)})"
        )
    print("\nsend -> report latency on this host:\n" + "\n".join(lines))
