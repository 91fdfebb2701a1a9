from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from guestinit.host import qemu
from guestinit.host.errors import UserError
from guestinit.host.media import combine_initrd, resolve_kernel


def _cfg(**kw: object) -> qemu.QemuConfig:
    base: dict[str, object] = {
        "kernel": Path("/k"),
        "initrd": Path("/i"),
        "append": "console=ttyS0",
        "notify_socket": Path("/tmp/n.sock"),
        "qmp_socket": Path("/tmp/q.sock"),
        "console_log": Path("/tmp/c.log"),
    }
    base.update(kw)
    return qemu.QemuConfig(**base)  # type: ignore[arg-type]


def _pairs(argv: list[str]) -> list[tuple[str, str]]:
    return [(argv[i], argv[i + 1]) for i in range(1, len(argv) - 1) if argv[i].startswith("-")]


def test_tcg_serial_argv() -> None:
    argv = qemu.qemu_argv(_cfg())
    pairs = _pairs(argv)
    assert ("-accel", "tcg") in pairs
    assert ("-machine", "q35") in pairs
    assert ("-cpu", "max") in pairs
    assert ("-kernel", "/k") in pairs and ("-initrd", "/i") in pairs
    assert ("-append", "console=ttyS0") in pairs
    assert ("-serial", "file:/tmp/c.log") in pairs
    assert ("-qmp", "unix:/tmp/q.sock,server=on,wait=off") in pairs
    assert ("-chardev", "socket,id=notify0,path=/tmp/n.sock,reconnect=1") in pairs
    assert ("-device", "virtserialport,bus=vser0.0,chardev=notify0,name=guestinit.notify") in pairs
    assert "vhost-vsock-pci" not in " ".join(argv)
    assert "-no-reboot" in argv


def test_kvm_vsock_argv() -> None:
    argv = qemu.qemu_argv(_cfg(accel="kvm", transport="vsock", vsock_cid=42))
    pairs = _pairs(argv)
    assert ("-accel", "kvm") in pairs and ("-cpu", "host") in pairs
    assert ("-device", "vhost-vsock-pci,id=vsock0,guest-cid=42") in pairs
    assert "virtio-serial-pci" not in " ".join(argv)
    assert qemu.notify_append("vsock", 9000) == "guestinit.notify=vsock-stream:2:9000"
    assert qemu.notify_append("serial") == "guestinit.notify=serial:guestinit.notify"


def test_unknown_transport_rejected() -> None:
    with pytest.raises(ValueError, match="transport"):
        qemu.qemu_argv(_cfg(transport="carrier-pigeon"))


def test_this_qemu_accepts_the_devices() -> None:
    """The devices and options we generate exist in this machine's QEMU."""
    binary = qemu.find_qemu()
    devices = subprocess.run([binary, "-device", "help"], capture_output=True, text=True).stdout
    for name in ("virtio-serial-pci", "virtserialport", "virtio-rng-pci", "vhost-vsock-pci"):
        assert f'"{name}"' in devices


@pytest.fixture
def no_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GUESTINIT_CACHE", str(tmp_path / "cache"))


