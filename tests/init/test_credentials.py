"""systemd's vmm.notify_socket credential from fw_cfg, SMBIOS type 11 and the kernel command line,
read from fixture trees written in exactly the formats the kernel exposes."""

from __future__ import annotations

import base64
import struct
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from guestinit.init import params
from guestinit.init.boot import choose_target
from guestinit.init.root import Root
from guestinit.notify import credentials
from guestinit.notify.address import Target


def smbios_type11(*strings: bytes, handle: int = 0x0B00) -> bytes:
    """A DMI type 11 (OEM Strings) structure as /sys/firmware/dmi/entries/11-N/raw holds it:
    type, length (5), handle (LE16), string count, then the NUL-terminated strings and the
    extra NUL that ends the string set (SMBIOS 3.x, §6.1.3 and §7.12)."""
    header = struct.pack("<BBHB", 11, 5, handle, len(strings))
    body = b"".join(s + b"\0" for s in strings) + (b"\0" if strings else b"\0\0")
    return header + body


def write_smbios(root: Path, index: int, raw: bytes) -> None:
    entry = root / f"sys/firmware/dmi/entries/11-{index}"
    entry.mkdir(parents=True)
    (entry / "raw").write_bytes(raw)
    (entry / "type").write_text("11\n")
    (entry / "length").write_text("5\n")


def write_fw_cfg(root: Path, name: str, data: bytes) -> None:
    """/sys/firmware/qemu_fw_cfg/by_name splits the fw_cfg file name at '/' into directories;
    each leaf holds key, name, size and raw (qemu_fw_cfg.c)."""
    entry = root / "sys/firmware/qemu_fw_cfg/by_name/opt/io.systemd.credentials" / name
    entry.mkdir(parents=True)
    (entry / "raw").write_bytes(data)
    (entry / "size").write_text(f"{len(data)}\n")
    (entry / "name").write_text(f"opt/io.systemd.credentials/{name}\n")
    (entry / "key").write_text("32\n")


def b64(text: str) -> bytes:
    return base64.b64encode(text.encode())


def test_smbios_binary_credential_like_qemu_smbios_type11(tmp_path: Path) -> None:
    raw = smbios_type11(
        b"some vendor string",
        b"io.systemd.credential.binary:vmm.notify_socket=" + b64("vsock-stream:2:4242"),
        b"io.systemd.credential:other=x",
    )
    write_smbios(tmp_path, 0, raw)
    address, source, problems = credentials.notify_socket(Root(tmp_path), [])
    assert (address, source, problems) == ("vsock-stream:2:4242", "SMBIOS type 11", [])


def test_smbios_text_credential_in_second_entry(tmp_path: Path) -> None:
    write_smbios(tmp_path, 0, smbios_type11(b"io.systemd.credential:hostname=g1"))
    write_smbios(tmp_path, 1, smbios_type11(b"io.systemd.credential:vmm.notify_socket=serial:x.y"))
    assert credentials.notify_socket(Root(tmp_path), [])[:2] == ("serial:x.y", "SMBIOS type 11")


def test_smbios_bad_entries_are_reported_not_raised(tmp_path: Path) -> None:
    problems: list[str] = []
    found = credentials.parse_smbios_strings(
        b"io.systemd.credential:noequals\0"
        b"io.systemd.credential:bad/name=1\0"
        b"io.systemd.credential.binary:vmm.notify_socket=***\0"
        b"io.systemd.credential:vmm.notify_socket=console\0",
        problems,
    )
    assert found == [("vmm.notify_socket", b"console")]
    assert len(problems) == 3 and all("ignored" in p for p in problems)


def test_smbios_wrong_header_stops_like_systemd(tmp_path: Path) -> None:
    raw = bytearray(smbios_type11(b"io.systemd.credential:vmm.notify_socket=console"))
    raw[1] = 6  # systemd requires length == 5
    write_smbios(tmp_path, 0, bytes(raw))
    write_smbios(tmp_path, 1, smbios_type11(b"io.systemd.credential:vmm.notify_socket=off"))
    address, _, problems = credentials.notify_socket(Root(tmp_path), [])
    assert address == ""
    assert "unexpected header" in problems[0]


def test_fw_cfg_wins_over_smbios_and_cmdline(tmp_path: Path) -> None:
    write_fw_cfg(tmp_path, "vmm.notify_socket", b"vsock:2:1000")
    write_smbios(tmp_path, 0, smbios_type11(b"io.systemd.credential:vmm.notify_socket=vsock:2:2000"))
    words = ["systemd.set_credential=vmm.notify_socket:vsock:2:3000"]
    assert credentials.notify_socket(Root(tmp_path), words)[:2] == ("vsock:2:1000", "fw_cfg")


