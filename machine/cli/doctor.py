"""`pymachine doctor`: what this host offers each driver, and what stands in the way."""

from __future__ import annotations

import json
from typing import Any

from pymachine.driver import driver_names, load_driver
from pymachine.errors import MachineError
from pymachine.forwarding.process import STATE_FILE
from pymachine.guard import HypervisorGuard
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
    running = [vm.describe() for vm in HypervisorGuard(runner).running_vms()]
    blocked = []
    for name in machines.store.names():
        try:
            data = json.loads((machines.store.machine_dir(name) / STATE_FILE).read_text())
        except (OSError, ValueError):
            continue
        for item in data.get("forwards", []):
            if item.get("state") == "failed":
                blocked.append(f"{name}: {item.get('host_ip')}:{item.get('host_port')}/{item.get('protocol')} for {item.get('container')}: {item.get('reason')}")
    return {"drivers": drivers, "running_vms": running, "blocked_ports": blocked}
