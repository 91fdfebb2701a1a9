"""The two baselines ``guestctl bench`` boots beside the guestinit image.

- ``busybox``: the floor. A newc cpio holding only the host's static busybox, a shell
  ``/init`` and three device nodes, uncompressed like the image. Built here in Python from
  ``/bin/busybox`` (Debian's busybox-static) and cached under ~/.cache/guestinit/baselines,
  keyed by a digest of busybox and the script.
- ``systemd``: the same Debian trixie userland as the guestinit image (python3-minimal,
  libpython3.13-stdlib, kmod, the same kernel modules) with systemd as ``/init``, built by mkosi
  from baselines/systemd/ and cached the same way. A oneshot unit after multi-user.target
  reports READY on the virtio-serial port (where vsock exists, systemd's own
  ``vmm.notify_socket`` credential does it instead).

Both report READY to the same host listener as guestinit, in the same format, with the same
keys for the guest's clock: ``X_GUESTINIT_READY_S`` (uptime at READY) and
``X_GUESTINIT_EXEC_S`` (the kernel's "Run /init as init process" record).
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TextIO

from guestinit.atomicfile import write_atomic
from guestinit.host.build import newc
from guestinit.host.build.images import cache_dir, mkosi_python_path, repo_root, sha256_file
from guestinit.host.build.newc import S_IFCHR, S_IFDIR, S_IFLNK, S_IFREG, Entry
from guestinit.host.build.trim import elf_needed
from guestinit.host.errors import UserError

BUSYBOX = Path("/bin/busybox")
SYSTEMD_DIR = "baselines/systemd"
SYSTEMD_ID = "baseline-systemd"
# Extra kernel command-line keys systemd needs without udev and without a terminal: the
# first-boot wizard would wait for a key, and serial-getty would wait for a device unit that
# never appears. Given to every image in a bench run so the command lines stay identical.
SYSTEMD_APPEND = "systemd.firstboot=off systemd.mask=serial-getty@ttyS0.service"

# The floor's PID 1. Mounts what finding the notify port needs, stamps the uptime (READY), reads
# the memory in use and the kernel's exec record, and writes one notify message ending with a
# blank line.
BUSYBOX_INIT = r"""#!/bin/busybox sh
# guestctl bench floor: a busybox shell as PID 1 doing only what reporting READY needs.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
port=
for d in /sys/class/virtio-ports/*; do
    name=
    read -r name < "$d/name"
    if [ "$name" = guestinit.notify ]; then port=/dev/${d##*/}; fi
done
read -r up _ < /proc/uptime
while read -r key value _; do
    case $key in MemTotal:) total=$value ;; MemAvailable:) available=$value ;; esac
done < /proc/meminfo
exec_s=$(dmesg | sed -n 's/^\[ *\([0-9.]*\)\] Run \/init as init process.*/\1/p')
msg="READY=1
STATUS=busybox floor ready
X_BENCH_INIT=busybox
X_GUESTINIT_READY_S=$up
X_GUESTINIT_EXEC_S=$exec_s
X_GUESTINIT_MEM_TOTAL_KIB=$total
X_GUESTINIT_MEM_AVAILABLE_KIB=$available
"
if [ -n "$port" ]; then
    printf '%s\n' "$msg" > "$port"
else
    echo "bench floor: no virtio port named guestinit.notify" > /dev/console
