"""Every benchmark in one run, one table, one JSON file (`bench/run` runs this).

Each figure is a median with its min and max over repeated runs, and the floors it is
measured against come from the same run: boot to SSH of the same image, an `ssh -L`
tunnel into the same VM, and raw TCP over this host's loopback. The table's first line
says which accelerator ran the guests: figures under TCG (emulation) are far slower
than the same steps under HVF or KVM.

    bench/run [--runs 3] [--arch amd64|arm64] [--only lifecycle,forwards,...] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import boot as boot_bench  # noqa: E402
import cli as cli_bench  # noqa: E402
import forwards as forward_bench  # noqa: E402
from common import CACHE, ROOT, Bench, free_port, program, summary, wait  # noqa: E402

from pymachine.arch import ARCHES, host_arch  # noqa: E402
from pymachine.drivers.qemu import detect_accelerator, qemu_version, system_program  # noqa: E402
from pymachine.image import BootImage, manifest_name  # noqa: E402
from pymachine.runner import Runner  # noqa: E402

PARTS = ("floors", "lifecycle", "forwards", "listeners", "memory", "cli", "sizes")


class Table:
    """Rows of (section, figure, unit, summary), kept in the order they were measured."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def add(self, section: str, figure: str, unit: str, values: list[float], note: str = "") -> None:
        row = {"section": section, "figure": figure, "unit": unit, **summary(values), "runs": [round(v, 4) for v in values]}
        if note:
            row["note"] = note
        self.rows.append(row)
        print(f"  {figure}: {_fmt(row['median'], unit)} ({_fmt(row['min'], unit)} .. {_fmt(row['max'], unit)}, n={row['n']})", flush=True)

    def render(self, header: str) -> str:
        lines = [
            header,
            "",
            f"| {'figure':<46} | {'median':>10} | {'p95':>10} | {'min':>10} | {'max':>10} | {'n':>3} |",
            f"|{'-' * 48}|{'-' * 12}:|{'-' * 12}:|{'-' * 12}:|{'-' * 12}:|{'-' * 4}:|",
        ]
        section = None
        for row in self.rows:
            if row["section"] != section:
                section = row["section"]
                lines.append(f"| **{section}** | | | | | |")
            name = row["figure"] + (f" ({row['note']})" if row.get("note") else "")
            # p95 only where it says something: ten runs or more
            p95 = _fmt(row.get("p95"), row["unit"]) if row["n"] >= 10 else ""
            cells = (_fmt(row["median"], row["unit"]), p95, _fmt(row["min"], row["unit"]), _fmt(row["max"], row["unit"]))
            lines.append(f"| {name:<46} | " + " | ".join(f"{c:>10}" for c in cells) + f" | {row['n']:>3} |")
        return "\n".join(lines)

    @classmethod
    def from_json(cls, path: Path) -> tuple[Table, str]:
        """A saved run, to render again: (its table, its header)."""
        data = json.loads(Path(path).read_text())
        table = cls()
        table.rows = data["rows"]
        return table, data["header"]


def _fmt(value: float | None, unit: str) -> str:
    if value is None or value != value:
        return "-"
    if value == float("inf"):
        return "never"
    if unit == "ms":
        return f"{value * 1000:.0f} ms"
    if unit == "s":
        # below a second (the load's figures), seconds to one decimal would all read 0.0 s
        return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.1f} s"
    if unit in ("MB", "MB/s"):
        return f"{value:.1f} {unit}"
    if unit == "x":
        return f"{value:.2f}x"
    return f"{value:g} {unit}".strip()


def timed(action: Callable[[], object]) -> float:
    started = time.monotonic()
    action()
    return time.monotonic() - started


# -- the floors -------------------------------------------------------------------------


