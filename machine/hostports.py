"""Which host ports a machine's SSH and Docker forwards get.

Every machine has two host ports on 127.0.0.1, chosen free at create and kept in its
config. A stopped machine does not listen on them, so the choice also avoids the ports
other machines were given.
"""

from __future__ import annotations

import socket

from pymachine.errors import MachineError, PortUnavailable
from pymachine.store import Store


def ports_in_use(store: Store) -> set[int]:
    """Host ports the store's machines were given (they may be stopped, not listening)."""
    ports: set[int] = set()
    for name in store.names():
        try:
            config = store.load(name)
        except MachineError:
            continue
        ports.update(p for p in (config.ssh_port, config.docker_port) if p)
    return ports


def free_ports(count: int, exclude: set[int]) -> tuple[int, ...]:
    """`count` ports that 127.0.0.1 has free now, none of them in `exclude`."""
    chosen: list[int] = []
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in exclude and port not in chosen:
            chosen.append(port)
            if len(chosen) == count:
                return tuple(chosen)
    raise PortUnavailable("No free TCP port on 127.0.0.1", "Free some ports, then try again")


def machine_ports(store: Store, avoid: set[int] = frozenset()) -> tuple[int, int]:
    """(ssh, docker) host ports for a machine, free now and given to no other machine."""
    ssh, docker = free_ports(2, exclude=ports_in_use(store) | set(avoid))
    return ssh, docker
