"""Start-up cost of the commands people run most: `pymachine env NAME` (in every new
shell) and `pymachine ls` with 20 machines. Wall time of the whole process, medians.

The machines are real store entries of stopped QEMU machines (config, keys, disk
file); no VM needs to run to measure this.

    python bench/cli.py [--runs 30]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import program, save, summary  # noqa: E402

from pymachine.store import STATUS_READY, MachineConfig, Store  # noqa: E402


def make_store(root: Path, count: int) -> None:
    store = Store(root)
    for i in range(count):
        config = MachineConfig(name=f"m{i:02d}", driver="qemu", ssh_port=40000 + 2 * i, docker_port=40001 + 2 * i, status=STATUS_READY, engine_version="20.10.24")
        with store.reserve(config) as directory:
            (directory / "data.qcow2").write_bytes(b"")


def wall(argv: list[str], env: dict, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pymachine-clibench-") as tmp:
        root = Path(tmp)
        make_store(root, 20)
        env = {**os.environ, "PYMACHINE_STORAGE_PATH": str(root)}
        env.pop("DOCKER_HOST", None)
        pm = program("pymachine")
        baseline = wall([sys.executable, "-c", "pass"], env, args.runs)
        env_times = wall([pm, "env", "m00"], env, args.runs)
        ls_times = wall([pm, "ls"], env, max(5, args.runs // 3))
    result = {"python_startup_s": summary(baseline), "env_s": summary(env_times), "ls_20_machines_s": summary(ls_times)}
    print(f"python itself: {result['python_startup_s']['median'] * 1000:.0f} ms")
    print(f"pymachine env: median {result['env_s']['median'] * 1000:.0f} ms (bar 100 ms)")
    print(f"pymachine ls (20 machines): median {result['ls_20_machines_s']['median'] * 1000:.0f} ms (bar 500 ms)")
    print(f"saved to {save('cli', result)}")


if __name__ == "__main__":
    main()
