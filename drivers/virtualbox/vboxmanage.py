"""The VBoxManage backend: every VirtualBox operation as a VBoxManage command line.

VBoxManage reports failures as `VBoxManage: error: TEXT` lines on stderr, followed by
`Details: code NAME (0x...)` and `Context: ...`. Some paths print them and still exit 0,
so any stderr line containing `error:` is a failure whatever the exit status.

Two platforms (VirtualBox 7.1+ has both; an ARM host runs only ARM VMs, an x86 host
only x86 ones):

- x86 (amd64 guests) is docker-machine's VM: BIOS, PIIX3, a SATA controller, the
  16550A UART at 0x3F8.
- ARM (arm64 guests) is made with `createvm --platform-architecture=arm` and given what
  that platform takes: the armv8virtual chipset, EFI (VirtualBox has no BIOS for ARM), the
  QEMU ramfb display, USB (xHCI) keyboard and mouse, a virtio-net NAT adapter, and a
  virtio-scsi controller for the DVDs and the disk (its configuration knows AHCI,
  virtio-scsi, NVMe and USB storage; IDE is x86 only). None of the x86-only settings:
  modifyvm refuses --hwvirtex, --nestedpaging, --pae ... on an ARM VM. The serial port
  is set as on x86: on ARM, VirtualBox puts its first serial port on a PL011 UART at
  MMIO 0x09000000 (the guest's ttyAMA0) whatever I/O base and IRQ it is given, and the
  I/O base must still lie within 0..0xFFFF.
"""

from __future__ import annotations

import re
from pathlib import Path

from pymachine.errors import CommandFailed
from pymachine.runner import Completed, Runner

from .backend import NatRule, VBoxFailure, VMInfo, VMLayout, with_retries

#: docker-machine's guest OS type ("Linux 2.6 / 3.x / 4.x / 5.x (64-bit)"), an x86 one.
X86_OSTYPE = "Linux26_64"
#: VirtualBox's guest OS type for the arm64 guest (chef/bento's Debian 12 aarch64 boxes
#: use it; VirtualBox 7.1 lists "Debian 12 Bookworm (ARM 64-bit)" under this id).
ARM_OSTYPE = "Debian12_arm64"
#: The controller the ARM VM's DVDs and disk hang off.
ARM_CONTROLLER = "VirtIO"

_CODE = re.compile(r"[Cc]ode (\w+) \((0x[0-9a-fA-F]+)\)")
_ERROR_PREFIX = re.compile(r"^.*?error:\s*")
#: `showmediuminfo`'s "Capacity:       20480 MBytes"
_CAPACITY = re.compile(r"^Capacity:\s+(\d+) MBytes", re.M)
_FORWARDING = re.compile(r"^Forwarding\(\d+\)$")
_KEY_VALUE = re.compile(r'^(?:"((?:[^"\\]|\\.)*)"|([^=]+))=(.*)$')


