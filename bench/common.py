"""Shared by the benchmarks: a machine to measure, timing helpers, and result files.

Benchmarks measure medians and percentiles over repeated runs; they are not tests and
assert nothing. Results go to bench/results/NAME.json and a summary to stdout.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BIN = Path(sys.executable).parent
CACHE = Path(os.environ.get("PYMACHINE_CACHE_PATH") or Path.home() / ".cache" / "pymachine-test")


def program(name: str) -> str:
    local = BIN / name
    return str(local) if local.exists() else (shutil.which(name) or name)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * p / 100
    low, high = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


def summary(values: list[float]) -> dict:
    return {
        "n": len(values),
        "median": statistics.median(values) if values else None,
        "p95": percentile(values, 95),
        "min": min(values) if values else None,
        "max": max(values) if values else None,
    }


def save(name: str, data: dict) -> Path:
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    path = out / f"{name}.json"
    data = {"benchmark": name, "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **data}
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


class Bench:
    """A throwaway pymachine home with one machine, driven through the real commands."""

    def __init__(self, name: str = "bench") -> None:
        self.name = name
        self.storage = Path(tempfile.mkdtemp(prefix="pymachine-bench-"))
        docker_config = self.storage / "docker-config"
        docker_config.mkdir()
        self.env = {**os.environ, "PYMACHINE_STORAGE_PATH": str(self.storage), "PYMACHINE_CACHE_PATH": str(CACHE), "DOCKER_CONFIG": str(docker_config)}
        for key in ("DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH"):
            self.env.pop(key, None)

    def pm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run([program("pymachine"), *args], env=self.env, capture_output=True, text=True)
        if check and done.returncode:
            raise SystemExit(f"pymachine {' '.join(args)} failed:\n{done.stderr}")
        return done

    def docker_env(self) -> dict:
        env = dict(self.env)
        for line in self.pm("env", "--shell", "bash", self.name).stdout.splitlines():
            key, _, value = line.removeprefix("export ").partition("=")
            env[key] = value.removesuffix(";").strip('"')
        return env

    def docker(self, *args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run([program("docker"), *args], env=env or self.docker_env(), capture_output=True, text=True)
        if check and done.returncode:
            raise SystemExit(f"docker {' '.join(args)} failed:\n{done.stderr}")
        return done

    def import_busybox(self, env: dict, arch: str = "") -> None:
        tarball = self.storage / "busybox.tar"
        script = [str(ROOT / "scripts" / "busybox-rootfs.sh"), str(tarball), *([arch] if arch else [])]
        subprocess.run(script, check=True, env={**self.env, "PYMACHINE": program("pymachine")})
        self.docker("import", str(tarball), "busybox-local:latest", env=env)

    def cleanup(self) -> None:
        for name in self.pm("ls", "-q", check=False).stdout.split():
            self.pm("rm", "-f", "-y", name, check=False)
        shutil.rmtree(self.storage, ignore_errors=True)


def http_ok(port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
            return sock.recv(12).startswith(b"HTTP/1.")
    except OSError:
        return False


def refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.settimeout(0.5)
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
            return not sock.recv(12)
    except OSError:
        return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait(predicate, timeout: float, interval: float = 0.001) -> float | None:
    """Seconds until predicate() holds, polling every `interval`; None on timeout."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(interval)
    return None
