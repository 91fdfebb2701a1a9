"""The boot path's modules served from one file of compiled code, imported without searching
sys.path.

An import by path runs importlib's finder in the interpreter: a directory listing per package,
a stat per candidate file name, an open and a read per module. Under TCG that costs a boot about
60 ms over the ~50 modules /init imports (in-guest, 6 boots each way: 206 ms of imports by path,
147 ms from a bundle, reading it included). The image build writes the code of those modules
into BUNDLE (``write``, run by image/mkosi.postinst.chroot with the image's own interpreter);
/init installs the finder before it imports anything else (``install``).

A module is served from the bundle only while its .pyc is the one that was bundled (the same
16-byte header: magic, flags and the hash of the source it was compiled from; mtimes cannot
tell, the build sets them all to one date afterwards): a file replaced later, by an extra
initrd say, is imported by path as usual. A bundle from another interpreter version (another
bytecode magic) is not used at all.
"""

from __future__ import annotations

import marshal
import os
import sys

BUNDLE = "/usr/lib/python3/dist-packages/guestinit/init/boot.bundle"
DIST = "/usr/lib/python3/dist-packages"
ROOTS = ("guestinit.init.cli", "guestinit.init.pid1")  # what /init imports
VERSION = 1
HEADER = 16  # a .pyc's magic, flags and source hash (or mtime and size), before its code
_bootstrap = sys.modules["_frozen_importlib"]  # ModuleSpec, without importing importlib
_external = sys.modules["_frozen_importlib_external"]  # MAGIC_NUMBER

TYPE_CHECKING = False  # typing is not imported on the boot path; mypy reads this as usual
if TYPE_CHECKING:
    from importlib.machinery import ModuleSpec
    from types import ModuleType

    # name -> (is_package, .pyc path, its 16-byte header, marshalled code)
    Entries = dict[str, tuple[bool, str, bytes, bytes]]


class BundleFinder:
    """A meta-path finder and loader for the modules of one bundle."""

    def __init__(self, modules: Entries) -> None:
        self.modules = modules
        self.served: list[str] = []  # names imported from the bundle, in order

    def find_spec(self, name: str, path: object = None, target: object = None) -> ModuleSpec | None:
        entry = self.modules.get(name)
        if entry is None:
            return None
        is_package, origin, header, _code = entry
        try:
            fd = os.open(origin, os.O_RDONLY | os.O_CLOEXEC)
            try:
                current = os.read(fd, HEADER)
            finally:
                os.close(fd)
        except OSError:
            return None
        if current != header:
            return None  # not the file that was bundled: the path finder takes it
        spec: ModuleSpec = _bootstrap.ModuleSpec(name, self, origin=origin, is_package=is_package)
        spec.has_location = True
        if is_package:
            spec.submodule_search_locations = [os.path.dirname(origin)]
        return spec

    def create_module(self, spec: ModuleSpec) -> None:
        return None  # the default module object

    def exec_module(self, module: ModuleType) -> None:
        name = module.__spec__.name if module.__spec__ is not None else module.__name__
        code = marshal.loads(self.modules[name][3])
        self.served.append(name)
        exec(code, module.__dict__)


def install(path: str = BUNDLE) -> BundleFinder | None:
    """Put the bundle's finder first on sys.meta_path; None (nothing changed) when there is no
    bundle, or it is unreadable, or it was written by another Python."""
    try:
        with open(path, "rb") as f:
            data = marshal.loads(f.read())
    except (OSError, EOFError, ValueError, TypeError):
        return None
    if (
        not isinstance(data, dict)
        or data.get("version") != VERSION
        or data.get("magic") != _external.MAGIC_NUMBER
    ):
        return None
    modules = data.get("modules")
    if not isinstance(modules, dict):
        return None
    finder = BundleFinder(modules)
    sys.meta_path.insert(0, finder)
    return finder


def entries(names: list[str]) -> Entries:
    """The bundle entries of already imported modules that came from legacy .pyc files (the
    image's sourceless layout); others (built in, frozen, extension modules) are left out."""
    out: Entries = {}
    for name in names:
        module = sys.modules.get(name)
        spec = getattr(module, "__spec__", None)
        origin = getattr(spec, "origin", None)
        if not isinstance(origin, str) or not origin.endswith(".pyc"):
            continue
        with open(origin, "rb") as f:
            data = f.read()
        is_package = getattr(spec, "submodule_search_locations", None) is not None
        out[name] = (is_package, origin, data[:HEADER], data[HEADER:])
    return out


def write(out: str, roots: tuple[str, ...] = ROOTS) -> list[str]:
    """Import ``roots`` here and write the code of every module that brought in to ``out``;
    returns the names bundled. Run by the image's own interpreter as /init runs (-IS)."""
    if DIST not in sys.path:
        sys.path.append(DIST)
    from guestinit.atomicfile import write_atomic  # before the snapshot: not a boot-path module

    before = set(sys.modules)
    for root in roots:
        __import__(root)
    new = [name for name in sys.modules if name not in before]
    modules = entries(new)
    write_atomic(
        out, marshal.dumps({"version": VERSION, "magic": _external.MAGIC_NUMBER, "modules": modules})
    )
    return sorted(modules)


def main(argv: list[str]) -> int:
    """``python3 -IS .../bundle.pyc [OUT]``: the image build's step (image/mkosi.postinst.chroot)."""
    out = argv[0] if argv else BUNDLE
    bundled = write(out)
    print(f"bundle: {len(bundled)} boot-path modules in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
