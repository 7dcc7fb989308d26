"""A fake Parallels Desktop host: its VMs and its Shared network's NAT rules.

The state is a JSON file named by $PYMACHINE_FAKE_PARALLELS, changed under a lock file
by the fake prlctl and prlsrvctl (parallels.py) and read by tests.

Facts it follows (docker-machine-parallels, vagrant-parallels, REFERENCE.md):
`prlctl --version` prints `prlctl version X.Y.Z (BUILD)`; `prlsrvctl info --license`
prints `edition="pro"` among key=value lines; a missing VM is
`Failed to get VM config: The virtual machine could not be found. ...` (exit 255);
`prlctl list -a -j` is `[{"uuid","status","ip_configured","name"}]` with the uuid in
braces; statuses are running, paused, suspended, stopping, stopped; NAT rules are
global to the network, `--nat-tcp-add NAME,SRC_PORT,VM_ID,DEST_PORT`, a duplicate name
is `The rule with 'NAME' name already exists!`, and `prlsrvctl net info Shared --json`
lists them under "NAT server" / "TCP rules" / "UDP rules" by name with "source port",
"destination IP/VM id" and "destination port".
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

STATE_ENV = "PYMACHINE_FAKE_PARALLELS"
LIVE_STATUSES = {"running", "paused", "stopping", "starting", "suspending", "resuming", "pausing", "restoring", "continuing", "resetting"}

DEFAULT_FAULTS: dict[str, Any] = {
    "login_failed": 0,  # the next N calls cannot reach the Parallels service
    "stop": "shutdown",  # what the guest does with `prlctl stop`: "shutdown" or "ignore"
    "stop_hang": 30.0,  # seconds `prlctl stop` waits for a guest that ignores it
}


class FakeParallels:
    """A handle on one fake host's state file, for the fakes and for tests."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.log_path = self.path.with_name(self.path.name + ".argv.log")

    @classmethod
    def from_environment(cls) -> FakeParallels:
        return cls(os.environ[STATE_ENV])

    def initialise(self, version: str = "18.1.1 (53328)", edition: str = "pro", **faults: Any) -> FakeParallels:
        data = {
            "version": version,
            "edition": edition,
            "vms": [],
            "networks": {
                "Shared": {"type": "shared", "bound_to": "vnic0", "ip": "10.211.55.2", "tcp": {}, "udp": {}},
                "Host-Only": {"type": "host-only", "bound_to": "vnic1", "ip": "10.37.129.2", "tcp": {}, "udp": {}},
            },
            "faults": {**DEFAULT_FAULTS, **faults},
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(data, indent=1))
        self.log_path.write_text("")
        return self

    @contextmanager
    def transaction(self) -> Iterator[dict[str, Any]]:
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = json.loads(self.path.read_text())
            try:
                yield data
            finally:
                tmp = self.path.with_name(self.path.name + ".tmp")
                tmp.write_text(json.dumps(data, indent=1))
                os.replace(tmp, self.path)

    # -- for tests ------------------------------------------------------------------------

    def read(self) -> dict[str, Any]:
        return json.loads(self.path.read_text())

    def set_faults(self, **faults: Any) -> None:
        with self.transaction() as data:
            data["faults"].update(faults)

    def vm(self, name: str) -> dict[str, Any] | None:
        return next((vm for vm in self.read()["vms"] if vm["name"] == name), None)

    def set_status(self, name: str, status: str) -> None:
        with self.transaction() as data:
            for vm in data["vms"]:
                if vm["name"] == name:
                    vm["status"] = status

    def rules(self, network: str = "Shared") -> dict[str, dict[str, dict[str, Any]]]:
        net = self.read()["networks"][network]
        return {"tcp": net["tcp"], "udp": net["udp"]}

    def add_rule_by_hand(self, protocol: str, name: str, src_port: int, dest: str, dest_port: int, network: str = "Shared") -> None:
        """A rule someone made outside pymachine (another VM's, or by hand)."""
        with self.transaction() as data:
            data["networks"][network][protocol][name] = {"source port": src_port, "destination IP/VM id": dest, "destination port": dest_port}

    def forward_works(self, name: str, protocol: str, host_port: int, guest_port: int, network: str = "Shared") -> bool:
        """What the real host would show: a running VM that a rule of that port points at."""
        vm = self.vm(name)
        if vm is None or vm["status"] != "running":
            return False
        ids = {vm["uuid"], vm["uuid"].strip("{}")}
        return any(
            rule["source port"] == host_port and rule["destination port"] == guest_port and rule["destination IP/VM id"] in ids
            for rule in self.rules(network)[protocol].values()
        )

    def calls(self) -> list[list[str]]:
        if not self.log_path.exists():
            return []
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line.strip()]

    def log(self, argv: list[str]) -> None:
        with open(self.log_path, "a") as handle:
            handle.write(json.dumps(argv) + "\n")
