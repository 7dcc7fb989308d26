"""A fake Parallels Desktop host: its VMs and its Shared network's NAT rules.

The state is a JSON file named by $PYMACHINE_FAKE_PARALLELS, changed under a lock file
by the fake prlctl and prlsrvctl (parallels.py) and read by tests.

Facts it follows (docker-machine-parallels, vagrant-parallels, REFERENCE.md):
`prlctl --version` prints `prlctl version X.Y.Z (BUILD)`; `prlsrvctl info --license`
prints `edition="pro"` among key=value lines; a missing VM is
`Failed to get VM config: The virtual machine could not be found. ...` (exit 255);
`prlctl list -a -j` is `[{"uuid","status","ip_configured","name"}]` with the uuid in
braces; statuses are running, paused, suspended, stopping, stopped; NAT rules are
global to the network, `--nat-tcp-add NAME,SRC_PORT,VM_ID,DEST_PORT` (a rule has no host
address: it listens on every interface of the Mac), a duplicate name
is `The rule with 'NAME' name already exists!`, and `prlsrvctl net info Shared --json`
lists them under "NAT server" / "TCP rules" / "UDP rules" by name with "source port",
"destination IP/VM id" and "destination port".

A rule's listener is opened when the rule is added. When its port is taken then (a
program on this Mac holds it on any address, found by really trying to bind it), the
fake, like Parallels' NAT as far as its tools show, accepts the rule and says nothing:
the rule just never carries traffic.

The statuses are prlctl's own words, from vmstate2str() in prlctl's sources
(OpenVZ/prlctl src/Utils.cpp), not the driver's tables. The host has an architecture
("x86" for an Intel Mac, "arm" for Apple Silicon); a VM gets the host's at create
(prlctl list -i shows it as Hardware/cpu/type, "arm" on Apple Silicon, and an ARM VM's
"BIOS type" is "efi-arm64"). A VM made on the other kind of Mac does not start, and a VM
that starts boots only what its firmware can start from its CDs (see bootmedia.py).
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
#: Every word `prlctl list --output status` can print, by the SDK state it names
#: (vmstate2str in OpenVZ/prlctl src/Utils.cpp; "unknown" is its fallback).
VM_STATE_WORDS = {
    "VMS_STOPPED": "stopped",
    "VMS_STARTING": "starting",
    "VMS_RESTORING": "restoring",
    "VMS_RUNNING": "running",
    "VMS_PAUSED": "paused",
    "VMS_RESETTING": "resetting",
    "VMS_PAUSING": "pausing",
    "VMS_SUSPENDING": "suspending",
    "VMS_STOPPING": "stopping",
    "VMS_COMPACTING": "compacting",
    "VMS_SUSPENDED": "suspended",
    "VMS_SNAPSHOTING": "snapshoting",
    "VMS_CONTINUING": "continuing",
    "VMS_MIGRATING": "migrating",
    "VMS_DELETING_STATE": "del_snapshot",
    "VMS_RESUMING": "resuming",
    "VMS_SUSPENDING_SYNC": "syncing",
    "VMS_UNKNOWN": "invalid",
    "VMS_RECONNECTING": "reconnecting",
    "VMS_MOUNTED": "mounted",
    None: "unknown",
}
#: The fake's own model of prlctl: the states in which a VM process is up, so `prlctl
#: start` says it already runs and `prlctl stop` acts. Taken from what the SDK states mean
#: (libvirt's vz driver gives these a domain id; suspended, del_snapshot, syncing, mounted,
#: compacting and stopped have none).
PROCESS_STATES = {
    "starting", "restoring", "running", "paused", "resetting", "pausing", "suspending", "stopping",
    "snapshoting", "continuing", "migrating", "resuming", "reconnecting",
}  # fmt: skip
#: The architectures a Parallels host can be: an Intel Mac, or Apple Silicon.
HOST_ARCHES = ("x86", "arm")

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

    def initialise(self, version: str = "18.1.1 (53328)", edition: str = "pro", host_arch: str = "x86", **faults: Any) -> FakeParallels:
        """A fresh host: an Intel Mac (`host_arch` "x86") or Apple Silicon ("arm")."""
        if host_arch not in HOST_ARCHES:
            raise ValueError(f"host_arch is x86 or arm, not {host_arch!r}")
        data = {
            "version": version,
            "edition": edition,
            "host_arch": host_arch,
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
            listen(data["networks"][network], protocol, name)

    def forward_works(self, name: str, protocol: str, host_port: int, guest_port: int, network: str = "Shared", host_ip: str = "127.0.0.1") -> bool:
        """What the real host would show for a connection to host_ip:host_port: a running VM
        whose guest booted, that a rule of that port points at, if the rule got its port
        when it was added. Any host_ip: a rule listens on every interface. A VM that booted
        nothing answers on no port."""
        vm = self.vm(name)
        if vm is None or vm["status"] != "running" or not vm.get("booted"):
            return False
        ids = {vm["uuid"], vm["uuid"].strip("{}")}
        listening = self.read()["networks"][network].get("listening", {})
        return any(
            rule["source port"] == host_port
            and rule["destination port"] == guest_port
            and rule["destination IP/VM id"] in ids
            and listening.get(f"{protocol}/{rule_name}", False)
            for rule_name, rule in self.rules(network)[protocol].items()
        )

    def console(self, name: str) -> str:
        """What the VM's serial port (its output file) has received."""
        vm = self.vm(name) or {"devices": {}}
        text = ""
        for device in vm["devices"].values():
            if device["kind"] == "serial" and device.get("output"):
                try:
                    text += Path(device["output"]).read_text()
                except OSError:
                    pass
        return text

    def set_cpu_type(self, name: str, cpu_type: str) -> None:
        """As if the VM's bundle had been made on the other kind of Mac and registered here."""
        with self.transaction() as data:
            for vm in data["vms"]:
                if vm["name"] == name:
                    vm["cpu_type"] = cpu_type

    def calls(self) -> list[list[str]]:
        if not self.log_path.exists():
            return []
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line.strip()]

    def log(self, argv: list[str]) -> None:
        with open(self.log_path, "a") as handle:
            handle.write(json.dumps(argv) + "\n")


def listen(net: dict[str, Any], protocol: str, name: str) -> None:
    """Parallels' NAT opens the new rule's listener on every interface, or silently fails to."""
    import socket

    port = int(net[protocol][name]["source port"])
    kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
    taken = any(other != name and net.get("listening", {}).get(f"{protocol}/{other}") and int(rule["source port"]) == port for other, rule in net[protocol].items())
    if not taken:
        with socket.socket(socket.AF_INET, kind) as sock:
            if protocol == "tcp":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("0.0.0.0", port))
            except OSError:
                taken = True
    net.setdefault("listening", {})[f"{protocol}/{name}"] = not taken
