"""The hypervisor guard: no VM is started while another hypervisor runs VMs.

VirtualBox beside another hypervisor has hung and panicked Macs; on Linux VirtualBox
and KVM refuse each other (VERR_VMX_IN_VMX_ROOT_MODE, KVM_CREATE_VM busy). Before
starting a VM, pymachine lists running VM processes; if one belongs to another
hypervisor it refuses, naming each VM and how to stop it, unless --force is given.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from pymachine.driver import Driver, DriverOptions
from pymachine.errors import HypervisorConflict
from pymachine.progress import Progress
from pymachine.runner import Runner

#: Families of hypervisors: the pymachine driver that uses each, if any.
VIRTUALBOX = "VirtualBox"
PARALLELS = "Parallels"
QEMU = "QEMU"
APPLE = "Apple Virtualization"
HYPERKIT = "HyperKit"
VMWARE = "VMware"

DRIVER_FAMILY = {"virtualbox": VIRTUALBOX, "parallels": PARALLELS, "qemu": QEMU}

# Process names that are running VMs (not the managers' GUIs or services).
_PROCESS_FAMILY = {
    "VBoxHeadless": VIRTUALBOX,
    "VirtualBoxVM": VIRTUALBOX,
    "VBoxSDL": VIRTUALBOX,
    "prl_vm_app": PARALLELS,
    "com.apple.Virtualization.VirtualMachine": APPLE,
    "hyperkit": HYPERKIT,
    "xhyve": HYPERKIT,
    "vmware-vmx": VMWARE,
}
_QEMU = re.compile(r"^qemu-system-[\w-]+$")


@dataclass(frozen=True)
class VMProcess:
    """A running VM found among the host's processes."""

    pid: int
    family: str
    vm: str  # the VM's name when the command line tells it, else ""
    accelerated: bool  # uses hardware virtualization (a TCG-only QEMU does not)

    def how_to_stop(self) -> str:
        if self.family == VIRTUALBOX and self.vm:
            return f"VBoxManage controlvm '{self.vm}' acpipowerbutton"
        if self.family == PARALLELS and self.vm:
            return f"prlctl stop '{self.vm}'"
        if self.family == QEMU and self.vm.startswith("pymachine-"):
            return f"pymachine stop {self.vm[len('pymachine-'):]}"
        if self.family in (APPLE, HYPERKIT):
            return "quit the app that runs it (Docker Desktop, Colima, Lima, UTM ...)"
        return f"kill {self.pid}"

    def describe(self) -> str:
        name = f" '{self.vm}'" if self.vm else ""
        return f"{self.family} VM{name} (pid {self.pid}; stop it with `{self.how_to_stop()}`)"


def _argument(argv: list[str], *flags: str) -> str:
    for i, arg in enumerate(argv):
        for flag in flags:
            if arg == flag and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(flag + "="):
                return arg.split("=", 1)[1]
    return ""


def classify(pid: int, name: str, argv: list[str]) -> VMProcess | None:
    """The VM a process is, from its name and arguments, or None."""
    base = os.path.basename(name)
    if _QEMU.match(base):
        vm = _argument(argv, "-name").split(",")[0]
        joined = " ".join(argv)
        hardware = any(a in joined for a in ("kvm", "hvf", "whpx", "-enable-kvm"))
        return VMProcess(pid, QEMU, vm, hardware)
    family = _PROCESS_FAMILY.get(base)
    if family is None:
        return None
    vm = ""
    if family == VIRTUALBOX:
        vm = _argument(argv, "--comment", "--startvm")
    elif family == PARALLELS:
        # macOS's ps joins argv with spaces, and VM bundles live in folders with spaces.
        bundle = re.search(r"--openvm[= ](.+?\.pvm)\b", " ".join(argv))
        vm = Path(bundle.group(1)).stem if bundle else ""
    return VMProcess(pid, family, vm, True)


class HypervisorGuard:
    """Finds VMs of other hypervisors and refuses to start next to them."""

    def __init__(self, runner: Runner, proc_root: Path = Path("/proc")) -> None:
        self.runner = runner
        self.proc_root = proc_root

    def running_vms(self) -> list[VMProcess]:
        found = []
        for pid, name, argv in self._processes():
            vm = classify(pid, name, argv)
            if vm is not None and pid != os.getpid():
                found.append(vm)
        return sorted(found, key=lambda v: (v.family, v.pid))

    def conflicts(self, driver: str, accelerated: bool = True) -> list[VMProcess]:
        """VMs that starting a VM with `driver` would run beside on another hypervisor.

        Two VMs of one hypervisor are fine; so is anything beside a VM that uses no
        hardware virtualization (QEMU's TCG), in either direction.
        """
        if not accelerated:
            return []
        mine = DRIVER_FAMILY.get(driver)
        return [vm for vm in self.running_vms() if vm.family != mine and vm.accelerated]

    def check(self, driver: str, force: bool = False, accelerated: bool = True, progress: Progress | None = None) -> None:
        found = self.conflicts(driver, accelerated)
        if not found:
            return
        listing = "; ".join(vm.describe() for vm in found)
        if force:
            if progress is not None:
                progress.note(f"Starting beside another hypervisor because of --force: {listing}")
            return
        raise HypervisorConflict(
            f"Another hypervisor is running VMs, and running two at once can hang this host: {listing}",
            "Stop them first, or pass --force to start anyway",
        )

    def _processes(self) -> list[tuple[int, str, list[str]]]:
        if self.proc_root.is_dir() and sys.platform.startswith("linux"):
            return list(self._linux_processes())
        out = self.runner.run(["ps", "-axo", "pid=,comm="], check=False, timeout=10)
        rows = []
        for line in out.stdout.splitlines():
            parts = line.strip().split(None, 1)
            if len(parts) != 2 or not parts[0].isdigit():
                continue
            pid, comm = int(parts[0]), parts[1]
            base = os.path.basename(comm)
            if base in _PROCESS_FAMILY or _QEMU.match(base):
                args = self.runner.run(["ps", "-o", "args=", "-p", str(pid)], check=False, timeout=5).stdout.split()
                rows.append((pid, base, args))
        return rows

    def _linux_processes(self):
        for entry in self.proc_root.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                comm = (entry / "comm").read_text().strip()
                raw = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            argv = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
            # comm is cut at 15 characters; the executable's own name is in argv.
            names = [comm] + [os.path.basename(a) for a in argv[:2]]
            name = next((n for n in names if n in _PROCESS_FAMILY or _QEMU.match(n)), comm)
            yield int(entry.name), name, argv


def check_before_start(runner: Runner, driver: type[Driver], options: DriverOptions, force: bool, progress: Progress | None = None, arch: str = "") -> None:
    """Refuse to start a VM of `driver` beside another hypervisor's VMs (unless `force`)."""
    accelerated = driver.hardware_accelerated(runner, options, arch)
    HypervisorGuard(runner).check(driver.name, force=force, accelerated=accelerated, progress=progress)
