"""guestinit: PID 1 for Kata GPU guests, the fabricmanager service VM's controller, and host tools.

Subpackages by where they run: ``init`` (guest PID 1, stdlib first), ``notify`` (the readiness
protocol, shared by both ends), ``fabric`` (service VM), ``host`` (never imported by ``init``).
"""

__version__ = "0.1.0"
