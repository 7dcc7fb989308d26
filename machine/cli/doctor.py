"""`pymachine doctor`: what this host offers each driver, and what stands in the way."""

from __future__ import annotations

import json
from typing import Any

from pymachine.driver import driver_names, load_driver
from pymachine.errors import MachineError
from pymachine.forwarding.process import STATE_FILE
from pymachine.guard import PARALLELS, QEMU, VIRTUALBOX, HypervisorGuard, VMProcess
from pymachine.machines import Machines


def run_doctor(machines: Machines) -> dict[str, Any]:
    runner = machines.home.runner
    drivers = []
    for name in driver_names():
        try:
            report = load_driver(name).host_report(runner)
        except MachineError as exc:
            drivers.append({"name": name, "installed": False, "version": "", "accelerator": "unknown", "detail": str(exc), "notes": []})
            continue
        drivers.append(
            {"name": name, "installed": report.installed, "version": report.version, "accelerator": report.accelerator or "n/a", "detail": report.detail, "notes": list(report.notes)}
        )
    own, others = [], []
    for vm in HypervisorGuard(runner).running_vms():
        machine = _own_machine(machines, vm)
        if machine:
            own.append(f"{machine} ({vm.family}, pid {vm.pid})")
        else:
            others.append(vm.describe())
    blocked = []
    for name in machines.store.names():
        try:
            data = json.loads((machines.store.machine_dir(name) / STATE_FILE).read_text())
        except (OSError, ValueError):
            continue
        for item in data.get("forwards", []):
            if item.get("state") == "failed":
                blocked.append(f"{name}: {item.get('host_ip')}:{item.get('host_port')}/{item.get('protocol')} for {item.get('container')}: {item.get('reason')}")
    return {"drivers": drivers, "running_vms": others, "own_vms": own, "blocked_ports": blocked}


#: The hypervisor family (guard.py's words) each driver's VMs run under.
_FAMILY_OF_DRIVER = {"qemu": QEMU, "virtualbox": VIRTUALBOX, "parallels": PARALLELS}


def _own_machine(machines: Machines, vm: VMProcess) -> str | None:
    """The name of the machine in this store that `vm` is, if it is one of ours: QEMU runs
    ours as `-name pymachine-NAME`; VirtualBox and Parallels VMs carry the machine's name."""
    name = vm.vm[len("pymachine-") :] if vm.family == QEMU and vm.vm.startswith("pymachine-") else vm.vm
    if not name or name not in machines.store.names():
        return None
    try:
        driver = machines.store.load(name).driver
    except MachineError:
        return None
    return name if _FAMILY_OF_DRIVER.get(driver) == vm.family else None
