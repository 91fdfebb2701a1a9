"""The guest half of tests/boot/test_notify_boot.py: this file runs INSIDE a test guest, never
on the host, and holds no tests. It is test-only content of an extra initrd: the product image
never carries host code. The image keeps only the standard library its own code imports, so
this file and its imports use nothing else (no statistics, no pathlib).

The test boots the Kata image with ``rdinit=/test-init``. /test-init forks this program and
execs the real /init (guestinit, still PID 1). This program then:

1. starts the real host Listener (a copy of the package guestinit/host/listen in the extra
   initrd) on AF_VSOCK stream port VSOCK_PORT and seqpacket port SEQPACKET_PORT, as soon as
   guestinit has loaded the vsock modules;
2. waits for guestinit's own READY: guestinit found ``vsock-stream:1:VSOCK_PORT`` in systemd's
   vmm.notify_socket credential (SMBIOS type 11) and sent it over the vsock loopback (CID 1);
3. measures send-to-report latency over AF_VSOCK loopback with the real Sender and Listener
   (same process, same clock) for each vsock address kind (PROBE_PLAN), and notes which
   endpoint each arrived on;
4. answers the host's pings over the virtio-serial port ``test.pong`` and the console, so the
   host can measure the serial and console transports by round trip;
5. relays guestinit's READY and the measurements to the host over the port ``guestinit.notify``.
Any failure is reported to the host as EXIT_STATUS=1 with the reason.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback

VSOCK_PORT = 7777
SEQPACKET_PORT = 7778
PROBES = 30
# (guest address kind, port): stream and seqpacket each to their listener; vsock: as systemd
# reads it (seqpacket on virtio-vsock) and its fall back to a stream listener; a type mismatch
# (refused) and datagrams (virtio-vsock has none).
PROBE_PLAN = (
    ("vsock-stream", VSOCK_PORT),
    ("vsock-seqpacket", SEQPACKET_PORT),
    ("vsock", SEQPACKET_PORT),
    ("vsock", VSOCK_PORT),
    ("vsock-seqpacket", VSOCK_PORT),
    ("vsock-dgram", VSOCK_PORT),
)


def boottime() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def stats(values: list[float]) -> dict[str, float]:
    ms = sorted(v * 1000 for v in values)
    middle = len(ms) // 2
    median = ms[middle] if len(ms) % 2 else (ms[middle - 1] + ms[middle]) / 2
    return {
        "median_ms": round(median, 3),
        "p90_ms": round(ms[int(len(ms) * 0.9) - 1 if len(ms) > 1 else 0], 3),
        "max_ms": round(ms[-1], 3),
    }


def measure_vsock(listener: object) -> dict[str, object]:
    from guestinit.host.listen.listener import Listener
    from guestinit.init.report import Sender
    from guestinit.notify.address import Target

    assert isinstance(listener, Listener)
    results: dict[str, object] = {}
    for kind, port in PROBE_PLAN:
        address = f"{kind}:1:{port}"
        sender = Sender(Target(kind, cid=1, port=port))
        latencies: list[float] = []
        sources: set[str] = set()
        error = ""
        for i in range(PROBES):
            start = time.monotonic()
            if not sender.send({"X_PROBE": f"{address} {i}"}):
                error = sender.last_error
                break
            msg = listener.get(timeout=5)
            if msg is None or msg.fields.get("X_PROBE") != f"{address} {i}":
                error = f"probe {i} not received: {msg}"
                break
            latencies.append(msg.received - start)
            sources.add(msg.source.split(" port ")[0])  # the peer port changes, the endpoint not
        entry: dict[str, object] = {"n": len(latencies), "error": error, "sources": sorted(sources)}
        if latencies:
            entry.update(stats(latencies))
        results[address] = entry
    return results


def answer_pings() -> int:
    from guestinit.init.report import Sender, find_virtio_port
    from guestinit.notify.address import Target

    device = find_virtio_port("/sys", "/dev", "test.ping")
    if device is None:
        raise RuntimeError("no virtio port named test.ping")
    fd = os.open(device, os.O_RDONLY)
    pong = Sender(Target("serial", path="test.pong"))
    console = Sender(Target("console"))
    pong.send({"X_PING_READY": "1"})
    pending = b""
    answered = 0
    while True:
        chunk = os.read(fd, 4096)
        if not chunk:
            time.sleep(0.01)
            continue
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            words = line.decode().split()
            if words == ["DONE"]:
                os.close(fd)
                return answered
            received = boottime()
            _, how, number = words
            sender = pong if how == "serial" else console
            sender.send(
                {"X_PONG": number, "X_PONG_RECV_S": f"{received:.6f}", "X_PONG_SENT_S": f"{boottime():.6f}"}
            )
            answered += 1


def main() -> None:
    sys.path.insert(0, "/usr/lib/python3/dist-packages")
    from guestinit.init.report import Sender
    from guestinit.notify.address import Target

    host = Sender(Target("serial", path="guestinit.notify"))
    try:
        from guestinit.host.errors import UserError
        from guestinit.host.listen.listener import Listener

        deadline = time.monotonic() + 120
        listener = None
        while listener is None:  # AF_VSOCK exists once guestinit has loaded vsock.ko
            try:
                listener = Listener([f"vsock:{VSOCK_PORT}", f"vsock-seqpacket:{SEQPACKET_PORT}"]).start()
            except UserError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.005)
        bound_s = boottime()
        ready = listener.get(timeout=120)
        if ready is None or ready.fields.get("READY") != "1":
            raise RuntimeError(f"no READY from guestinit over AF_VSOCK: {ready}")
        ready_recv_s = boottime() - (time.monotonic() - ready.received)
        vsock = measure_vsock(listener)
        listener.close()
        answered = answer_pings()
        host.send(
            {
                "READY": "1",
                "STATUS": "guestinit's READY relayed from AF_VSOCK loopback",
                "X_RELAY_SOURCE": ready.source,
                "X_RELAY_FIELDS": json.dumps(ready.fields, separators=(",", ":")),
                "X_RELAY_BOUND_S": f"{bound_s:.6f}",
                "X_RELAY_READY_RECV_S": f"{ready_recv_s:.6f}",
                "X_RELAY_VSOCK": json.dumps(vsock, separators=(",", ":")),
                "X_RELAY_PONGS": str(answered),
            }
        )
    except BaseException as exc:
        reason = f"{type(exc).__name__}: {exc} | " + " / ".join(traceback.format_exc().splitlines()[-4:])
        host.send({"EXIT_STATUS": "1", "STATUS": f"relay failed: {reason}"[:2000]})
    host.flush(30.0)


if __name__ == "__main__":
    main()
