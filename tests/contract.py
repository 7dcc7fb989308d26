"""The driver contract suite, run against every driver (see test_driver_contract.py).

A harness makes one driver for a fresh MachineSpec and knows how to check, from the
host, that a forward really carries traffic (`probe_forward`). For QEMU that is a real
connection through the real VM; for the drivers tested through fakes it asks the fake
tool's own state, which is what the real tool would report.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pymachine.driver import BootMedia, Driver, MachineSpec
from pymachine.guest.certs import SSHKeyPair
from pymachine.guest.configmedium import write_config_medium


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_spec(directory: Path, name: str, boot: BootMedia, cpus: int = 2, memory_mb: int = 1024) -> MachineSpec:
    """A MachineSpec with its config medium (keys included), as the core would make it."""
    directory.mkdir(parents=True, exist_ok=True)
    user = SSHKeyPair.generate("test")
    user.write(directory / "id_ed25519")
    host = SSHKeyPair.generate("host")
    host.write(directory / "ssh_host_ed25519_key")
    write_config_medium(directory / "config.iso", name, user.public_line, host.private_pem)
    return MachineSpec(
        name=name,
        directory=directory,
        cpus=cpus,
        memory_mb=memory_mb,
        disk_mb=4096,
        boot=boot,
        config_medium=directory / "config.iso",
        ssh_port=free_port(),
        docker_port=free_port(),
    )


@dataclass
class Harness:
    """One driver under test, and how to check its forwards from outside."""

    name: str
    driver: Driver
    #: (host port, guest port) -> True when the forward demonstrably reaches the guest
    probe_forward: Callable[[int, int], bool]
    #: wait until the guest answers after start (a real boot takes seconds)
    wait_booted: Callable[[], None] = lambda: None
    #: a guest port with a server behind it, for probe_forward
    guest_service_port: int = 22
    #: (host port, guest port) -> True when the hypervisor carries host port to the guest
    #: for a connection from the network (another host address than loopback)
    probe_from_network: Callable[[int, int], bool] | None = None
    extra: dict = field(default_factory=dict)


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def read_banner(port: int, timeout: float = 5.0) -> bytes:
    """The first bytes a server on 127.0.0.1:port sends (SSH servers greet first)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            return sock.recv(64)
    except OSError:
        return b""
