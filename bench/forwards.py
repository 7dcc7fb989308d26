"""Automatic forwarding, measured: how soon a published port answers after `docker run -d`
returns, how soon it refuses after `docker stop` returns, 100 containers at once, and
throughput through the forward against an `ssh -L` tunnel into the same VM.

    python bench/forwards.py [--runs 20] [--load 100] [--mb 200]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import Bench, free_port, http_ok, program, refused, save, summary, wait


def latency(bench: Bench, env: dict, runs: int) -> tuple[list[float], list[float]]:
    added, removed = [], []
    for i in range(runs):
        port = free_port()
        bench.docker("run", "-d", "--name", f"lat{i}", "-p", f"{port}:80", "busybox-local", "httpd", "-f", "-p", "80", "-h", "/www", env=env)
        took = wait(lambda: http_ok(port, 0.2), timeout=10)
        added.append(took if took is not None else float("inf"))
        bench.docker("stop", "-t", "1", f"lat{i}", env=env)
        took = wait(lambda: refused(port), timeout=10)
        removed.append(took if took is not None else float("inf"))
        bench.docker("rm", f"lat{i}", env=env)
    return added, removed


def load(bench: Bench, env: dict, count: int) -> dict:
    """`count` containers started together (16 docker clients at once). Each port is
    polled from the moment its own `docker run` returns (it cannot be expected sooner),
    so the figure is when the last forward answered, and the pollers stay too light to
    slow the runs they measure."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    returned: list[float] = []
    answered: dict[int, float] = {}
    stop = threading.Event()
    pollers: list[threading.Thread] = []

    def poll(port: int) -> None:
        while not stop.is_set():
            if http_ok(port, 1.0):
                answered[port] = time.monotonic()
                return
            time.sleep(0.01)

    failures: list[str] = []

    def run(i: int) -> None:
        argv = ("run", "-d", "--name", f"load{i}", "-p", f"{ports[i]}:80", "busybox-local", "httpd", "-f", "-p", "80", "-h", "/www")
        done = bench.docker(*argv, env=env, check=False)
        if done.returncode:
            # In a guest short of memory runc failed to start one container of a hundred
            # ("read init-p: connection reset by peer"; bench/suite.py's SUITE_MEMORY_MB).
            # Run it again once, and count it in the result, so one such start does not
            # throw away the measurements before it.
            failures.append(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}")
            kernel = bench.pm("ssh", bench.name, "--", "dmesg | tail -n 5", check=False).stdout.strip()
            print(f"docker run load{i} failed: {failures[-1]}\nthe guest kernel's last words:\n{kernel}", file=sys.stderr, flush=True)
            bench.docker("rm", "-f", f"load{i}", env=env, check=False)
            bench.docker(*argv, env=env)
        returned.append(time.monotonic())
        poller = threading.Thread(target=poll, args=(ports[i],), daemon=True)
        poller.start()
        pollers.append(poller)

    pool = ThreadPoolExecutor(max_workers=16)
    try:
        list(pool.map(run, range(count)))
    finally:
        pool.shutdown(cancel_futures=True)
    last = max(returned)
    for thread in pollers:
        thread.join(timeout=max(0.0, 60 - (time.monotonic() - last)))
    stop.set()
    reachable_after = max(answered.values()) - last if len(answered) == count else float("inf")

    names = [f"load{i}" for i in range(count)]
    bench.docker("rm", "-f", *names, env=env)
    removed_at = time.monotonic()
    live = set(ports)
    while live and time.monotonic() - removed_at < 60:
        live = {p for p in live if not refused(p)}
    gone_after = time.monotonic() - removed_at
    time.sleep(1.0)
    leaked = json.loads(bench.pm("ports", bench.name, "--format", "json").stdout)["forwards"]
    return {
        "containers": count,
        "all_reachable_after_last_run_s": round(reachable_after, 3),
        "unreachable": count - len(answered),
        "all_gone_after_rm_s": round(gone_after, 3),
        "still_answering": len(live),
        "forwards_left": len(leaked),
        "runs_started_again": failures,
    }