def loopback_throughput(megabytes: int) -> float:
    """MB/s of one TCP stream over 127.0.0.1 on this host: the ceiling for any forward."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    size = megabytes << 20

    def drain() -> None:
        conn, _ = server.accept()
        with conn:
            while conn.recv(1 << 20):
                pass

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    block = b"\0" * (1 << 20)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        started = time.monotonic()
        for _ in range(megabytes):
            sock.sendall(block)
    reader.join()
    server.close()
    return size / (time.monotonic() - started) / 1e6


def floors(table: Table, runs: int, arch: str, megabytes: int) -> None:
    table.add("floors", "raw TCP over host loopback", "MB/s", [loopback_throughput(megabytes * 4) for _ in range(runs)])
    image = BootImage.from_manifest(CACHE / manifest_name(arch))
    times = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="pymachine-boot-") as tmp:
            times.append(boot_bench.boot_once(image, "kernel", Path(tmp) / "m"))
    table.add("floors", "QEMU boot to SSH login, same image", "s", times)


# -- a machine's life -------------------------------------------------------------------


def lifecycle(table: Table, runs: int, arch: str) -> None:
    bench = Bench("life")
    creates, starts, stops, removes = [], [], [], []
    try:
        for run in range(runs):
            name = f"life{run}"
            creates.append(timed(lambda: bench.pm("create", name, "-o", "restrict-network=true", "--no-mounts", "--arch", arch)))
            stops.append(timed(lambda: bench.pm("stop", name)))
            starts.append(timed(lambda: bench.pm("start", name)))
            removes.append(timed(lambda: bench.pm("rm", "-f", "-y", name)))
    finally:
        bench.cleanup()
    table.add("lifecycle", "create to a ready Docker", "s", creates)
    table.add("lifecycle", "start (stopped) to a ready Docker", "s", starts)
    table.add("lifecycle", "stop", "s", stops)
    table.add("lifecycle", "rm -f of a running machine", "s", removes)


# -- one machine, measured while it runs ------------------------------------------------


#: The measured machine's memory. A hundred running containers with published ports (a
#: containerd shim and two docker-proxy processes each) need about 1.7 GB in the guest: in
#: a 2 GiB guest the load ran out of memory, thrashed, and runc failed to start containers.
SUITE_MEMORY_MB = 4096


class RunningMachine:
    """One machine for the forward, listener and memory figures, made once."""

    def __init__(self, arch: str) -> None:
        self.bench = Bench("suite")
        self.bench.pm("create", self.bench.name, "-o", "restrict-network=true", "--no-mounts", "--memory", str(SUITE_MEMORY_MB), "--arch", arch)
        self.env = self.bench.docker_env()
        self.bench.import_busybox(self.env, arch)

    def close(self) -> None:
        self.bench.cleanup()


def forwards(table: Table, machine: RunningMachine, runs: int, latency_runs: int, load_size: int, megabytes: int) -> None:
    bench, env = machine.bench, machine.env
    added, removed = forward_bench.latency(bench, env, latency_runs)
    table.add("forwards", "published port answers after `docker run -d`", "ms", added)
    table.rows[-1]["p95"] = summary(added)["p95"]
    table.add("forwards", "published port refuses after `docker stop`", "ms", removed)
    loads, gone, restarted = [], [], []
    for _ in range(runs if load_size else 0):  # --load 0 leaves the load out
        result = forward_bench.load(bench, env, load_size)
        loads.append(result["all_reachable_after_last_run_s"])
        gone.append(result["all_gone_after_rm_s"])
        restarted += result["runs_started_again"]
    for error in restarted:
        print(f"  a load container failed to start and was run again: {error}", flush=True)
    if loads:
        note = f"{len(restarted)} of {load_size * len(loads)} `docker run`s failed once and were run again" if restarted else ""
        table.add("forwards", f"{load_size} containers: all answer after the last run", "s", loads, note)
        table.add("forwards", f"{load_size} containers: all gone after rm -f", "s", gone)
    rates = forward_bench.throughput(bench, env, megabytes)
    for direction, label in (("download", "guest to host"), ("upload", "host to guest")):
        data = rates[direction]
        table.add("forwards", f"throughput {label}, forward", "MB/s", data["forward_runs_MBps"])
        table.add("forwards", f"throughput {label}, `ssh -L` (floor)", "MB/s", data["ssh_runs_MBps"])
        pairs = zip(data["forward_runs_MBps"], data["ssh_runs_MBps"])
        table.add("forwards", f"throughput {label}, forward / ssh -L", "x", [f / s for f, s in pairs if s])
    p95 = summary(added)["p95"]
    print(f"  p95 forward add: {p95 * 1000:.0f} ms", flush=True)


def listeners(table: Table, machine: RunningMachine, runs: int) -> None:
    """A process started over `pymachine ssh` listens in the guest; how soon the same port
    answers on the host, and how soon it refuses after the process is killed. Both count
    from the moment the `pymachine ssh` command is started, so they include its start-up,
    the SSH handshake and the process's own start in the guest, not only the scan."""
    bench = machine.bench
    up, down, missed = [], [], 0
    for _ in range(runs):
        port = free_port()
        script = f"busybox httpd -f -p {port} -h /tmp & echo $! > /tmp/listener.pid; wait"
        proc = subprocess.Popen([program("pymachine"), "ssh", bench.name, script], env=bench.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            took = wait(lambda: _answers(port), timeout=10, interval=0.005)
            if took is None:
                missed += 1
                continue
            up.append(took)
            started = time.monotonic()
            bench.pm("ssh", bench.name, "kill $(cat /tmp/listener.pid)")
            gone = wait(lambda: not _answers(port), timeout=10, interval=0.005)
            down.append(time.monotonic() - started if gone is not None else float("inf"))
        finally:
            proc.terminate()
            proc.wait(10)
    note = f"{missed} of {runs} never answered" if missed else ""
    table.add("listeners", "guest listener answers, from `pymachine ssh` started", "ms", up or [float("inf")], note)
    if down:
        table.add("listeners", "listener's port refuses, from `pymachine ssh ... kill` started", "ms", down)


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.settimeout(0.5)
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
            return sock.recv(12).startswith(b"HTTP/1.")
    except OSError:
        return False


def memory(table: Table, machine: RunningMachine, runs: int) -> None:
    bench = machine.bench

    def rss() -> int:
        return json.loads(bench.pm("inspect", bench.name).stdout)["host_memory_mb"]

    idle, after = [], []
    for _ in range(runs):
        time.sleep(5)
        idle.append(rss())
        name = bench.docker("run", "-d", "--tmpfs", "/fill:size=1100m", "busybox-local", "sh", "-c", "dd if=/dev/zero of=/fill/f bs=1M count=1024 && sleep 2", env=machine.env).stdout.strip()
        bench.docker("wait", name, env=machine.env)
        bench.docker("rm", name, env=machine.env)
        time.sleep(30)
        after.append(rss())
    table.add("memory", "VM resident memory, idle", "MB", idle)
    table.add("memory", "VM resident memory 30 s after 1 GiB was freed", "MB", after)


# -- the CLI and the sizes --------------------------------------------------------------


def cli(table: Table, runs: int, machine: RunningMachine | None) -> None:
    with tempfile.TemporaryDirectory(prefix="pymachine-clibench-") as tmp:
        root = Path(tmp)
        cli_bench.make_store(root, 20)
        env = {**os.environ, "PYMACHINE_STORAGE_PATH": str(root)}
        pm = program("pymachine")
        table.add("cli", "python -c pass (floor)", "ms", cli_bench.wall([sys.executable, "-c", "pass"], env, runs * 10))
        table.add("cli", "pymachine env NAME", "ms", cli_bench.wall([pm, "env", "m00"], env, runs * 10))
        table.add("cli", "pymachine ls, 20 stopped machines", "ms", cli_bench.wall([pm, "ls"], env, runs * 3))
    if machine is not None:
        table.add("cli", "pymachine status NAME, running", "ms", cli_bench.wall([pm, "status", machine.bench.name], machine.bench.env, runs * 3))


def sizes(table: Table, arch: str) -> None:
    image = BootImage.from_manifest(CACHE / manifest_name(arch))
    table.add("sizes", f"boot ISO ({arch})", "MB", [image.iso.stat().st_size / 1e6])
    if image.engine_bundle:
        table.add("sizes", f"engine bundle ({arch})", "MB", [image.engine_bundle.stat().st_size / 1e6])
    for wheel in sorted((ROOT / "dist").glob("*.whl")) if (ROOT / "dist").is_dir() else []:
        table.add("sizes", f"wheel {wheel.name.split('-')[0]}", "MB", [wheel.stat().st_size / 1e6])


# -- the run ----------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="repeats of each figure (latency: 10x this)")
    parser.add_argument("--arch", default=host_arch(), choices=ARCHES)
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated: {', '.join(PARTS)}")
    parser.add_argument("--load", type=int, default=100, help="containers in the load figure (0: leave the load out; it takes most of a run under TCG)")
    parser.add_argument("--mb", type=int, default=200, help="megabytes moved per throughput run")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "run.json")
    parser.add_argument("--render", type=Path, metavar="RUN.json", help="print the table of a saved run again, and measure nothing")
    args = parser.parse_args()
    if args.render:
        table, header = Table.from_json(args.render)
        print(table.render(header))
        return
    parts = [p for p in args.only.split(",") if p]
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown part(s) {', '.join(sorted(unknown))}; choose from {', '.join(PARTS)}")

    runner = Runner()
    accel = detect_accelerator(runner, "auto", args.arch).name
    qemu = qemu_version(runner, system_program(args.arch))
    header = (
        f"pymachine benchmarks, {time.strftime('%Y-%m-%d')}: {args.arch} guest, accelerator {accel}"
        f"{' (emulation: expect HVF or KVM to be several times faster)' if accel == 'tcg' else ''}; "
        f"QEMU {qemu}; host {platform.system()} {platform.machine()}, {os.cpu_count()} CPUs; medians of {args.runs} runs"
    )
    print(header, flush=True)
    table = Table()
    machine: RunningMachine | None = None
    failed = ""
    try:
        if "floors" in parts:
            floors(table, args.runs, args.arch, args.mb)
        if "lifecycle" in parts:
            lifecycle(table, args.runs, args.arch)
        if {"forwards", "listeners", "memory", "cli"} & set(parts):
            machine = RunningMachine(args.arch)
        if "forwards" in parts:
            forwards(table, machine, args.runs, args.runs * 10, args.load, args.mb)
        if "listeners" in parts:
            listeners(table, machine, args.runs * 10)
        if "memory" in parts:
            memory(table, machine, args.runs)
        if "cli" in parts:
            cli(table, args.runs, machine)
        if "sizes" in parts:
            sizes(table, args.arch)
    except BaseException as exc:
        # What was measured before the failure (or Ctrl-C) is still saved, marked incomplete.
        failed = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise
    finally:
        if machine is not None:
            machine.close()
        if failed:
            header += f"; INCOMPLETE, stopped by {failed[:200]}"
        rendered = table.render(header)
        print("\n" + rendered)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        record = {"header": header, "accelerator": accel, "arch": args.arch, "qemu": qemu, "runs": args.runs, "rows": table.rows}
        if failed:
            record["incomplete"] = failed
        args.out.write_text(json.dumps(record, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(rendered + "\n")
        print(f"\nsaved to {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
