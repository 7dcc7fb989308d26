"""The watcher's world without a VM: a driver that keeps forwards as a hypervisor would,
the SSH shell the watcher runs its guest scripts through, and Docker's answers."""

from __future__ import annotations

from typing import Any

from pymachine.driver import Feature, PortForward, State
from pymachine.errors import PortUnavailable

PORT = 8096
A_ID, B_ID = "a" * 64, "b" * 64


class RecordingDriver:
    """The watcher's view of a driver: it keeps forwards as a hypervisor would, and refuses
    a host port in `busy` as QEMU does."""

    name = "stub"
    features = frozenset({Feature.RUNTIME_FORWARDS, Feature.UDP_FORWARDS, Feature.ANY_HOST_ADDRESS, Feature.LOOPBACK_FORWARDS})

    def __init__(self) -> None:
        self.forwards: set[PortForward] = set()
        self.busy: set[int] = set()
        self.calls: list[tuple[str, PortForward]] = []
        self.vm_state = State.RUNNING

    def supports(self, feature: object) -> bool:
        return feature in self.features

    def docker_endpoint(self) -> Any:
        from pymachine.driver import Endpoint

        return Endpoint("127.0.0.1", 2376)

    def state(self) -> State:
        return self.vm_state

    def add_forward(self, forward: PortForward) -> None:
        self.calls.append(("add", forward))
        if forward.host_port in self.busy or any(f.key == forward.key for f in self.forwards):
            raise PortUnavailable(f"Host port {forward.host_ip}:{forward.host_port}/{forward.protocol} is already in use or not allowed")
        self.forwards.add(forward)

    def remove_forward(self, forward: PortForward) -> None:
        self.calls.append(("remove", forward))
        self.forwards = {f for f in self.forwards if f.key != forward.key}

    def list_forwards(self) -> list[PortForward]:
        return sorted(self.forwards)


class GuestShell:
    """The watcher's SSH into the guest: keeps the scripts it runs (the DNAT rules)."""

    def __init__(self) -> None:
        self.scripts: list[str] = []

    def run(self, script: str, timeout: float = 30) -> None:
        self.scripts.append(script)

    def close(self) -> None:
        pass


class FakeDockerAPI:
    """`containers()` and `inspect()` as the reconcile asks them, newest container first as Docker lists them."""

    def __init__(self, containers: dict[str, dict[str, Any]]) -> None:
        self.data = containers

    def containers(self) -> list[dict[str, Any]]:
        return [{"Id": cid, "Created": data["CreatedUnix"]} for cid, data in sorted(self.data.items(), key=lambda kv: -kv[1]["CreatedUnix"])]

    def inspect(self, cid: str) -> dict[str, Any] | None:
        return self.data.get(cid)

    def close(self) -> None:
        pass


def container(cid: str, name: str, host_ip: str, created: int) -> dict[str, Any]:
    """Inspect data of a running `docker run -p HOST_IP:8096:80`."""
    binding = [{"HostIp": host_ip, "HostPort": str(PORT)}]
    return {
        "Id": cid,
        "Name": f"/{name}",
        "CreatedUnix": created,
        "State": {"Running": True},
        "HostConfig": {"PortBindings": {"80/tcp": binding}},
        "NetworkSettings": {"Ports": {"80/tcp": binding}},
    }
