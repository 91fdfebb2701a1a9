#!/usr/bin/python3 -IS
# /init and /sbin/init in the guest image (as init.pyc: see image/mkosi.postinst.chroot).
# Kept tiny: everything else lives in byte-compiled modules.
import sys
import time

_start = time.clock_gettime(time.CLOCK_BOOTTIME)
sys.path.append("/usr/lib/python3/dist-packages")

from guestinit.init import bundle  # noqa: E402

bundle.install()  # the rest of the boot path from one file of compiled code (bundle.py)
from guestinit.init.cli import main  # noqa: E402

# Run as init.pyc from /init's "#!/usr/bin/env -S python3 -IS .../init.pyc" line, the kernel
# (or a shell) puts the path of /init itself after ours: drop it.
args = sys.argv[2:] if sys.argv[0].endswith(".pyc") else sys.argv[1:]
sys.exit(main(args, start_s=_start))