fi
while :; do sleep 3600 || exec sh; done
"""
# The applets the script runs, as links in /bin (this busybox does not find applets by itself).
APPLETS = ("sh", "mount", "dmesg", "sed", "sleep")


def busybox_entries(busybox: bytes, init: str = BUSYBOX_INIT) -> list[Entry]:
    return [
        *(Entry(d, S_IFDIR | 0o755) for d in ("bin", "dev", "proc", "sys", "tmp")),
        Entry("bin/busybox", S_IFREG | 0o755, busybox),
        *(Entry(f"bin/{applet}", S_IFLNK | 0o777, b"busybox") for applet in APPLETS),
        Entry("init", S_IFREG | 0o755, init.encode()),
        Entry("dev/console", S_IFCHR | 0o600, rdevmajor=5, rdevminor=1),
        Entry("dev/null", S_IFCHR | 0o666, rdevmajor=1, rdevminor=3),
        Entry("dev/kmsg", S_IFCHR | 0o644, rdevmajor=1, rdevminor=11),
    ]


def busybox_floor(busybox: Path = BUSYBOX, cache: Path | None = None) -> Path:
    """The floor's initrd (a plain newc cpio, like the guestinit image: no in-kernel decoding),
    built when busybox or the script changed."""
    if not busybox.is_file():
        raise UserError(f"{busybox} not found", hint="apt-get install busybox-static (or run make setup)")
    binary = busybox.read_bytes()
    if binary[:4] != b"\x7fELF" or elf_needed(busybox):
        raise UserError(f"{busybox} is not a static ELF binary", hint="install busybox-static, not busybox")
    digest = hashlib.sha256(binary + BUSYBOX_INIT.encode()).hexdigest()[:16]
    out = (cache or cache_dir() / "baselines") / f"busybox-{digest}.cpio"
    if not out.is_file():
        write_atomic(out, newc.write(busybox_entries(binary)))
    return out


# ----------------------------------------------------------------------------------------------
# systemd: an mkosi build of baselines/systemd, cached by a digest of its inputs.


def systemd_inputs(root: Path) -> list[Path]:
    base = root / SYSTEMD_DIR
    files = sorted(p for p in base.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    sources = root / "image" / "mkosi.sandbox"
    shared = [
        root / "image" / "keep.list",
        root / "image" / "finalize-common",
        root / "guestinit" / "host" / "build" / "trim.py",
    ]
    return files + sorted(p for p in sources.rglob("*") if p.is_file()) + shared


def systemd_digest(root: Path) -> str:
    h = hashlib.sha256(b"baseline-systemd\0")
    for p in systemd_inputs(root):
        h.update(os.fspath(p.relative_to(root)).encode() + b"\0")
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def systemd_mkosi_argv(root: Path, out: Path, verb: tuple[str, ...] = ("-f", "build")) -> list[str]:
    cache = cache_dir() / "mkosi"
    return [
        "/usr/bin/python3",
        "-m",
        "mkosi",
        "-C",
        os.fspath(root / SYSTEMD_DIR),
        "--output-directory",
        os.fspath(out),
        # its own incremental cache, so it never evicts the Kata image's cached tree
        "--cache-directory",
        os.fspath(cache / "cache-baseline-systemd"),
        "--package-cache-dir",
        os.fspath(cache / "packages"),
        *verb,
    ]


def systemd_baseline(rebuild: bool = False, log: TextIO = sys.stderr) -> Path:
    """The systemd baseline's initrd, built with mkosi when its inputs changed."""
    root = repo_root()
    digest = systemd_digest(root)
    cached = cache_dir() / "baselines" / f"systemd-{digest[:16]}"
    image = cached / f"{SYSTEMD_ID}.cpio"
    if image.is_file() and not rebuild:
        return image
    if not (mkosi_python_path() / "mkosi").is_dir():
        raise UserError("mkosi 25.3 is not installed in ~/.cache/guestinit/tools", hint="run `make setup`")
    out = root / "build" / "baselines" / "systemd"
    out.mkdir(parents=True, exist_ok=True)
    argv = systemd_mkosi_argv(root, out)
    env = dict(os.environ, PYTHONPATH=os.fspath(mkosi_python_path()))
    print(f"$ PYTHONPATH={shlex.quote(env['PYTHONPATH'])} {shlex.join(argv)}", file=log, flush=True)
    start = time.monotonic()
    proc = subprocess.run(argv, env=env, cwd=root, check=False, stdout=log, stderr=log)
    if proc.returncode != 0:
        raise UserError(
            f"mkosi failed building the systemd baseline (exit {proc.returncode})",
            hint=f"see its output above; the config is {SYSTEMD_DIR}/mkosi.conf",
            exit_code=1,
        )
    built = out / f"{SYSTEMD_ID}.cpio"
    if not built.is_file():
        raise UserError(
            f"mkosi did not produce {built}",
            hint=f"check Format=cpio and CompressOutput=no in {SYSTEMD_DIR}/mkosi.conf",
            exit_code=1,
        )
    tmp = cached.with_name(cached.name + f".{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in (built.name, f"{SYSTEMD_ID}.kver"):
        if (out / name).is_file():
            shutil.copy2(out / name, tmp / name)
    info = {"digest": digest, "sha256": sha256_file(built), "size": built.stat().st_size}
    (tmp / "info.json").write_text(json.dumps(info, indent=2) + "\n")
    shutil.rmtree(cached, ignore_errors=True)
    os.replace(tmp, cached)
    print(f"built the systemd baseline in {time.monotonic() - start:.0f} s: {image}", file=log, flush=True)
    return image


def kernel_version_of(image: Path) -> str:
    """The kernel version an mkosi image's modules were built for ('' when unknown)."""
    from guestinit.host.media import stem

    kver = image.with_name(f"{stem(image)}.kver")
    return kver.read_text().strip() if kver.is_file() else ""
