"""systemd's ``vmm.notify_socket`` credential, read from every place systemd reads it (guest side).

A VMM that speaks systemd's protocol (``mkosi vm``, ``systemd-vmspawn``) tells the guest where to
send READY by passing the credential ``vmm.notify_socket`` (references §3). systemd imports
credentials in this order and keeps the first one of each name (import-creds.c):

1. QEMU fw_cfg: ``/sys/firmware/qemu_fw_cfg/by_name/opt/io.systemd.credentials/NAME/{size,raw}``
   (QEMU ``-fw_cfg name=opt/io.systemd.credentials/NAME,string=...``; needs ``qemu_fw_cfg.ko``);
2. SMBIOS type 11 OEM strings: ``/sys/firmware/dmi/entries/11-N/raw``, strings
   ``io.systemd.credential:NAME=VALUE`` or ``io.systemd.credential.binary:NAME=BASE64``
   (QEMU ``-smbios type=11,value=...``);
3. the kernel command line: ``systemd.set_credential=NAME:VALUE`` and
   ``systemd.set_credential_binary=NAME:BASE64``.

Parsing is pure; reading goes through a path map (``guestinit.init.root.Root`` or any callable
mapping a guest path to a real one), so the same code runs in a guest and against fixture files.
Nothing here raises on bad input: problems are returned as one-line strings.
"""

from __future__ import annotations

import binascii  # not base64: that module imports re, which the boot path avoids
import os

TYPE_CHECKING = False  # collections.abc is not imported on the boot path; mypy reads this as usual
if TYPE_CHECKING:
    from collections.abc import Callable

    PathMap = Callable[[str], str]

NOTIFY_CREDENTIAL = "vmm.notify_socket"
FW_CFG_DIR = "/sys/firmware/qemu_fw_cfg/by_name/opt/io.systemd.credentials"
DMI_ENTRIES = "/sys/firmware/dmi/entries"
SMBIOS_PREFIX = b"io.systemd.credential:"
SMBIOS_BINARY_PREFIX = b"io.systemd.credential.binary:"
CMDLINE_KEY = "systemd.set_credential"
CMDLINE_BINARY_KEY = "systemd.set_credential_binary"
# systemd allows 1 MiB per credential; a notify address is a few dozen bytes, so larger values
# are refused before they are read into memory.
MAX_CREDENTIAL_BYTES = 4096
MAX_SMBIOS_ENTRY_BYTES = 64 * 1024
MAX_SMBIOS_ENTRIES = 256
SMBIOS_HEADER_BYTES = 5  # type, length, handle (2), string count

Credential = tuple[str, bytes]


def credential_name_valid(name: str) -> bool:
    """systemd's credential_name_valid(): a valid file name that is also a valid fd name
    (printable ASCII without ':', at most 255 bytes, not '.' or '..', no '/')."""
    return (
        0 < len(name) <= 255
        and name not in (".", "..")
        and all(" " <= c <= "~" and c not in ":/" for c in name)
    )


def _unbase64(text: bytes) -> bytes | None:
    compact = b"".join(text.split())  # systemd's unbase64mem() skips whitespace
    compact += b"=" * (-len(compact) % 4)
    try:
        return binascii.a2b_base64(compact, strict_mode=True)
    except (binascii.Error, ValueError):
        return None


def parse_smbios_strings(data: bytes, problems: list[str]) -> list[Credential]:
    """The credentials in a packed series of NUL-terminated SMBIOS OEM strings."""
    found: list[Credential] = []
    for string in data.split(b"\0"):
        if not string:
            continue
        if string.startswith(SMBIOS_PREFIX):
            rest, binary = string[len(SMBIOS_PREFIX) :], False
        elif string.startswith(SMBIOS_BINARY_PREFIX):
            rest, binary = string[len(SMBIOS_BINARY_PREFIX) :], True
        else:
            continue  # some other OEM string
        name_bytes, sep, value = rest.partition(b"=")
        name = name_bytes.decode("ascii", errors="replace")
        if not sep:
            problems.append(f"SMBIOS OEM string for credential {name[:64]!r} lacks '=': ignored")
            continue
        if not credential_name_valid(name):
            problems.append(f"SMBIOS credential name {name[:64]!r} is not valid: ignored")
            continue
        if binary:
            decoded = _unbase64(value)
            if decoded is None:
                problems.append(f"SMBIOS credential {name!r}: value is not base64: ignored")
                continue
            value = decoded
        found.append((name, value))
    return found


def parse_smbios_type11(raw: bytes, problems: list[str]) -> list[Credential] | None:
    """One DMI type 11 entry (the ``raw`` file): a 5-byte header (type 11, length 5, handle,
    count) then the strings. None when the header is not that (systemd stops reading there)."""
    if len(raw) < SMBIOS_HEADER_BYTES or raw[0] != 11 or raw[1] != SMBIOS_HEADER_BYTES:
        problems.append("SMBIOS type 11 entry has an unexpected header: stopped reading OEM strings")
        return None
    return parse_smbios_strings(raw[SMBIOS_HEADER_BYTES:], problems)


