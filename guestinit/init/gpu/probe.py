"""``guestinit probe [--root DIR] [--json]``: what this machine's GPUs, BARs and hugepages look
like, and the mode guestinit would pick. Read-only; runs on any Linux machine, in a guest or
against a captured tree (``--root tests/fixtures/h200-firecracker-vm/root``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from guestinit.init import params
from guestinit.init.gpu import hugepages, nvidia, pci, topology
from guestinit.init.root import Root

SMI_FIELDS = ("name", "pci.bus_id", "memory.total", "driver_version", "persistence_mode")
ROLES = ("gpu", "nvswitch", "sw_mng", "bridge")
ROLE_TITLES = {"gpu": "GPUs", "nvswitch": "NVSwitches", "sw_mng": "SW_MNG bridges", "bridge": "PCI bridges"}
ROLE_KEYS = {"gpu": "gpus", "nvswitch": "nvswitches", "sw_mng": "sw_mng", "bridge": "bridges"}


def smi_query(timeout_s: float = 30.0) -> dict[str, object]:
    """What nvidia-smi says about the GPUs (a read-only query), when it is installed."""
    import shutil
    import subprocess

    binary = shutil.which("nvidia-smi")
    if binary is None:
        return {"error": "nvidia-smi not found"}
    cmd = [binary, f"--query-gpu={','.join(SMI_FIELDS)}", "--format=csv,noheader,nounits"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return {"error": f"nvidia-smi: {exc}"}
    if out.returncode != 0:
        last = (out.stderr or out.stdout).strip().splitlines()[-1:] or [f"exit status {out.returncode}"]
        return {"error": f"nvidia-smi: {last[0]}"}
    gpus = []
    for line in out.stdout.splitlines():
        values = [v.strip() for v in line.split(",")]
        if len(values) == len(SMI_FIELDS):
            gpus.append(dict(zip(SMI_FIELDS, values, strict=True)))
    return {"gpus": gpus}


def collect(root: Root, smi: bool = True) -> dict[str, object]:
    """Everything the probe reports. ``smi``: also ask nvidia-smi (only when reading the real
    root with the driver loaded: a tree's GPUs are not this machine's)."""
    devices = pci.list_devices(root)
    config = params.parse_cmdline(root.read_text("/proc/cmdline", ""))
    forced = config["mode"]
    topo = topology.detect(root, forced if isinstance(forced, str) else "auto", devices)
    driver = nvidia.read_version(root)
    report: dict[str, object] = {
        "root": root.path,
        "mode": topo.as_dict(),
        "status": topo.status(),
    }
    for role in ROLES:
        report[ROLE_KEYS[role]] = [d.as_dict() for d in devices if d.role == role]
    report["other_devices"] = [d.as_dict() for d in devices if d.role == "other"]
    report["bar_warnings"] = pci.bar_warnings(devices)
    report["hugepages"] = {
        "pools": [p.as_dict() for p in hugepages.read_pools(root)],
        "thp": hugepages.thp(root),
    }
    report["driver"] = (
        {**driver.as_dict(), "params": nvidia.read_params(root), "gpu_minors": nvidia.gpu_minors(root)}
        if driver
        else None
    )
    if smi and root.is_real and driver is not None:
        report["nvidia_smi"] = smi_query()
    return report


def _dev_lines(dev: dict[str, object]) -> list[str]:
    link = dev["link"]
    assert isinstance(link, dict)
    speed = "-"
    if link["current_speed"] is not None:
        speed = f"{link['current_speed']} x{link['current_width']}"
        if (link["max_speed"], link["max_width"]) != (link["current_speed"], link["current_width"]):
            speed += f" (max {link['max_speed']} x{link['max_width']})"
    numa = dev["numa_node"]
    lines = [
        f"  {dev['address']}  {str(dev['vendor'])[2:]}:{str(dev['device'])[2:]}  class {dev['class']}"
        f"  subsystem {dev['subsystem'] or '-'}  rev {dev['revision'] or '-'}  driver {dev['driver'] or '-'}",
        f"    NUMA node {numa if numa is not None else '-'}  link {speed}"
        f"  IOMMU group {dev['iommu_group'] or '-'}"
        + (f"  behind {' > '.join(dev['upstream'])}" if dev["upstream"] else ""),  # type: ignore[arg-type]
    ]
    bars = dev["bars"]
    assert isinstance(bars, list)
    if bars:
        lines.append(
            f"    {'BAR':<4} {'size':>9}  {'address':<18} {'flags':<16} {'page':>4}"
            f"  {'entries 4K':>14} {'2M':>10} {'1G':>6}"
        )
    for bar in bars:
        flags = ("64-bit" if bar["is_64bit"] else "32-bit") + (
            " pref" if bar["prefetchable"] else " non-pref"
        )
        e = bar["entries"]
        lines.append(
            f"    {bar['index']:<4} {bar['size_human']:>9}  {bar['address']:<18} {flags:<16} "
            f"{bar['largest_page']:>4}  {e['4K']:>14,} {e['2M']:>10,} {e['1G']:>6,}"
            + (f"  resizable to {', '.join(bar['resizable'])}" if bar.get("resizable") else "")
        )
    if dev.get("vpd_error"):
        lines.append(f"    {dev['vpd_error']}")
    return lines


def render_text(report: dict[str, object]) -> str:
    mode = report["mode"]
    assert isinstance(mode, dict)
    out = [f"guestinit probe of {report['root']} (read-only)", str(report["status"])]
    if mode["mode"] != "unknown":
        fabric = (
            f", fabricmanager FABRIC_MODE={mode['fabric_mode']}" if mode["fabric_mode"] is not None else ""
        )
        nvlsm = ", nvlsm" if mode["nvlsm"] else ""
        out.append(f"  would load: {' '.join(mode['modules']) or 'no GPU modules'}{fabric}{nvlsm}")
    for role in ROLES:
        devs = report[ROLE_KEYS[role]]
        assert isinstance(devs, list)
        out.append("")
        out.append(f"{ROLE_TITLES[role]}: {len(devs)}")
        for dev in devs:
            out.extend(_dev_lines(dev))
    others = report["other_devices"]
    assert isinstance(others, list)
    out.append("")
    out.append(
        f"other PCI functions: {len(others)}"
        + (
            f" ({', '.join(str(d['address']) + ' ' + str(d['driver'] or '-') for d in others)})"
            if others
            else ""
        )
    )
    warnings = report["bar_warnings"]
    assert isinstance(warnings, list)
    out.append("")
    out.append(f"BAR warnings: {len(warnings)}")
    out.extend(f"  {w}" for w in warnings)
    hp = report["hugepages"]
    assert isinstance(hp, dict)
    out.append("")
    pools = ", ".join(
        f"{p['size']}{'@' + str(p['node']) if p['node'] is not None else ''}: {p['total']}"
        f" (free {p['free'] if p['free'] is not None else '-'})"
        for p in hp["pools"]
    )
    out.append(f"hugepages: {pools or 'none'}")
    out.append(f"THP: enabled {hp['thp']['enabled'] or '-'}, defrag {hp['thp']['defrag'] or '-'}")
    driver = report["driver"]
    out.append("")
    if isinstance(driver, dict):
        out.append(f"NVIDIA driver {driver['version']} ({driver['flavour']})")
        prm = driver["params"]
        assert isinstance(prm, dict)
        shown = (
            "NvLinkDisable",
            "DeviceFileMode",
            "EnableResizableBar",
            "EnableGpuFirmware",
            "ModifyDeviceFiles",
        )
        picked = []
        for name in shown:
            if name in prm:
                v = prm[name]
                if name == "DeviceFileMode" and v.isdigit():
                    v = f"{v} (0{int(v):o})"
                picked.append(f"{name}={v}")
        out.append(f"  params: {'  '.join(picked)}  ({len(prm)} in all, --json lists them)")
        smi = report.get("nvidia_smi")
        if isinstance(smi, dict):
            for gpu in smi.get("gpus", []):
                out.append("  nvidia-smi: " + ", ".join(f"{k} {v}" for k, v in gpu.items()))
            if "error" in smi:
                out.append(f"  {smi['error']}")
    else:
        out.append("NVIDIA driver: not loaded")
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="guestinit probe",
        description="Report, read-only, this machine's GPUs, NVSwitches, BARs, hugepages and the mode "
        "guestinit would choose.",
    )
    parser.add_argument("--root", default="/", help="the tree to read, shaped like / (default: /)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--no-smi", action="store_true", help="do not run nvidia-smi (it is only run on /)")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.root):
        print(
            f"guestinit probe: --root {args.root}: not a directory; give a tree shaped like / "
            "(e.g. tests/fixtures/h200-firecracker-vm/root)",
            file=sys.stderr,
        )
        return 2
    root = Root(os.path.abspath(args.root) if args.root != "/" else "/")
    report = collect(root, smi=not args.no_smi)
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render_text(report))
    return 0