def test_probe_kvm_sees_banner(fp, tmp_path: Path, no_cache: None, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(qemu.os, "access", lambda *a: True)
    monkeypatch.setattr(qemu.os.path, "exists", lambda p: True)
    monkeypatch.setattr(qemu.os, "stat", lambda p: type("S", (), {"st_rdev": 1})())
    fp.register(["qemu-system-x86_64", "--version"], stdout="QEMU emulator version 7.2.19\n")
    fp.register(["qemu-system-x86_64", fp.any()], stdout="[    0.000000] Linux version 6.12\n")
    usable, why = qemu.probe_kvm(tmp_path / "k", use_cache=False)
    assert usable and "banner" in why


def test_probe_kvm_failure_reason(
    fp, tmp_path: Path, no_cache: None, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(qemu.os, "access", lambda *a: True)
    monkeypatch.setattr(qemu.os.path, "exists", lambda p: True)
    monkeypatch.setattr(qemu.os, "stat", lambda p: type("S", (), {"st_rdev": 1})())
    fp.register(["qemu-system-x86_64", "--version"], stdout="QEMU emulator version 7.2.19\n")
    fp.register(
        ["qemu-system-x86_64", fp.any()],
        stderr="qemu-system-x86_64: error: failed to set MSR 0x10a to 0x0\n",
        returncode=1,
    )
    usable, why = qemu.probe_kvm(tmp_path / "k", use_cache=False)
    assert not usable and "MSR 0x10a" in why


def test_probe_kvm_without_dev_kvm(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(qemu.os.path, "exists", lambda p: False)
    assert qemu.probe_kvm(tmp_path / "k") == (False, "/dev/kvm does not exist")


def test_resolve_kernel(tmp_path: Path) -> None:
    image = tmp_path / "x.cpio.zst"
    image.write_bytes(b"")
    with pytest.raises(UserError, match="no kernel beside"):
        resolve_kernel(image, None)
    (tmp_path / "x.vmlinuz").write_bytes(b"k")
    assert resolve_kernel(image, None) == tmp_path / "x.vmlinuz"
    assert resolve_kernel(tmp_path / "x.cpio", None) == tmp_path / "x.vmlinuz"
    assert resolve_kernel(tmp_path / "x.cpio.lz4", None) == tmp_path / "x.vmlinuz"  # the default image's form


def _cpio(tmp_path: Path, name: str, content: bytes) -> Path:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    (src / name).write_bytes(content)
    out = tmp_path / f"{name}.cpio"
    subprocess.run(f"cd {src} && echo {name} | cpio -o -H newc --quiet > {out}", shell=True, check=True)
    return out


def test_combine_initrd_compresses_plain_cpio_after_zstd(tmp_path: Path) -> None:
    base = _cpio(tmp_path, "a", b"A")
    subprocess.run(["zstd", "-q", str(base), "-o", str(tmp_path / "img.cpio.zst")], check=True)
    extra = _cpio(tmp_path, "b", b"B")
    out = combine_initrd(tmp_path / "img.cpio.zst", [extra], tmp_path / "out.img")
    # one multi-frame zstd stream that decompresses to both archives
    data = subprocess.run(["zstd", "-dc", str(out)], capture_output=True, check=True).stdout
    assert data == base.read_bytes() + extra.read_bytes()


def test_combine_initrd_decompresses_zstd_extra_after_plain_image(tmp_path: Path) -> None:
    base = _cpio(tmp_path, "a", b"A")
    extra = _cpio(tmp_path, "b", b"B")
    subprocess.run(["zstd", "-q", str(extra), "-o", str(tmp_path / "b.cpio.zst")], check=True)
    plain = _cpio(tmp_path, "c", b"C")
    out = combine_initrd(base, [tmp_path / "b.cpio.zst", plain], tmp_path / "out.img")
    # the initrd stays plain: the kernel reads it with no decoder
    assert out.read_bytes() == base.read_bytes() + extra.read_bytes() + plain.read_bytes()


def test_combine_initrd_keeps_an_lz4_image_lz4_to_the_end(tmp_path: Path) -> None:
    """The kernel's lz4 reader takes everything after an lz4 image as more legacy frames: plain
    and zstd extras are packed with lz4 -l, and the whole decompresses to the three archives."""
    base = _cpio(tmp_path, "a", b"A")
    image = tmp_path / "img.cpio.lz4"
    subprocess.run(["lz4", "-q", "-l", "-9", str(base), str(image)], check=True)
    extra = _cpio(tmp_path, "b", b"B")
    subprocess.run(["zstd", "-q", str(extra), "-o", str(tmp_path / "b.cpio.zst")], check=True)
    plain = _cpio(tmp_path, "c", b"C")
    out = combine_initrd(image, [tmp_path / "b.cpio.zst", plain], tmp_path / "out.img")
    data = out.read_bytes()
    assert data.startswith(image.read_bytes()) and data.count(b"\x02\x21\x4c\x18") == 3
    unpacked = subprocess.run(["lz4", "-dc", str(out)], capture_output=True, check=True).stdout
    assert unpacked == base.read_bytes() + extra.read_bytes() + plain.read_bytes()


@pytest.mark.parametrize(
    ("name", "content", "expect"),
    [
        (
            "broken.cpio.zst",
            b"\x28\xb5\x2f\xfd" + b"\xff" * 16,
            r"broken\.cpio\.zst: corrupt or truncated zstd data",
        ),
        (
            "broken.cpio.lz4",
            b"\x02\x21\x4c\x18\x10\x00\x00\x00abc",
            r"broken\.cpio\.lz4: corrupt or truncated lz4 data",
        ),
        ("junk", b"hello", r"junk is not a newc cpio \(plain or compressed\)"),
    ],
)
def test_combine_initrd_refuses_a_bad_extra_and_writes_nothing(
    tmp_path: Path, name: str, content: bytes, expect: str
) -> None:
    base = _cpio(tmp_path, "a", b"A")
    bad = tmp_path / name
    bad.write_bytes(content)
    for image in (base, tmp_path / "img.cpio.lz4"):
        if image != base:
            subprocess.run(["lz4", "-q", "-l", str(base), str(image)], check=True)
        with pytest.raises(UserError, match=expect) as caught:
            combine_initrd(image, [bad], tmp_path / "out.img")
        assert "\n" not in caught.value.line()
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("out")) == []


def test_only_a_kernel_death_before_init_is_retried(tmp_path: Path) -> None:
    from guestinit.host.boot import kernel_died_early
    from guestinit.host.result import BootResult

    console = tmp_path / "console.log"
    console.write_text(
        "[    1.109615] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI\n"
        "[    1.113036] Kernel panic - not syncing: Fatal exception in interrupt\n"
    )
    died = BootResult(console_log=str(console))
    assert kernel_died_early(died) == "Oops: int3: 0000 [#1] PREEMPT SMP NOPTI"
    reported = BootResult(console_log=str(console), messages=[{"fields": {"STATUS": "x"}}])
    assert kernel_died_early(reported) is None  # init ran: whatever followed is not the kernel's
    console.write_text("[ 3.1] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100\n")
    assert (
        kernel_died_early(BootResult(console_log=str(console))) is None
    )  # our init died: a bug, not retried
    console.write_text("[ 3.1] clean\n")
    assert kernel_died_early(BootResult(console_log=str(console))) is None


def test_a_root_disk_is_attached_read_only_on_virtio_blk_without_an_initrd(tmp_path: Path) -> None:
    cfg = qemu.QemuConfig(
        kernel=tmp_path / "k",
        initrd=None,
        disk=tmp_path / "guestinit-kata.img",
        append="root=/dev/vda1",
        notify_socket=tmp_path / "n.sock",
    )
    argv = qemu.qemu_argv(cfg)
    assert "-initrd" not in argv
    drive = argv[argv.index("-drive") + 1]
    assert drive == f"id=rootfs,file={tmp_path / 'guestinit-kata.img'},if=none,format=raw,readonly=on"
    assert argv[argv.index("-drive") + 2 : argv.index("-drive") + 4] == [
        "-device",
        "virtio-blk-pci,drive=rootfs",
    ]


def test_image_form_is_told_by_content(tmp_path: Path) -> None:
    from guestinit.host import media
    from guestinit.host.build import erofs

    cpio = tmp_path / "kata-containers-initrd.img"  # Kata names its initrds .img too
    cpio.write_bytes(b"070701" + bytes(600))
    disk = tmp_path / "kata-containers.img"
    disk.write_bytes(erofs.mbr(1, 2048, 8) + bytes(4096))
    assert media.image_form(cpio) == "initrd" and media.image_form(disk) == "image"
    lz4 = tmp_path / "initrd.lz4"  # `lz4 -l`, the legacy frames the kernel reads
    lz4.write_bytes(b"\x02\x21\x4c\x18" + bytes(600))
    assert media.image_form(lz4) == "initrd"
    junk = tmp_path / "junk"
    junk.write_bytes(b"hello")
    with pytest.raises(UserError, match="neither an initrd"):
        media.image_form(junk)


@pytest.mark.parametrize(("text", "want"), [("0", 0), ("3", 3), ("255", 255)])
def test_boot_reads_exit_status_as_plain_decimal(text: str, want: int) -> None:
    from guestinit.host.boot import _absorb
    from guestinit.host.listen.messages import Message
    from guestinit.host.result import BootResult

    result = BootResult()
    _absorb(Message({"EXIT_STATUS": text}, 1.0, "serial:x"), result, 0.0)
    assert result.exit_status == want and result.error == ""


@pytest.mark.parametrize("text", ["1_0", "٣", " 7 ", "-1", "256", ""])
def test_boot_reports_an_exit_status_it_cannot_read_as_received(text: str) -> None:
    from guestinit.host.boot import _absorb
    from guestinit.host.listen.messages import Message
    from guestinit.host.result import BootResult

    result = BootResult()
    _absorb(Message({"EXIT_STATUS": text}, 1.0, "serial:x"), result, 0.0)
    assert result.exit_status == 1  # a failure all the same: the guest did not say 0
    assert "is not a decimal number 0..255" in result.error
    assert text.encode("ascii", "backslashreplace").decode() in result.error  # what it received, escaped


def test_single_threaded_tcg_is_one_accel_option_and_only_for_tcg() -> None:
    assert ("-accel", "tcg,thread=single") in _pairs(qemu.qemu_argv(_cfg(tcg_threads="single")))
    assert ("-accel", "tcg") in _pairs(qemu.qemu_argv(_cfg(tcg_threads="multi")))
    kvm = _pairs(qemu.qemu_argv(_cfg(accel="kvm", tcg_threads="single")))
    assert ("-accel", "kvm") in kvm  # KVM has no TCG threads to choose


def test_auto_tcg_threads_are_single_when_there_is_more_than_one_vcpu() -> None:
    threads, why = qemu.tcg_threads("auto", 2)
    assert threads == "single" and "patched" in why
    assert qemu.tcg_threads("auto", 8)[0] == "single"
    assert qemu.tcg_threads("auto", 1) == ("multi", "one vCPU")  # nothing to race with
    assert qemu.tcg_threads("multi", 2) == ("multi", "--tcg-threads multi")
    assert qemu.tcg_threads("single", 1) == ("single", "--tcg-threads single")


def test_the_thread_mode_and_its_reason_are_for_tcg_alone() -> None:
    # guestctl boot and the bench both take their mode and accel_why's words from here
    assert qemu.accel_threads("kvm", "single", 2) == ("", "")
    threads, note = qemu.accel_threads("tcg", "auto", 2)
    assert threads == "single" and note == f"; single-threaded ({qemu.tcg_threads('auto', 2)[1]})"
    assert qemu.accel_threads("tcg", "multi", 2) == ("multi", "; multi-threaded (--tcg-threads multi)")


def test_guestctl_boot_takes_tcg_threads_and_refuses_others(capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    p = argparse.ArgumentParser(prog="guestctl boot")
    qemu.add_accel_options(p)
    assert p.parse_args([]).tcg_threads == "auto"
    assert p.parse_args(["--tcg-threads", "multi"]).tcg_threads == "multi"
    with pytest.raises(SystemExit) as exited:
        p.parse_args(["--tcg-threads", "many"])
    assert exited.value.code == 2
    assert "--tcg-threads: invalid choice: 'many'" in capsys.readouterr().err