def parse_cmdline_credentials(words: list[str], problems: list[str]) -> list[Credential]:
    """``systemd.set_credential=NAME:VALUE`` / ``systemd.set_credential_binary=NAME:BASE64``
    from the words of a kernel command line (systemd treats '-' and '_' in keys alike)."""
    found: list[Credential] = []
    for word in words:
        key, _, value = word.partition("=")
        key = key.replace("-", "_")
        if key == CMDLINE_KEY:
            binary = False
        elif key == CMDLINE_BINARY_KEY:
            binary = True
        else:
            continue
        name, sep, data = value.partition(":")
        if not sep:
            problems.append(f"{word[:80]!r} lacks ':' between name and value: ignored")
            continue
        if not credential_name_valid(name):
            problems.append(f"{key}: credential name {name[:64]!r} is not valid: ignored")
            continue
        if binary:
            decoded = _unbase64(data.encode("utf-8", errors="surrogateescape"))
            if decoded is None:
                problems.append(f"{key}: value of {name!r} is not base64: ignored")
                continue
            found.append((name, decoded))
        else:
            found.append((name, data.encode("utf-8", errors="surrogateescape")))
    return found


def _read_bounded(path: str, limit: int) -> bytes | None:
    """Up to limit + 1 bytes of a file (sysfs files report size 0, so read, don't stat)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        chunks: list[bytes] = []
        total = 0
        while total <= limit:
            chunk = os.read(fd, limit + 1 - total)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def read_fw_cfg(root: PathMap, name: str, problems: list[str]) -> bytes | None:
    """The credential ``name`` from QEMU's fw_cfg, or None."""
    entry = f"{FW_CFG_DIR}/{name}"
    size_text = _read_bounded(root(f"{entry}/size"), 32)
    if size_text is None:
        return None
    try:
        size = int(size_text.strip())
    except ValueError:
        problems.append(f"fw_cfg credential {name!r}: size {size_text[:32]!r} is not a number: ignored")
        return None
    if not 0 <= size <= MAX_CREDENTIAL_BYTES:
        problems.append(f"fw_cfg credential {name!r}: {size} bytes, over {MAX_CREDENTIAL_BYTES}: ignored")
        return None
    data = _read_bounded(root(f"{entry}/raw"), size)
    if data is None:
        problems.append(f"fw_cfg credential {name!r}: cannot read raw: ignored")
        return None
    return data[:size]


def read_smbios(root: PathMap, problems: list[str]) -> list[Credential]:
    """Every credential in the SMBIOS type 11 entries, in table order."""
    found: list[Credential] = []
    for index in range(MAX_SMBIOS_ENTRIES):
        raw = _read_bounded(root(f"{DMI_ENTRIES}/11-{index}/raw"), MAX_SMBIOS_ENTRY_BYTES)
        if raw is None:
            break
        if len(raw) > MAX_SMBIOS_ENTRY_BYTES:
            problems.append(f"SMBIOS entry 11-{index} is over {MAX_SMBIOS_ENTRY_BYTES} bytes: stopped")
            break
        credentials = parse_smbios_type11(raw, problems)
        if credentials is None:
            break
        found.extend(credentials)
    return found


class Lookup:
    """Where a credential was found (``source`` empty when it was not) and what went wrong."""

    __slots__ = ("problems", "source", "value")

    def __init__(self) -> None:
        self.value: bytes | None = None
        self.source = ""
        self.problems: list[str] = []

    def __repr__(self) -> str:
        return f"Lookup(value={self.value!r}, source={self.source!r}, problems={self.problems!r})"


def lookup(root: PathMap, cmdline_words: list[str], name: str) -> Lookup:
    """The credential ``name`` as systemd would import it: fw_cfg, then SMBIOS, then the
    kernel command line; the first one found wins."""
    out = Lookup()
    value = read_fw_cfg(root, name, out.problems)
    if value is not None:
        out.value, out.source = value, "fw_cfg"
        return out
    for found_name, found_value in read_smbios(root, out.problems):
        if found_name == name:
            out.value, out.source = found_value, "SMBIOS type 11"
            return out
    for found_name, found_value in parse_cmdline_credentials(cmdline_words, out.problems):
        if found_name == name:
            out.value, out.source = found_value, "kernel command line"
            return out
    return out


def notify_socket(root: PathMap, cmdline_words: list[str]) -> tuple[str, str, list[str]]:
    """(address, source, problems) of ``vmm.notify_socket``; address empty when absent.
    Surrounding whitespace is ignored; an empty value means "not set", as in systemd."""
    found = lookup(root, cmdline_words, NOTIFY_CREDENTIAL)
    if found.value is None:
        return "", "", found.problems
    try:
        text = found.value.decode("utf-8").strip()
    except UnicodeDecodeError:
        found.problems.append(f"{NOTIFY_CREDENTIAL} from {found.source} is not UTF-8: ignored")
        return "", "", found.problems
    if "\0" in text:
        found.problems.append(f"{NOTIFY_CREDENTIAL} from {found.source} contains NUL: ignored")
        return "", "", found.problems
    return text, (found.source if text else ""), found.problems
