"""The GPU phase of boot, between the base modules and the module lockdown:

    topology  ->  resizable BAR, hugepages, THP  ->  NVIDIA modules  ->  /dev/nvidia*  ->  services

The mode comes from sysfs (topology.detect, ``guestinit.mode=`` forces one). The modules the
mode needs load through modules.load (finit_module in modules.dep order, each load timed, in
X_GUESTINIT_MODULES) with nvidia.module_plan's parameters; the device nodes are made and
awaited (bounded); the GPU daemons become services (gpu_services) that the supervisor starts
with the others. Nothing here is fatal: an unexpected topology runs the documented fallback
(topology.py) and is reported in STATUS=; a module that fails, or nodes that never appear,
are reported in STATUS= and X_GUESTINIT_DEGRADED=nvidia, and the GPU services are not made.

A CPU guest pays for one vendor-file read per PCI function: pci, hugepages, nvidia and the
services table are imported only where there is work for them.
"""

from __future__ import annotations

from guestinit.init import modules
from guestinit.init.gpu import topology
from guestinit.notify import jsonenc

TYPE_CHECKING = False  # typing is not imported on the boot path; mypy reads this as usual
if TYPE_CHECKING:
    from guestinit.init.context import Context
    from guestinit.init.services.keys import ServiceSpec

LOADED = ("finit", "init", "modprobe", "loaded", "builtin")


class GpuState:
    """What the GPU phase found and did: READY's GPU fields and the GPU services."""

    def __init__(self, topo: topology.Topology) -> None:
        self.topology = topo
        self.bar_warnings: list[str] = []
        self.tuning: list[str] = []  # what rebar/hugepages/THP did
        self.driver = ""  # the loaded driver's version
        self.degraded: list[str] = []
        self.services: list[ServiceSpec] = []
        self.module_results: list[modules.LoadResult] = []  # the NVIDIA modules' loads

    def notify_fields(self) -> dict[str, str]:
        fields = self.topology.notify_fields()
        gpus = self.topology.gpus
        if gpus:
            summary = {
                "count": len(gpus),
                "ids": [f"{d.ids}@{d.address}" for d in gpus],
                "driver": self.driver or None,
            }
            fields["X_GUESTINIT_GPUS"] = jsonenc.dumps(summary)
        if self.bar_warnings:
            fields["X_GUESTINIT_BAR_WARNINGS"] = jsonenc.dumps(self.bar_warnings)
        if self.tuning:
            fields["X_GUESTINIT_TUNING"] = jsonenc.dumps(self.tuning)
        return fields


def bring_up(ctx: Context, tree: modules.ModuleTree | None) -> GpuState | None:
    """The GPU phase (before the module lockdown). ``tree`` is the base loads' module tree
    (read-only once built, loads under way share it); None makes a new one. Never raises: an
    error of its own is reported, and what was found up to it is returned."""
    gpu: GpuState | None = None
    try:
        gpu = detect(ctx)
        tune(ctx, gpu)
        if gpu.topology.spec.modules:
            load_driver(ctx, gpu, tree)
        guest_with_gpus = gpu.topology.fallback.startswith("gpu")  # gpu, gpu-nvl4, gpu-nvl5
        if guest_with_gpus and "nvidia" not in gpu.degraded:
            from guestinit.init.gpu import services as gpu_services

            gpu.services = gpu_services.specs(ctx.config, gpu.topology, ctx.root)
    except Exception as exc:  # a bug here must not cost the VM: report it and boot on
        ctx.log.error(f"GPU phase: {type(exc).__name__}: {exc}")
        ctx.problem(f"GPU phase failed ({type(exc).__name__}: {exc})")
    return gpu


def detect(ctx: Context) -> GpuState:
    with ctx.timeline.phase("topology"):
        topo = topology.detect(ctx.root, ctx.config.text("mode"))
    ctx.log.info(topo.status())
    if topo.mode == topology.UNKNOWN:
        ctx.problem(topo.status())
    return GpuState(topo)


def tune(ctx: Context, gpu: GpuState) -> None:
    """Resizable BAR (guestinit.rebar, before the driver binds), BAR placement warnings,
    hugepage pools (guestinit.hugepages) and the THP mode (guestinit.thp)."""
    config, root, topo = ctx.config, ctx.root, gpu.topology
    counted = topo.gpus + topo.nvswitches + topo.sw_mng
    if counted:
        from guestinit.init.gpu import pci

        if config.text("rebar") != "off" and topo.gpus:
            with ctx.timeline.phase("rebar"):
                done, problems = pci.apply_rebar(root, topo.gpus, config.text("rebar"))
            gpu.tuning.extend(done)
            for problem in problems:
                ctx.problem(problem)
            if done:  # addresses moved: read the devices again
                gpu.topology = topo = topology.detect(root, config.text("mode"))
                counted = topo.gpus + topo.nvswitches + topo.sw_mng
        gpu.bar_warnings = pci.bar_warnings(counted)
        for warning in gpu.bar_warnings:
            ctx.log.warning(f"BAR placement: {warning}")
    requests = config["hugepages"]
    if requests or config.text("thp") != "keep":
        from guestinit.init.gpu import hugepages

        assert isinstance(requests, tuple)
        with ctx.timeline.phase("hugepages"):
            reserved = hugepages.reserve(root, requests)
            thp_problem = hugepages.set_thp(root, config.text("thp"))
        for result in reserved:
            gpu.tuning.append(str(result))
            if not result.ok:
                ctx.problem(str(result))
        if thp_problem:
            ctx.problem(thp_problem)
        elif config.text("thp") != "keep":
            gpu.tuning.append(f"thp {config.text('thp')}")


def load_driver(ctx: Context, gpu: GpuState, tree: modules.ModuleTree | None) -> None:
    """The mode's modules (nvidia.module_plan: NvLinkDisable with one GPU, the device file
    mode, guestinit.nvidia.*), then the /dev/nvidia* nodes, made and awaited (bounded)."""
    from guestinit.init.gpu import nvidia

    config, root, topo = ctx.config, ctx.root, gpu.topology
    plan = nvidia.module_plan(topo.spec.modules, len(topo.gpus), config.values)
    with ctx.timeline.phase("gpu modules"):
        tree = tree if tree is not None else modules.ModuleTree(root)
        results = modules.load(tree, [m.name for m in plan], {m.name: m.params for m in plan})
    gpu.module_results.extend(results)
    how = {r.name: r for r in results}
    for result in results:
        if result.how == "failed":
            ctx.problem(f"module {result.name} failed: {result.error}")
    if "nvidia" not in how:
        return
    if how["nvidia"].how not in LOADED:
        gpu.degraded.append("nvidia")
        return
    info = nvidia.read_version(root)
    gpu.driver = info.version if info is not None else ""
    with ctx.timeline.phase("gpu nodes"):
        created, problems = nvidia.make_nodes(root, config.values)
        missing = nvidia.await_nodes(root, config.values)
    if created:
        ctx.log.info(f"made {', '.join(created)}")
    for problem in problems:
        ctx.problem(problem)
    expected = nvidia.expected_nodes(root)
    if missing or not expected:
        what = ", ".join(missing) if missing else "no /dev/nvidia* node to make (/proc/devices)"
        ctx.problem(f"NVIDIA device nodes missing: {what}")
        gpu.degraded.append("nvidia")
