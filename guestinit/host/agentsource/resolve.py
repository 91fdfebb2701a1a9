"""SOURCE -> the kata-agent executable (and the library files it needs from that source), with
the facts a build records: where it came from, its sha256, how it is linked.

SOURCE is a kata-agent executable, a Kata guest initrd, a Kata guest disk image, a release
tarball ``kata-static-<ver>-<arch>.tar.xz|.tar.zst``, or a Kata prefix such as /opt/kata.
Everything is extracted under a temporary directory beside ``out``; ``out`` appears complete
or not at all. Every bad input is a UserError: one line naming the file, and the fix."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import guestinit.host.agentsource.assets as assets
import guestinit.host.agentsource.disk as disk
import guestinit.host.agentsource.elf as elf
import guestinit.host.agentsource.libraries as libraries
import guestinit.host.streams as streams
from guestinit.host.agentsource.cpio import CpioTree, is_cpio
from guestinit.host.agentsource.tarball import TarTree
from guestinit.host.agentsource.trees import DirTree, NotFound, Resolved, Tree, TreeError, resolve
from guestinit.host.atomicfs import TMP_PREFIX, fsync_dir, remove_tree_atomic, sha256_file
from guestinit.host.errors import UserError

KINDS_HINT = (
    "give a kata-agent executable, a Kata guest image (.img/.image) or initrd, "
    "a kata-static-<version>-amd64.tar.xz|.tar.zst release tarball, or a Kata prefix such as /opt/kata"
)
REFETCH = "check the file: download or build it again"
AGENT_NAME = "kata-agent"
LIB_DIR = "lib"


@dataclass(frozen=True)
class Found:
    agent: Path  # staged
    kind: str  # what SOURCE is
    container: str  # what held the agent file: executable | initrd | ext4 image | erofs image
    member: str
    chain: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    find: libraries.Finder | None = None


@dataclass
class _Context:
    given: str
    profile: str
    scratch: Path
    stage: Path
    counter: int = 0

    def scratch_file(self, name: str) -> Path:
        self.counter += 1
        return self.scratch / f"{self.counter}-{os.path.basename(name) or 'member'}"


def _fail(label: str, problem: str, hint: str = KINDS_HINT) -> UserError:
    return UserError(f"{label}: {problem}", hint=hint)


def check_agent(path: Path, label: str) -> elf.ElfInfo:
    """The ELF facts of a kata-agent executable, or UserError saying what it is instead."""
    try:
        info = elf.read(path)
    except elf.ElfError as exc:
        raise _fail(label, f"not a kata-agent executable ({exc})") from None
    except OSError as exc:
        raise _fail(label, f"cannot read it ({exc.strerror})", "check the path and its permissions") from None
    if not info.is_x86_64:
        raise _fail(
            label,
            f"an agent for {info.machine_name} ({info.bits}-bit), not x86-64",
            "take the agent of the x86_64 Kata release (kata-static-<version>-amd64.tar.*)",
        )
    if not info.is_executable:
        raise _fail(label, "an ELF shared library or object file, not an executable")
    signed = elf.contains(path, elf.AGENT_SIGNATURE)
    if not signed and elf.contains(path, elf.UPX_MAGIC, 4096):
        raise _fail(label, "a UPX-packed executable", "unpack it with `upx -d` and give the result")
    if not signed:
        raise _fail(label, "an x86-64 executable, but not a kata-agent (it has no agent version string)")
    return info


def _stage_agent(tree: Tree, path: str, ctx: _Context) -> Path:
    dest = ctx.stage / AGENT_NAME
    if dest.exists():
        dest.unlink()
    tree.copy_out(path, dest)
    os.chmod(dest, 0o755)
    return dest


def _agent_in_tree(tree: Tree, label: str, kind: str, ctx: _Context, chain: tuple[str, ...]) -> Found:
    """Find the agent inside a guest tree (image or initrd): /usr/bin/kata-agent, else the init
    when it is the agent."""
    rejected: list[str] = []
    try:
        for candidate in (*assets.AGENT_PATHS, *assets.INIT_PATHS):
            try:
                found = resolve(tree, candidate)
            except NotFound:
                continue
            if found.entry.kind != "file":
                rejected.append(f"/{candidate} is not a regular file")
                continue
            where = f"{label}!/{found.path}"
            if candidate in assets.INIT_PATHS:
                probe = ctx.scratch_file(found.path)
                tree.copy_out(found.path, probe)
                if not elf.contains(probe, elf.AGENT_SIGNATURE):
                    rejected.append(f"/{candidate} is another init")
                    continue
            staged = _stage_agent(tree, found.path, ctx)
            check_agent(staged, where)
            outer = "image" if kind.endswith("image") else kind
            links = (*chain, *found.chain)
            return Found(staged, outer, kind, f"/{found.path}", links, (), _finder(tree, ctx))
    except TreeError as exc:
        raise _fail(label, f"cannot read the {kind} ({exc})", REFETCH) from None
    seen = f" ({'; '.join(rejected)})" if rejected else ""
    raise _fail(
        label,
        f"no kata-agent in this {kind}: no /usr/bin/kata-agent, and no /sbin/init that is the agent{seen}",
        "give the Kata image or initrd that carries the agent, or the kata-agent executable itself",
    )


def _finder(tree: Tree, ctx: _Context) -> libraries.Finder:
    def find(soname: str) -> tuple[Path, str] | None:
        for directory in libraries.LIBRARY_DIRS:
            try:
                found = resolve(tree, f"{directory}/{soname}")
            except NotFound:
                continue
            if found.entry.kind == "file":
                dest = ctx.stage / LIB_DIR / soname
                dest.parent.mkdir(exist_ok=True)
                tree.copy_out(found.path, dest)
                return dest, found.path
        return None

    return find


def _from_file(path: Path, label: str, ctx: _Context, nested: bool = False) -> Found:
    try:
        kind, head = streams.sniff(path)
    except OSError as exc:
        raise _fail(label, f"cannot read it ({exc.strerror})", "check the path and its permissions") from None
    except streams.MissingProgram as exc:
        raise _fail(label, str(exc), "install it, or give the agent in another form") from None
    try:
        if kind == "plain" and elf.is_elf(head):
            staged = ctx.stage / AGENT_NAME
            shutil.copyfile(path, staged)
            os.chmod(staged, 0o755)
            check_agent(staged, label)
            return Found(staged, "executable", "executable", "")
        if is_cpio(head):
            archive = path
            if kind != "plain":
                archive = ctx.scratch_file("initrd.cpio")
                streams.decompress_to(path, archive)
            return _agent_in_tree(CpioTree(archive), label, "initrd", ctx, ())
        if head[257:262] == b"ustar" and not nested:
            return _from_tarball(path, label, ctx)
        if disk.has_partition_table(head) or disk.fs_in_head(head):
            image = path
            if kind != "plain":
                image = ctx.scratch_file("disk.img")
                streams.decompress_to(path, image)
            return _from_disk(image, label, ctx)
    except streams.MissingProgram as exc:
        raise _fail(label, str(exc), "install it, or give the agent in another form") from None
    except streams.StreamError as exc:
        raise _fail(label, str(exc), REFETCH) from None
    except TreeError as exc:
        raise _fail(label, str(exc), REFETCH) from None
    if not head:
        what = "an empty file" if kind == "plain" else f"a corrupt or truncated {kind} file"
        raise _fail(label, f"{what}, not a kata-agent or a Kata image, initrd or tarball")
    what = "a file" if kind == "plain" else f"a {kind}-compressed file"
    raise _fail(label, f"{what} that is not a kata-agent, a Kata image or initrd, or a kata-static tarball")


def _from_disk(image: Path, label: str, ctx: _Context) -> Found:
    offset, fs, size = disk.data_partition(image)
    tree: Tree
    tree = disk.Ext4Tree(image, offset) if fs == "ext4" else disk.erofs_tree(image, offset, size, ctx.scratch)
    return _agent_in_tree(tree, label, f"{fs} image", ctx, ())


def _pick_asset(
    tree: Tree, directory: str, ctx: _Context, clamp: bool, aliases: tuple[str, ...]
) -> tuple[str, Resolved] | None:
    for name in assets.candidates(ctx.profile):
        try:
            found = resolve(tree, f"{directory}/{name}" if directory else name, clamp=clamp, aliases=aliases)
        except NotFound:
            continue
        if found.entry.kind == "file":
            return name, found
    return None


def _from_tarball(path: Path, label: str, ctx: _Context) -> Found:
    tree = TarTree(path)
    picked = _pick_asset(tree, assets.TARBALL_ASSET_DIR, ctx, True, ())
    if picked is None:
        raise _fail(
            label,
            f"no Kata guest image in this tarball (looked for {assets.TARBALL_ASSET_DIR}/"
            f"{{{','.join(assets.candidates(ctx.profile))}}})",
            "give the kata-static release tarball of your Kata version, or the image itself",
        )
    name, found = picked
    member = ctx.scratch_file(found.path)
    tree.copy_out(found.path, member)
    inner = _from_file(member, f"{label}!/{found.path}", ctx, nested=True)
    return _through_asset("tarball", f"/{found.path}", name, found, inner, ctx)


def _through_asset(kind: str, where: str, name: str, found: Resolved, inner: Found, ctx: _Context) -> Found:
    """The agent found in the guest image ``found`` (public name ``name``) of a tarball or prefix."""
    note = assets.fallback_note(ctx.profile, name)
    return Found(
        inner.agent,
        kind,
        inner.container,
        f"{where}!{inner.member}",
        (*found.chain, *inner.chain),
        (note,) if note else (),
        inner.find,
    )


def _from_prefix(path: Path, label: str, ctx: _Context) -> Found:
    tree = DirTree(path)
    aliases = (str(path.absolute()), str(tree.root))
    directory = assets.ASSET_DIR if tree.entry("share") is not None else ""
    try:
        picked = _pick_asset(tree, directory, ctx, False, aliases)
    except TreeError as exc:
        raise _fail(label, f"unsafe link ({exc})", "fix the link, or give the image file itself") from None
    if picked is None and any(tree.entry(p) is not None for p in (*assets.AGENT_PATHS, *assets.INIT_PATHS)):
        return _agent_in_tree(tree, label, "root directory", ctx, ())
    if picked is None:
        where = f"{directory}/" if directory else ""
        raise _fail(
            label,
            f"no Kata guest image there (looked for {where}{{{','.join(assets.candidates(ctx.profile))}}})",
            "give the Kata prefix (such as /opt/kata), or the image, initrd or tarball itself",
        )
    name, found = picked
    inner = _from_file(tree.path(found.path), f"{label}/{found.path}", ctx, nested=True)
    return _through_asset("prefix", found.path, name, found, inner, ctx)


@dataclass(frozen=True)
class ResolvedAgent:
    """The agent taken from SOURCE. ``path`` and the library files live under the ``out``
    directory given to resolve_agent (``out/kata-agent``, ``out/lib/<soname>``)."""

    path: Path
    sha256: str
    size: int
    given: str
    kind: str  # SOURCE: executable | initrd | image | tarball | prefix | root directory
    container: str  # what held the agent: executable | initrd | ext4 image | erofs image | root directory
    member: str  # where inside SOURCE ("" for an executable); "!" separates nested containers
    chain: tuple[str, ...]  # the symlinks followed, "link -> target"
    notes: tuple[str, ...]  # fallbacks taken
    elf: elf.ElfInfo
    libraries: libraries.LibraryPlan = field(default_factory=libraries.LibraryPlan)

    @property
    def linking(self) -> str:
        return self.elf.linking


def resolve_agent(source: str | os.PathLike[str], out: Path, profile: str = "default") -> ResolvedAgent:
    """Take the agent out of ``source`` into the directory ``out`` (replaced as a whole)."""
    given = os.fspath(source)
    path = Path(given).expanduser()
    if not os.path.lexists(path):
        raise _fail(given, "no such file or directory")
    if not path.exists():
        raise _fail(given, "a symlink to nothing (dangling)")
    assets.candidates(profile)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"{TMP_PREFIX}agentsource.", dir=out.parent) as tmp:
        ctx = _Context(given, profile, Path(tmp) / "scratch", Path(tmp) / "out")
        ctx.scratch.mkdir()
        ctx.stage.mkdir()
        found = _from_prefix(path, given, ctx) if path.is_dir() else _from_file(path, given, ctx)
        info = elf.read(found.agent)
        try:
            plan = libraries.plan(info, found.find)
        except libraries.MissingLibrary as missing:
            raise _missing(given, found, missing) from None
        except TreeError as exc:
            raise _fail(given, f"cannot read a library ({exc})", "check the file") from None
        digest = sha256_file(found.agent)
        size = found.agent.stat().st_size
        _publish(ctx.stage, out)
    files = {soname: out / LIB_DIR / soname for soname in plan.files}
    return ResolvedAgent(
        path=out / AGENT_NAME,
        sha256=digest,
        size=size,
        given=given,
        kind=found.kind,
        container=found.container,
        member=found.member,
        chain=found.chain,
        notes=found.notes,
        elf=info,
        libraries=libraries.LibraryPlan(plan.packages, files, plan.origin),
    )


def _missing(given: str, found: Found, missing: libraries.MissingLibrary) -> UserError:
    where = "" if found.find is None else ", and the image it came from does not contain it"
    return _fail(
        given,
        f"the agent is dynamically linked and needs {missing.soname} (for {missing.needed_by}), "
        f"which no Debian package in the soname table provides{where}",
        "give the Kata image or initrd the agent came from (its libraries are taken from there), "
        "or a statically linked agent",
    )


def _publish(stage: Path, out: Path) -> None:
    if os.path.lexists(out):
        remove_tree_atomic(out)
    os.rename(stage, out)
    fsync_dir(out.parent)
