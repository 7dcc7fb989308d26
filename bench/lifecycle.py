"""`pymachine create` to Docker ready, and `start` of a provisioned machine to Docker
ready, timed through the real command (medians).

    python bench/lifecycle.py [--runs 3] [--arch amd64|arm64]
"""

from __future__ import annotations

import argparse
import time

from common import Bench, save, summary


def timed(bench: Bench, *args: str) -> float:
    started = time.monotonic()
    bench.pm(*args)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--arch", default=None, help="amd64 or arm64 (default: this host's)")
    args = parser.parse_args()
    bench = Bench("life")
    result: dict = {}
    try:
        creates, starts = [], []
        for run in range(args.runs):
            name = f"life{run}"
            arch = ["--arch", args.arch] if args.arch else []
            creates.append(timed(bench, "create", name, "-o", "restrict-network=true", "--no-mounts", *arch))
            print(f"create {run + 1}: {creates[-1]:.1f} s", flush=True)
            bench.pm("stop", name)
            starts.append(timed(bench, "start", name))
            print(f"start {run + 1}: {starts[-1]:.1f} s", flush=True)
            bench.pm("rm", "-y", name)
        result["create_to_docker_ready_s"] = summary(creates)
        result["start_to_docker_ready_s"] = summary(starts)
        print(f"create: median {result['create_to_docker_ready_s']['median']:.1f} s; start: median {result['start_to_docker_ready_s']['median']:.1f} s")
        label = args.arch or "host"
        result["arch"] = label
        print(f"saved to {save(f'lifecycle-{label}', result)}")
    finally:
        bench.cleanup()


if __name__ == "__main__":
    main()
