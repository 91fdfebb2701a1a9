"""The first phases a real guestinit boot stamps, in order: the head start's (PID 1 before it
imports its boot path, guestinit/init/headstart.py), then the boot's own (guestinit/init/boot.py).
Shared by the boot tests that read them from a READY message or a bench report."""

FIRST_PHASES = ["early mounts", "imports (rest)", "kmsg, lo", "cmdline", "modules", "topology", "notify"]
