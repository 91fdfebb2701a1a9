"""A guest kernel that rewrites its own code survives guestctl's TCG.

The kernel patches its code each time a static key flips: an int3 goes over each site first,
then the new bytes, then every CPU is synchronised. QEMU's multi-threaded TCG can keep
executing the int3 after the patch is complete, and the kernel dies ("Oops: int3"). The boot
tests met it about once in 150 boots (once after READY, in the kata-agent's cgroup write); with
this test's init, multi-threaded QEMU 7.2.22 died within 200 flips in every boot. guestctl runs
TCG single-threaded when there is more than one vCPU (``qemu.tcg_threads``); this test boots
under that same choice and flips ``kernel.sched_schedstats`` (its sites are in the scheduler,
which a busy second vCPU runs all the time) until the kernel has patched itself 600 times.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from guestinit.host import qemu
from guestinit.host.bench.baselines import BUSYBOX, busybox_entries
from guestinit.host.build import newc
from guestinit.host.media import resolve_kernel

pytestmark = pytest.mark.boot

FLIPS = 300
FLIP_INIT = r"""#!/bin/busybox sh
B=/bin/busybox
$B mount -t proc proc /proc
n=$($B sed -n 's/.*flips=\([0-9]*\).*/\1/p' /proc/cmdline)
for cpu in 1 2; do (while :; do $B usleep 50; done) & done
i=0
while [ "$i" -lt "$n" ]; do
    echo 1 > /proc/sys/kernel/sched_schedstats
    echo 0 > /proc/sys/kernel/sched_schedstats
    i=$((i + 1))
done
echo "flipped $i times" > /dev/console
$B poweroff -f
"""


def test_static_key_flips_do_not_kill_the_kernel_under_our_tcg(kata_image: Path, tmp_path: Path) -> None:
    initrd = tmp_path / "flips.cpio"
    initrd.write_bytes(newc.write(busybox_entries(BUSYBOX.read_bytes(), FLIP_INIT)))
    binary = qemu.find_qemu()
    threads, why = qemu.tcg_threads("auto", 2)
    print(f"\nTCG {threads}-threaded: {why}")
    console = tmp_path / "console.log"
    cfg = qemu.QemuConfig(
        kernel=resolve_kernel(kata_image, None),
        initrd=initrd,
        append=f"console=ttyS0 quiet panic=-1 flips={FLIPS}",
        accel="tcg",
        tcg_threads=threads,
        cpus=2,
        memory_mb=512,
        rng=False,
        notify_socket=tmp_path / "n.sock",  # nobody listens: QEMU keeps trying, harmlessly
        console_log=console,
        binary=binary,
    )
    try:
        subprocess.run(qemu.qemu_argv(cfg), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, timeout=300)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the guest did not power off within 300 s; console:\n{console.read_text()[-3000:]}")
    text = console.read_text(errors="replace")
    assert "Oops" not in text and f"flipped {FLIPS} times" in text, text[-3000:]
