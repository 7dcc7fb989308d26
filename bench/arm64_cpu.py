"""Which -cpu model runs an arm64 guest fastest under TCG (QEMU's emulation).

Boots Debian's arm64 kernel by direct boot through the qemu driver (its real command
line, with -o cpu=MODEL and -o accel=tcg) with a tiny busybox initramfs whose /init
prints a line, runs /bin/true a few hundred times (a fork and an exec each: process
start-up is what dominates dockerd's start), prints how long that took by the guest's
clock, and powers off. Rounds go through every model in turn, so a busy host slows
them all alike. Besides wall time (the guest's clock), it reads the CPU time QEMU itself
spent (user + system, from /proc) up to /init and on the execs: on a shared, busy host
that is the steadier measure of how much work each model costs. Medians per model are
printed and saved in bench/results/arm64_cpu.json (Linux hosts: /proc is read).

    python bench/arm64_cpu.py [--runs 3] [--execs 300] [--tree DIR] [--models a,b,...]

DIR holds the unpacked Debian packages (linux-image-*-arm64 and busybox-static), one
folder per package, as the image build lays them out: by default
$PYMACHINE_CACHE_PATH/image-work/arm64/tree. To fetch them without touching the host's
apt setup, see "The arm64 TCG CPU" in docs/drivers.md.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import CACHE, save  # noqa: E402

from pymachine.driver import BootMedia, MachineSpec  # noqa: E402
from pymachine.drivers.qemu import QemuDriver, QemuOptions, qemu_version  # noqa: E402
from pymachine.iso.archive import Entry, cpio_newc  # noqa: E402
from pymachine.runner import Runner  # noqa: E402

MODELS = ("cortex-a72", "cortex-a57", "cortex-a53", "cortex-a76", "neoverse-n1", "max", "max,pauth-impdef=on", "max,pauth=off")
CMDLINE = "console=ttyAMA0 quiet loglevel=3 panic=-1"
INIT = """#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
read up _ < /proc/uptime
echo "PMBENCH init $up"
i=0
while [ $i -lt {execs} ]; do /bin/true; i=$((i+1)); done
read done _ < /proc/uptime
echo "PMBENCH execs {execs} $up $done"
/bin/busybox poweroff -f
"""


def find_kernel(tree: Path) -> Path:
    kernels = sorted(tree.glob("linux-image-*-arm64/boot/vmlinuz-*"))
    if not kernels:
        raise SystemExit(f"no linux-image-*-arm64/boot/vmlinuz-* under {tree}")
    return kernels[-1]


def make_initramfs(tree: Path, execs: int, target: Path) -> Path:
    busybox = tree / "busybox-static" / "usr" / "bin" / "busybox"
    if not busybox.exists():
        busybox = tree / "busybox-static" / "bin" / "busybox"
    entries = [
        Entry.file("bin/busybox", busybox.read_bytes(), 0o755),
        Entry.symlink("bin/sh", "busybox"),
        # Called by its path, ash forks and execs it: no applet short cut.
        Entry.symlink("bin/true", "busybox"),
        Entry.file("init", INIT.format(execs=execs).encode(), 0o755),
        Entry.directory("proc"),
        Entry.directory("dev"),
    ]
    target.write_bytes(cpio_newc(entries))
    return target


def cpu_seconds(pid: int | None) -> float:
    """User + system time of a process so far, from /proc/PID/stat."""
    if pid is None:
        return float("nan")
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def boot_once(kernel: Path, initrd: Path, model: str, cpus: int, memory: int, folder: Path) -> dict:
    directory = folder / "m"
    directory.mkdir()
    (directory / "config.iso").write_bytes(b"\0" * 65536)
    boot = BootMedia(iso=folder / "none.iso", kernel=kernel, initrd=initrd, cmdline=CMDLINE)
    spec = MachineSpec("cpubench", directory, cpus, memory, 1024, boot, directory / "config.iso", ssh_port=0, docker_port=0, arch="arm64")
    # Ports 0: QEMU binds any free port for the two forwards; nothing connects to them.
    driver = QemuDriver(spec, QemuOptions(accel="tcg", cpu=model, restrict_network=True), Runner())
    driver.create()
    log = driver.serial_log()
    try:
        started = time.monotonic()
        driver.start()
        pid = driver._pid()
        init_at, cpu_at_init = None, float("nan")
        deadline = started + 600
        while time.monotonic() < deadline:
            text = log.read_text(errors="replace") if log.exists() else ""
            if init_at is None and "PMBENCH init" in text:
                init_at, cpu_at_init = time.monotonic() - started, cpu_seconds(pid)
            found = re.search(r"PMBENCH execs (\d+) ([\d.]+) ([\d.]+)", text)
            if found:
                cpu_at_end = cpu_seconds(pid)
                return {
                    "init_s": round(init_at or float("nan"), 2),
                    "uptime_at_init_s": float(found.group(2)),
                    "execs_s": round(float(found.group(3)) - float(found.group(2)), 2),
                    "cpu_to_init_s": round(cpu_at_init, 2),
                    "cpu_execs_s": round(cpu_at_end - cpu_at_init, 2),
                }
            time.sleep(0.02)
        raise SystemExit(f"{model}: no result within 600 s; see {log}")
    finally:
        driver.kill()
        driver.remove()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--execs", type=int, default=300)
    parser.add_argument("--cpus", type=int, default=2, help="vCPUs per guest")
    parser.add_argument("--memory", type=int, default=1024, help="MiB per guest")
    parser.add_argument("--tree", type=Path, default=CACHE / "image-work" / "arm64" / "tree")
    parser.add_argument("--models", default=";".join(MODELS), help="models separated by ';' (a model may hold commas)")
    args = parser.parse_args()
    models = [m for m in args.models.split(";") if m]
    kernel = find_kernel(args.tree)
    results: dict[str, list[dict]] = {m: [] for m in models}
    with tempfile.TemporaryDirectory(prefix="pymachine-cpubench-") as tmp:
        initrd = make_initramfs(args.tree, args.execs, Path(tmp) / "initrd")
        for run in range(args.runs):
            for model in models:
                with tempfile.TemporaryDirectory(dir=tmp) as folder:
                    outcome = boot_once(kernel, initrd, model, args.cpus, args.memory, Path(folder))
                results[model].append(outcome)
                print(
                    f"run {run + 1} {model:<22} /init after {outcome['init_s']:5.2f} s wall ({outcome['uptime_at_init_s']:.2f} s guest, "
                    f"{outcome['cpu_to_init_s']:.2f} s QEMU CPU), {args.execs} execs {outcome['execs_s']:5.2f} s ({outcome['cpu_execs_s']:.2f} s QEMU CPU)",
                    flush=True,
                )
    summary = {}
    print(f"\nmedians of {args.runs}, {args.cpus} vCPUs, {args.execs} execs; host load {os.getloadavg()[0]:.1f}")
    print(f"{'model':<22} {'/init wall':>10} {'/init guest':>11} {'/init CPU':>9} {'execs wall':>10} {'execs CPU':>9} {'CPU/exec':>8}")
    for model in models:
        runs = results[model]
        medians = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        summary[model] = {**medians, "cpu_ms_per_exec": round(1000 * medians["cpu_execs_s"] / args.execs, 1), "runs": runs}
        print(
            f"{model:<22} {medians['init_s']:>9.2f}s {medians['uptime_at_init_s']:>10.2f}s {medians['cpu_to_init_s']:>8.2f}s "
            f"{medians['execs_s']:>9.2f}s {medians['cpu_execs_s']:>8.2f}s {1000 * medians['cpu_execs_s'] / args.execs:>6.1f}ms"
        )
    path = save("arm64_cpu", {"qemu": qemu_version(Runner(), "qemu-system-aarch64"), "kernel": kernel.name, "cpus": args.cpus, "execs": args.execs, "models": summary})
    print(f"saved {path}")


if __name__ == "__main__":
    main()