class VBoxManageBackend:
    """VirtualBox through `VBoxManage`, run by the injected Runner."""

    name = "vboxmanage"

    def __init__(self, runner: Runner, program: str = "VBoxManage", retry_pause: float = 0.25) -> None:
        self.runner = runner
        self.program = program
        self.retry_pause = retry_pause

    # -- the one place VBoxManage runs -------------------------------------------------

    def run(self, *args: str, timeout: float = 120) -> Completed:
        """Run `VBoxManage ARGS`, retrying VirtualBox's transient refusals."""
        return with_retries(lambda: self._run_once(list(args), timeout), self.retry_pause)

    def _run_once(self, args: list[str], timeout: float) -> Completed:
        try:
            done = self.runner.run([self.program, *args], check=False, timeout=timeout)
        except CommandFailed as exc:  # the runner's timeout
            raise VBoxFailure(_describe(args), (exc.stderr.strip().splitlines() or ["no answer"])[-1]) from None
        failure = failure_of(args, done)
        if failure is not None:
            raise failure
        return done

    # -- Backend ---------------------------------------------------------------------

    def version(self) -> str:
        return self.run("--version", timeout=10).stdout.strip().splitlines()[-1]

    def info(self, vm: str) -> VMInfo | None:
        try:
            out = self.run("showvminfo", vm, "--machinereadable", timeout=30).stdout
        except VBoxFailure as exc:
            if exc.not_found:
                return None
            raise
        return parse_machinereadable(out)

    def create(self, layout: VMLayout) -> None:
        if layout.arch == "arm64":
            self._create_arm(layout)
        else:
            self._create_x86(layout)
        for name, host_path, writable in layout.shares:
            self.run("sharedfolder", "add", layout.name, "--name", name, "--hostpath", host_path, *([] if writable else ["--readonly"]))

    def _create_arm(self, layout: VMLayout) -> None:
        vm = layout.name
        self.run("createvm", "--name", vm, "--basefolder", str(layout.base_folder), "--platform-architecture=arm", "--register")
        self.run(
            "modifyvm", vm,
            f"--ostype={ARM_OSTYPE}", "--chipset=armv8virtual", "--firmware=efi",
            f"--cpus={layout.cpus}", f"--memory={layout.memory_mb}", "--rtcuseutc=on",
            "--graphicscontroller=qemuramfb", "--usb-xhci=on", "--mouse=usb", "--keyboard=usb",
        )  # fmt: skip
        self.run(
            "modifyvm", vm,
            "--nic1=nat", f"--nictype1={layout.nic_type}", "--cableconnected1=on",
            "--natdnsproxy1=on", "--nat-localhostreachable1=on",
        )  # fmt: skip
        # The guest's console goes to a file, so `pymachine logs` works as with QEMU.
        self.run("modifyvm", vm, "--uart1", "0x3F8", "4", "--uartmode1", "file", str(layout.serial_log))
        self._add_rules(vm, layout.rules)
        self.run("storagectl", vm, "--name", ARM_CONTROLLER, "--add", "virtio-scsi", "--hostiocache", "on" if layout.host_io_cache else "off")
        self._attach_media(vm, ARM_CONTROLLER, layout)

    def _create_x86(self, layout: VMLayout) -> None:
        vm = layout.name
        # The OS type pins the platform: VirtualBox 7.1+ otherwise gives a new VM the host's,
        # and an amd64 machine on an ARM host would fail at the first x86 setting instead of
        # being refused, in VirtualBox's own words, at startvm.
        self.run("createvm", "--basefolder", str(layout.base_folder), "--name", vm, "--ostype", X86_OSTYPE, "--register")
        self.run(
            "modifyvm", vm,
            "--firmware", "bios", "--ostype", X86_OSTYPE,
            "--cpus", str(layout.cpus), "--memory", str(layout.memory_mb),
            "--acpi", "on", "--ioapic", "on", "--rtcuseutc", "on", "--natdnsproxy1", "on",
            "--hwvirtex", "on", "--nestedpaging", "on",
            "--boot1", "dvd", "--biosbootmenu", "disabled",
        )  # fmt: skip
        self.run("modifyvm", vm, "--nic1", "nat", "--nictype1", layout.nic_type, "--cableconnected1", "on")
        # The guest's console goes to a file, so `pymachine logs` works as with QEMU.
        self.run("modifyvm", vm, "--uart1", "0x3F8", "4", "--uartmode1", "file", str(layout.serial_log))
        self._add_rules(vm, layout.rules)
        self.run("storagectl", vm, "--name", "SATA", "--add", "sata", "--hostiocache", "on" if layout.host_io_cache else "off")
        self._attach_media(vm, "SATA", layout)

    def _add_rules(self, vm: str, rules: list[NatRule]) -> None:
        args: list[str] = []
        for rule in rules:
            args += ["--natpf1", rule.spec()]
        if args:
            self.run("modifyvm", vm, *args)

    def _attach_media(self, vm: str, controller: str, layout: VMLayout) -> None:
        """The boot ISO on port 0 (a DVD), the data disk on port 1, the config medium on port 2 (a DVD)."""
        self.run("storageattach", vm, "--storagectl", controller, "--port", "0", "--device", "0", "--type", "dvddrive", "--medium", str(layout.boot_iso))
        self.run("createmedium", "disk", f"--filename={layout.disk}", f"--size={layout.disk_mb}", "--format=VDI")
        self.run("storageattach", vm, "--storagectl", controller, "--port", "1", "--device", "0", "--type", "hdd", "--medium", str(layout.disk))
        self.run("storageattach", vm, "--storagectl", controller, "--port", "2", "--device", "0", "--type", "dvddrive", "--medium", str(layout.config_medium))

    def start(self, vm: str) -> None:
        self.run("startvm", vm, "--type", "headless")

    def press_power_button(self, vm: str) -> None:
        self.run("controlvm", vm, "acpipowerbutton", timeout=30)

    def power_off(self, vm: str) -> None:
        self.run("controlvm", vm, "poweroff", timeout=60)

    def discard_state(self, vm: str) -> None:
        self.run("discardstate", vm)

    def delete(self, vm: str) -> None:
        self.run("unregistervm", vm, "--delete")

    def close_disk(self, path: Path) -> None:
        self.run("closemedium", "disk", str(path), "--delete")

    def disk_size_mb(self, path: Path) -> int:
        out = self.run("showmediuminfo", "disk", str(path), timeout=30).stdout
        found = _CAPACITY.search(out)
        if found is None:
            raise VBoxFailure(f"read the size of {path}", "showmediuminfo printed no Capacity line")
        return int(found.group(1))

    def resize_disk(self, path: Path, size_mb: int) -> None:
        self.run("modifymedium", "disk", str(path), "--resize", str(size_mb), timeout=600)

    def add_rule(self, vm: str, rule: NatRule, running: bool) -> None:
        if running:
            self.run("controlvm", vm, "natpf1", rule.spec(), timeout=30)
        else:
            self.run("modifyvm", vm, "--natpf1", rule.spec(), timeout=30)

    def remove_rule(self, vm: str, name: str, running: bool) -> None:
        if running:
            self.run("controlvm", vm, "natpf1", "delete", name, timeout=30)
        else:
            self.run("modifyvm", vm, "--natpf1", "delete", name, timeout=30)


