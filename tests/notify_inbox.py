"""Receiving the init's notify messages in tests that run the whole init on a temporary root
(tests/init/test_pid1.py, tests/gpu/test_gpu_boot.py): a Unix datagram socket the init sends
to (guestinit.notify=unix:PATH), and waiting for the first message with a given key."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

from guestinit.notify.message import parse


def wait_for(
    sock: socket.socket,
    received: list[dict[str, str]],
    key: str,
    timeout: float,
    context: Callable[[], str],
) -> dict[str, str]:
    """The first message (received so far, or next on ``sock``) that has ``key``; every
    message read is appended to ``received``. Fails with ``context()`` (e.g. the kmsg tail)."""
    for msg in received:
        if key in msg:
            return msg
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            data = sock.recv(65536)
        except TimeoutError:
            break
        msg = parse(data).fields
        received.append(msg)
        if key in msg:
            return msg
    raise AssertionError(f"no {key} within {timeout} s; got {received}; kmsg:\n{context()}")
