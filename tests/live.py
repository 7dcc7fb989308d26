"""Helpers for live tests that drive the real `pymachine` and `docker` commands."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def program(name: str) -> str:
    local = BIN / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    assert found, f"{name} is not installed (scripts/setup.sh installs it)"
    return found


class CLI:
    """`pymachine` and `docker` run as a user would, against one storage folder."""

    def __init__(self, storage: Path, cache: Path) -> None:
        self.env = {**os.environ, "PYMACHINE_STORAGE_PATH": str(storage), "PYMACHINE_CACHE_PATH": str(cache)}
        self.storage = storage

    def pm(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        done = subprocess.run([program("pymachine"), *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"pymachine {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        return done

    def docker_env(self, name: str) -> dict[str, str]:
        out = self.pm("env", "--shell", "bash", name).stdout
        env = dict(self.env)
        for line in out.splitlines():
            key, _, value = line.removeprefix("export ").partition("=")
            env[key] = value.removesuffix(";").strip('"')
        return env

    def docker(self, name: str, *args: str, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess:
        done = subprocess.run([program("docker"), *args], env=self.docker_env(name), capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        return done

    def ports(self, name: str) -> dict:
        return json.loads(self.pm("ports", name, "--format", "json").stdout)

    def machine_dir(self, name: str) -> Path:
        return self.storage / "machines" / name


def http_get(port: int, timeout: float = 2.0, host: str = "127.0.0.1") -> str | None:
    """The body of GET / on host:port, or None if nothing answers."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
            data = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    if not data.startswith(b"HTTP/"):
        return None
    return data.split(b"\r\n\r\n", 1)[-1].decode(errors="replace")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def machine_with_image(tmp_path_factory, name: str, rootfs: Path, image: str):
    """A module's one machine (restricted network, 1.5 GiB) with `image` imported from
    `rootfs`, removed when the module is done, whatever a test left."""
    from .conftest import image_cache

    cli = CLI(tmp_path_factory.mktemp("store"), image_cache())
    try:
        cli.pm("create", name, "-o", "restrict-network=true", "--memory", "1536")
        cli.docker(name, "import", str(rootfs), f"{image}:latest")
        yield cli
    finally:
        cli.pm("rm", "-f", "-y", name, check=False)
