"""``signal`` and ``socket`` for the boot path: the C modules under them.

The Python modules ``signal`` and ``socket`` turn every constant into an enum member when they
are imported, and bring ``enum``, ``functools`` and ``collections`` with them: 93 ms and 37 ms
of a TCG boot (``python3 -X importtime`` as the guest's PID 1). ``_signal`` and ``_socket`` have
the same functions and constants as plain ints. Differences the callers keep in mind:
``_socket.socket`` is no context manager and has ``_accept`` instead of ``accept``; signal
names come from :func:`signal_name`, not ``signal.Signals``.

mypy checks the callers against the full modules' stubs (typeshed has none for ``_signal``).
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal
    import socket
else:
    import _signal as signal
    import _socket as socket

__all__ = ["signal", "signal_name", "socket"]

_ALIASES = frozenset({"SIGIOT", "SIGPOLL", "SIGCLD"})  # signal.Signals names the other spelling
_names: dict[int, str] = {}


def signal_name(signo: int) -> str:
    """``SIGTERM`` for 15, as ``signal.Signals(signo).name`` says it; ``signal 99`` otherwise."""
    if not _names:
        for name in dir(signal):
            if name.startswith("SIG") and not name.startswith("SIG_") and name not in _ALIASES:
                _names.setdefault(getattr(signal, name), name)
    return _names.get(signo, f"signal {signo}")
