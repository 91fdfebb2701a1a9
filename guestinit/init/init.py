#!/usr/bin/python3 -IS
# /init and /sbin/init in the guest image. Kept tiny: the interpreter does not cache the
# main script's bytecode, so everything else lives in byte-compiled modules.
import sys
import time

_start = time.clock_gettime(time.CLOCK_BOOTTIME)
sys.path.append("/usr/lib/python3/dist-packages")

from guestinit.init.cli import main  # noqa: E402

sys.exit(main(start_s=_start))
