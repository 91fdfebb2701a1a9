"""``guestctl listen ADDRESS... [--json] [--timeout S]``: wait for a guest's READY.

Prints each message with its receive time as it arrives; exits 0 on ``READY=1``, with the value
of a non-zero ``EXIT_STATUS`` that arrives first, 2 on timeout. Understands guestinit, systemd
guests (``vmm.notify_socket``) and host-side sd_notify clients (``systemd-notify``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from typing import NoReturn, TextIO

from guestinit.host.errors import UserError
from guestinit.host.listen.endpoint import FORMS
from guestinit.host.listen.limits import LIMIT_FACTS, Limits
from guestinit.host.listen.listener import Listener
from guestinit.host.listen.messages import Message
from guestinit.notify.message import exit_status

EXIT_READY = 0
EXIT_TIMEOUT = 2
EXIT_USAGE = 64  # EX_USAGE: bad option or address (2 is taken by the timeout)
EXIT_INTERRUPTED = 130

EPILOG_ADDRESSES = """\
addresses:
  vsock:PORT            AF_VSOCK stream on any CID (guest: vsock-stream:2:PORT)
  vsock-seqpacket:PORT  AF_VSOCK seqpacket on any CID, one message per record (guest:
                        vsock-seqpacket:2:PORT, or vsock:2:PORT from systemd on virtio-vsock)
  unix:PATH             Unix stream socket, one message per connection
  unix-dgram:PATH       Unix datagram socket: NOTIFY_SOCKET for sd_notify(3) / systemd-notify
                        (@NAME: abstract socket)
  hvsock:UDS_PATH:PORT  Firecracker / Cloud Hypervisor hybrid vsock: guest connections to
                        PORT arrive on UDS_PATH_PORT
  serial:PATH           QEMU virtio-serial chardev socket (QEMU connects; messages end with
                        an empty line)
  console:PATH          the guest's serial console log (QEMU -serial file:PATH): lines marked
                        GUESTINIT-NOTIFY
"""

EPILOG_EXIT = """\
exit status:
  0   READY=1 arrived
  N   a non-zero EXIT_STATUS=N arrived first (N: decimal 1..255; anything else
      is reported as received and exits 1)
  2   --timeout passed without either
  64  bad option or address
  130 interrupted
"""


def _limits_epilog() -> str:
    lines = [
        "limits: input beyond these, invalid UTF-8 and lines without '=' are dropped and logged",
        "on stderr (rate-limited), never fatal; the --max-*, --read-timeout and --log-rate options",
        "above set the others.",
    ]
    lines += [f"  {fact}" for fact in LIMIT_FACTS]
    return "\n".join(lines) + "\n"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"guestctl listen: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="guestctl listen",
        description="Receive readiness messages (systemd's notify protocol) from guests and host "
        "services; print each with its receive time; exit when READY=1 or a failing EXIT_STATUS "
        "arrives.",
        epilog="\n".join((EPILOG_ADDRESSES, _limits_epilog(), EPILOG_EXIT)),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("address", nargs="+", metavar="ADDRESS", help=f"where to listen: {FORMS}")
    parser.add_argument("--json", action="store_true", help="one JSON object per line (JSON Lines)")
    parser.add_argument(
        "--timeout", type=_positive, metavar="S", help="give up after S seconds (exit 2); default: wait"
    )
    for name, flag, default, text in Limits.table():
        parse = _positive if isinstance(default, float) else _positive_int
        metavar = "S" if isinstance(default, float) else "N"
        parser.add_argument(
            flag, dest=name, type=parse, default=default, metavar=metavar, help=f"{text} (default {default})"
        )
    return parser


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be greater than 0")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be greater than 0")
    return value


def decide(fields: dict[str, str]) -> tuple[int | None, str, str]:
    """(exit status, outcome, what to say) a message decides; (None, "", "") when it decides
    nothing. A non-zero EXIT_STATUS wins over READY in the same message; one that is not
    decimal 0..255 is a failure too (the guest did not say 0), reported as it was received."""
    if "EXIT_STATUS" in fields:
        try:
            status = exit_status(fields["EXIT_STATUS"])
        except ValueError as exc:
            return 1, "bad_exit_status", f"{exc}: exiting 1"
        if status != 0:
            return status, "exit_status", f"EXIT_STATUS={status}"
    if fields.get("READY") == "1":
        return EXIT_READY, "ready", ""
    return None, "", ""


def verdict(fields: dict[str, str]) -> int | None:
    """The exit status a message decides, or None when it decides nothing."""
    return decide(fields)[0]


def printable(text: str) -> str:
    """``text`` safe for a terminal: control, format (bidi) and other invisible characters escaped."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def _stamp(wall: float) -> str:
    return datetime.datetime.fromtimestamp(wall, datetime.UTC).isoformat(timespec="microseconds")


def print_message(msg: Message, since_s: float, as_json: bool, out: TextIO) -> None:
    if as_json:
        record = {
            "event": "message",
            "received": _stamp(msg.wall),
            "received_s": round(since_s, 6),
            "source": msg.source,
            "fields": msg.fields,
            "dropped": msg.dropped,
        }
        out.write(json.dumps(record) + "\n")
    else:
        out.write(f"+{since_s:.6f} s  {_stamp(msg.wall)}  {printable(msg.source)}\n")
        for key, value in msg.fields.items():
            out.write(f"    {key}={printable(value)}\n")
        for reason in msg.dropped:
            out.write(f"    (dropped: {printable(reason)})\n")
    out.flush()


def _finish(as_json: bool, outcome: str, code: int, detail: str, out: TextIO, reason: str = "") -> int:
    if as_json:
        record: dict[str, object] = {"event": "exit", "outcome": outcome, "exit_status": code}
        if reason:
            record["reason"] = reason
        out.write(json.dumps(record) + "\n")
        out.flush()
    if detail:
        print(f"guestctl listen: {detail}", file=sys.stderr, flush=True)
    return code


def listen(args: argparse.Namespace, out: TextIO) -> int:
    limits = Limits(**{name: getattr(args, name) for name, _, _, _ in Limits.table()})
    listener = Listener(
        args.address,
        limits,
        on_log=lambda line: print(f"guestctl listen: {printable(line)}", file=sys.stderr),
    )
    start = time.monotonic()  # before the listener serves: no receive time is negative
    with listener:
        if not args.json:
            names = ", ".join(str(ep) for ep in listener.endpoints)
            print(f"guestctl listen: listening on {names}", file=sys.stderr, flush=True)
        deadline = None if args.timeout is None else start + args.timeout
        while True:
            wait = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
            if wait <= 0:
                return _finish(args.json, "timeout", EXIT_TIMEOUT, f"no READY within {args.timeout:g} s", out)
            msg = listener.get(timeout=wait)
            if msg is None:
                continue
            print_message(msg, msg.received - start, args.json, out)
            code, outcome, why = decide(msg.fields)
            if code == EXIT_READY:
                return _finish(args.json, outcome, code, "", out)
            if code is not None:
                status = printable(msg.fields.get("STATUS", ""))
                reason = why if outcome == "bad_exit_status" else ""
                return _finish(args.json, outcome, code, f"{why} {status}".strip(), out, reason)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return listen(args, sys.stdout)
    except UserError as exc:
        print(f"guestctl listen: {exc.line()}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("guestctl listen: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return 141  # stdout closed by the reader: nothing left to report to


if __name__ == "__main__":
    raise SystemExit(main())