def failure_of(args: list[str], done: Completed) -> VBoxFailure | None:
    """The VBoxFailure a finished VBoxManage reported, or None when it succeeded."""
    lines = [line for line in done.stderr.splitlines() if "error:" in line]
    if done.returncode == 0 and not lines:
        return None
    code = code_name = None
    texts = []
    for line in lines:
        found = _CODE.search(line)
        if found and ("Details:" in line or "(extended info not available)" in line):
            code_name, code = found.group(1), int(found.group(2), 16)
        if "Details:" in line or "Context:" in line:
            continue
        texts.append(_ERROR_PREFIX.sub("", line).strip())
    # A failure may take several lines ("Could not create ..." then the reason): keep all.
    text = " ".join(t for t in texts if t)
    if not text:
        rest = (done.stderr.strip() or done.stdout.strip()).splitlines()
        text = rest[-1] if rest else f"exit status {done.returncode}"
    return VBoxFailure(_describe(args), text, code, code_name or "")


def parse_machinereadable(text: str) -> VMInfo:
    """State, settings file and NAT rules from `showvminfo --machinereadable`."""
    values: dict[str, str] = {}
    rules: list[NatRule] = []
    for line in text.splitlines():
        found = _KEY_VALUE.match(line.strip())
        if not found:
            continue
        key = _unquote(found.group(1)) if found.group(1) is not None else found.group(2)
        value = found.group(3)
        if value.startswith('"') and value.endswith('"') and len(value) >= 2:
            value = _unquote(value[1:-1])
        if _FORWARDING.match(key):
            rule = NatRule.parse(value)
            if rule is not None:
                rules.append(rule)
        else:
            values[key] = value
    return VMInfo(values.get("VMState", "unknown"), rules, values.get("CfgFile", ""))


def _unquote(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def _describe(args: list[str]) -> str:
    shown = args[:1] + [a for a in args[1:] if not a.startswith("-")][:2]
    return "run `VBoxManage " + " ".join(shown) + "`"