def test_smbios_wins_over_cmdline(tmp_path: Path) -> None:
    write_smbios(tmp_path, 0, smbios_type11(b"io.systemd.credential:vmm.notify_socket=vsock:2:2000"))
    words = ["systemd.set_credential=vmm.notify_socket:vsock:2:3000"]
    assert credentials.notify_socket(Root(tmp_path), words)[:2] == ("vsock:2:2000", "SMBIOS type 11")


def test_fw_cfg_oversized_is_refused(tmp_path: Path) -> None:
    write_fw_cfg(tmp_path, "vmm.notify_socket", b"x" * (credentials.MAX_CREDENTIAL_BYTES + 1))
    address, _, problems = credentials.notify_socket(Root(tmp_path), [])
    assert address == "" and "over" in problems[0]


def test_cmdline_text_and_binary_credentials() -> None:
    words = params.split_cmdline(
        'quiet systemd.set_credential=hostname:a "systemd.set-credential-binary=vmm.notify_socket:'
        + b64("vsock-seqpacket:2:77").decode()
        + '" systemd.set_credential=nocolon'
    )
    problems: list[str] = []
    found = credentials.parse_cmdline_credentials(words, problems)
    assert found == [("hostname", b"a"), ("vmm.notify_socket", b"vsock-seqpacket:2:77")]
    assert "lacks ':'" in problems[0]


def test_first_cmdline_credential_wins(tmp_path: Path) -> None:
    words = [
        "systemd.set_credential=vmm.notify_socket:console",
        "systemd.set_credential=vmm.notify_socket:off",
    ]
    assert credentials.notify_socket(Root(tmp_path), words) == ("console", "kernel command line", [])


def test_empty_or_binary_garbage_value_means_unset(tmp_path: Path) -> None:
    assert credentials.notify_socket(Root(tmp_path), ["systemd.set_credential=vmm.notify_socket:"])[0] == ""
    garbage = base64.b64encode(b"\xff\xfe").decode()
    address, _, problems = credentials.notify_socket(
        Root(tmp_path), [f"systemd.set_credential_binary=vmm.notify_socket:{garbage}"]
    )
    assert address == "" and "not UTF-8" in problems[0]


@given(st.binary(max_size=2048))
def test_smbios_parser_never_raises(data: bytes) -> None:
    problems: list[str] = []
    credentials.parse_smbios_type11(data, problems)
    for name, _ in credentials.parse_smbios_strings(data, problems):
        assert credentials.credential_name_valid(name)


# choose_target: guestinit.notify= first, then the credential, then the virtio port, then console.


def _guest(tmp_path: Path, cmdline: str, port: bool = False) -> tuple[params.Config, Root]:
    (tmp_path / "proc").mkdir(parents=True, exist_ok=True)
    (tmp_path / "proc/cmdline").write_text(cmdline + "\n")
    if port:
        (tmp_path / "sys/class/virtio-ports/vport1p1").mkdir(parents=True)
        (tmp_path / "sys/class/virtio-ports/vport1p1/name").write_text("guestinit.notify\n")
    return params.parse_cmdline(cmdline), Root(tmp_path)


def test_choose_target_prefers_guestinit_notify(tmp_path: Path) -> None:
    config, root = _guest(
        tmp_path, "guestinit.notify=vsock-stream:2:9 systemd.set_credential=vmm.notify_socket:console"
    )
    assert choose_target(config, root) == (Target("vsock-stream", cid=2, port=9), "guestinit.notify")


def test_choose_target_uses_smbios_credential_over_virtio_port(tmp_path: Path) -> None:
    config, root = _guest(tmp_path, "quiet", port=True)
    raw = smbios_type11(b"io.systemd.credential.binary:vmm.notify_socket=" + b64("vsock-stream:2:8888"))
    write_smbios(tmp_path, 0, raw)
    target, source = choose_target(config, root)
    assert target == Target("vsock-stream", cid=2, port=8888)
    assert source == "vmm.notify_socket from SMBIOS type 11"


def test_choose_target_empty_guestinit_notify_means_auto(tmp_path: Path) -> None:
    config, root = _guest(
        tmp_path,
        "guestinit.notify=serial:x guestinit.notify= systemd.set_credential=vmm.notify_socket:console",
    )
    assert choose_target(config, root) == (Target("console"), "vmm.notify_socket from kernel command line")


def test_choose_target_bad_credential_falls_back_to_console(tmp_path: Path) -> None:
    config, root = _guest(tmp_path, "systemd.set_credential=vmm.notify_socket:tcp:1:2", port=True)
    target, source = choose_target(config, root)
    assert target == Target("console") and "'tcp:1:2'" in source


def test_choose_target_without_credential(tmp_path: Path) -> None:
    config, root = _guest(tmp_path, "quiet", port=True)
    assert choose_target(config, root) == (Target("serial", path="guestinit.notify"), "virtio-serial port")
    config, root = _guest(tmp_path / "bare", "quiet")
    assert choose_target(config, root) == (Target("console"), "console (no other transport found)")