def receive_all(port: int, size: int, results: dict) -> None:
    """Download: GET /big over HTTP/1.0 and count the bytes until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        got = 0
        start = time.monotonic()
        sock.sendall(b"GET /big HTTP/1.0\r\n\r\n")
        while True:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            got += len(chunk)
        results["bytes"] = got
        results["seconds"] = time.monotonic() - start


def send_all(port: int, size: int, results: dict) -> None:
    """Upload: send `size` bytes, close our side, and wait for the receiver to finish."""
    block = b"\0" * (1 << 20)
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        start = time.monotonic()
        sent = 0
        while sent < size:
            sock.sendall(block)
            sent += len(block)
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(65536):
            pass
        results["bytes"] = sent
        results["seconds"] = time.monotonic() - start


def qemu_cpu(pid: int | None) -> dict[int, float]:
    """CPU seconds used so far by each thread of QEMU's process (Linux only: {} elsewhere).
    The first thread is QEMU's main loop, where its user-mode network stack (slirp) runs;
    under TCG the others are mostly the vCPUs."""
    if pid is None:
        return {}
    tick = os.sysconf("SC_CLK_TCK")
    used: dict[int, float] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return {}
    for tid in tids:
        try:
            fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        used[int(tid)] = (int(fields[11]) + int(fields[12])) / tick
    return used


def cpu_cost(pid: int | None, before: dict[int, float], megabytes: float) -> dict | None:
    """QEMU's CPU milliseconds per MB moved since `before`: in all, and in the main loop.
    Unlike MB/s, this hardly moves when other work on the host takes CPU time away."""
    after = qemu_cpu(pid)
    if not after or not megabytes:
        return None
    spent = {tid: after[tid] - before.get(tid, 0.0) for tid in after}
    return {"all": round(sum(spent.values()) * 1000 / megabytes, 1), "main_loop": round(spent.get(pid, 0.0) * 1000 / megabytes, 1)}


def _upload_works(port: int) -> bool:
    try:
        send_all(port, 1 << 20, {})
    except OSError:
        return False
    time.sleep(0.5)
    return True


def throughput(bench: Bench, env: dict, megabytes: int) -> dict:
    """The same servers in a container, through the forward and through `ssh -L`, in
    both directions; the two paths alternate three times so a busy moment hits both."""
    down, up = free_port(), free_port()
    bench.docker(
        "run", "-d", "--name", "sender", "-p", f"{down}:7000", "-p", f"{up}:7001", "busybox-local", "sh", "-c",
        f"dd if=/dev/zero of=/www/big bs=1M count={megabytes} 2>/dev/null && "
        "(while true; do nc.openbsd -d -l 7001 > /dev/null; done &) && httpd -f -p 7000 -h /www",
        env=env,
    )
    wait(lambda: http_ok(down, 1.0), timeout=120, interval=0.2)
    wait(lambda: _upload_works(up), timeout=60, interval=0.2)
    machine_dir = bench.storage / "machines" / bench.name
    ssh_port = json.loads((machine_dir / "config.json").read_text())["ssh_port"]
    tunnel_down, tunnel_up = free_port(), free_port()
    tunnel = subprocess.Popen(
        [
            program("ssh"), "-N", "-i", str(machine_dir / "id_ed25519"), "-p", str(ssh_port),
            "-o", f"UserKnownHostsFile={machine_dir / 'known_hosts'}", "-o", f"HostKeyAlias=pymachine-{bench.name}",
            "-o", "StrictHostKeyChecking=yes", "-o", "ExitOnForwardFailure=yes",
            "-L", f"127.0.0.1:{tunnel_down}:127.0.0.1:{down}", "-L", f"127.0.0.1:{tunnel_up}:127.0.0.1:{up}", "root@127.0.0.1",
        ]
    )
    size = megabytes << 20
    pidfile = machine_dir / "qemu.pid"
    pid = int(pidfile.read_text()) if pidfile.exists() else None
    result: dict = {"megabytes": megabytes}
    try:
        wait(lambda: http_ok(tunnel_down, 1.0), timeout=30, interval=0.1)
        wait(lambda: _upload_works(tunnel_up), timeout=30, interval=0.1)
        for direction, move, ports in (("download", receive_all, (down, tunnel_down)), ("upload", send_all, (up, tunnel_up))):
            rates: dict[str, list[float]] = {"forward": [], "ssh": []}
            costs: dict[str, list[dict]] = {"forward": [], "ssh": []}
            for _ in range(3):
                for path, port in zip(("forward", "ssh"), ports):
                    run: dict = {}
                    before = qemu_cpu(pid)
                    move(port, size, run)
                    cost = cpu_cost(pid, before, run["bytes"] / 1e6)
                    time.sleep(0.5)  # the upload receiver (one nc per connection) listens again
                    if run["bytes"] >= size:
                        rates[path].append(run["bytes"] / run["seconds"] / 1e6)
                        if cost:
                            costs[path].append(cost)
            forward, ssh = statistics.median(rates["forward"]), statistics.median(rates["ssh"])
            result[direction] = {
                "forward_MBps": round(forward, 2),
                "ssh_tunnel_MBps": round(ssh, 2),
                "ratio": round(forward / ssh, 2),
                "forward_runs_MBps": [round(r, 2) for r in rates["forward"]],
                "ssh_runs_MBps": [round(r, 2) for r in rates["ssh"]],
            }
            if costs["forward"] and costs["ssh"]:
                cost_forward = statistics.median(c["all"] for c in costs["forward"])
                cost_ssh = statistics.median(c["all"] for c in costs["ssh"])
                result[direction] |= {
                    "forward_qemu_cpu_ms_per_MB": cost_forward,
                    "ssh_qemu_cpu_ms_per_MB": cost_ssh,
                    "cost_ratio": round(cost_ssh / cost_forward, 2),
                    "forward_main_loop_cpu_ms_per_MB": statistics.median(c["main_loop"] for c in costs["forward"]),
                    "ssh_main_loop_cpu_ms_per_MB": statistics.median(c["main_loop"] for c in costs["ssh"]),
                }
    finally:
        tunnel.terminate()
        tunnel.wait(10)
    bench.docker("rm", "-f", "sender", env=env)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--load", type=int, default=100)
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--parts", default="latency,load,throughput", help="which measurements, comma-separated")
    parser.add_argument("--engine-opt", action="append", default=[], help="passed to create, e.g. userland-proxy=false")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    bench = Bench("fwdbench")
    try:
        bench.pm("create", bench.name, "-o", "restrict-network=true", "--memory", "4096", *[f"--engine-opt={o}" for o in args.engine_opt])
        env = bench.docker_env()
        bench.import_busybox(env)
        result: dict = {"engine_options": args.engine_opt}
        if "latency" in parts:
            added, removed = latency(bench, env, args.runs)
            result |= {"added_s": summary(added), "removed_s": summary(removed)}
            print(f"added:   median {result['added_s']['median'] * 1000:.0f} ms, p95 {result['added_s']['p95'] * 1000:.0f} ms (n={args.runs})")
            print(f"removed: median {result['removed_s']['median'] * 1000:.0f} ms, p95 {result['removed_s']['p95'] * 1000:.0f} ms")
        if "load" in parts:
            result["load"] = load(bench, env, args.load)
            print(f"load:    {result['load']}")
        if "throughput" in parts:
            result["throughput"] = throughput(bench, env, args.mb)
            print(f"throughput: {result['throughput']}")
        print(f"saved to {save('forwards', result)}")
    finally:
        bench.cleanup()


if __name__ == "__main__":
    sys.exit(main())
