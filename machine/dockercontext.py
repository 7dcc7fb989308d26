"""The docker context pymachine keeps for each machine ("pymachine-NAME").

`docker --context pymachine-dev ps` or `pymachine use dev` then work without `env`.
Contexts are made with the docker CLI itself (through the runner), so they land in the
user's own docker config; without a docker CLI this is skipped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pymachine.errors import CommandFailed, MachineError
from pymachine.guest.certs import CertPaths
from pymachine.runner import Runner
from pymachine.store import Store

PREFIX = "pymachine-"


def context_name(machine: str) -> str:
    return f"{PREFIX}{machine}"


def docker_config_dir() -> Path:
    return Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker")


def current_context() -> str | None:
    """The docker CLI's current context, read from its config file (cheap, no CLI call)."""
    if os.environ.get("DOCKER_CONTEXT"):
        return os.environ["DOCKER_CONTEXT"]
    try:
        data = json.loads((docker_config_dir() / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return data.get("currentContext") or None


def active_machine(store: Store) -> str | None:
    """The machine the docker CLI points at: by DOCKER_HOST, else by the current context."""
    host = os.environ.get("DOCKER_HOST", "")
    names = store.names()
    if host:
        for name in names:
            try:
                if store.load(name).docker_url == host:
                    return name
            except MachineError:
                continue
        return None
    current = current_context()
    return next((name for name in names if current == context_name(name)), None)


class DockerContexts:
    """Create, update, switch to and remove machines' docker contexts."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    def available(self) -> bool:
        return self.runner.which("docker") is not None

    def exists(self, machine: str) -> bool:
        out = self.runner.run(["docker", "context", "inspect", context_name(machine)], check=False, timeout=30)
        return out.returncode == 0

    def save(self, machine: str, port: int, certs: CertPaths) -> bool:
        """Create or update the context; False when there is no docker CLI."""
        if not self.available():
            return False
        endpoint = f"host=tcp://127.0.0.1:{port},ca={certs.ca},cert={certs.cert},key={certs.key}"
        verb = "update" if self.exists(machine) else "create"
        self.runner.run(
            ["docker", "context", verb, context_name(machine), "--description", f"pymachine machine {machine}", "--docker", endpoint],
            timeout=30,
        )
        return True

    def use(self, machine: str) -> None:
        if not self.available():
            raise MachineError("The docker CLI is not installed", "Install it, or use `eval $(pymachine env NAME)` with another client")
        try:
            self.runner.run(["docker", "context", "use", context_name(machine)], timeout=30)
        except CommandFailed as exc:
            raise MachineError(f"docker could not switch to context {context_name(machine)}: {exc.message.split(': ', 1)[-1]}", f"Run `pymachine provision {machine}` to make it again") from None

    def remove(self, machine: str) -> None:
        if not self.available() or not self.exists(machine):
            return
        if current_context() == context_name(machine):
            self.runner.run(["docker", "context", "use", "default"], check=False, timeout=30)
        self.runner.run(["docker", "context", "rm", "-f", context_name(machine)], check=False, timeout=30)
