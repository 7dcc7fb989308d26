"""The VBoxManage backend: every VirtualBox operation as a VBoxManage command line.

VBoxManage reports failures as `VBoxManage: error: TEXT` lines on stderr, followed by
`Details: code NAME (0x...)` and `Context: ...`. Some paths print them and still exit 0,
so any stderr line containing `error:` is a failure whatever the exit status.
"""

from __future__ import annotations

import re
from pathlib import Path

from pymachine.errors import CommandFailed
from pymachine.runner import Completed, Runner

from .backend import NatRule, VBoxFailure, VMInfo, VMLayout, with_retries

_CODE = re.compile(r"[Cc]ode (\w+) \((0x[0-9a-fA-F]+)\)")
_ERROR_PREFIX = re.compile(r"^.*?error:\s*")
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
        vm = layout.name
        self.run("createvm", "--basefolder", str(layout.base_folder), "--name", vm, "--register")
        self.run(
            "modifyvm", vm,
            "--firmware", "bios", "--ostype", "Linux26_64",
            "--cpus", str(layout.cpus), "--memory", str(layout.memory_mb),
            "--acpi", "on", "--ioapic", "on", "--rtcuseutc", "on", "--natdnsproxy1", "on",
            "--hwvirtex", "on", "--nestedpaging", "on",
            "--boot1", "dvd", "--biosbootmenu", "disabled",
        )  # fmt: skip
        self.run("modifyvm", vm, "--nic1", "nat", "--nictype1", layout.nic_type, "--cableconnected1", "on")
        # The guest's console goes to a file, so `pymachine logs` works as with QEMU.
        self.run("modifyvm", vm, "--uart1", "0x3F8", "4", "--uartmode1", "file", str(layout.serial_log))
        rules: list[str] = []
        for rule in layout.rules:
            rules += ["--natpf1", rule.spec()]
        if rules:
            self.run("modifyvm", vm, *rules)
        self.run("storagectl", vm, "--name", "SATA", "--add", "sata", "--hostiocache", "on" if layout.host_io_cache else "off")
        self.run("storageattach", vm, "--storagectl", "SATA", "--port", "0", "--device", "0", "--type", "dvddrive", "--medium", str(layout.boot_iso))
        self.run("createmedium", "disk", f"--filename={layout.disk}", f"--size={layout.disk_mb}", "--format=VDI")
        self.run("storageattach", vm, "--storagectl", "SATA", "--port", "1", "--device", "0", "--type", "hdd", "--medium", str(layout.disk))
        self.run("storageattach", vm, "--storagectl", "SATA", "--port", "2", "--device", "0", "--type", "dvddrive", "--medium", str(layout.config_medium))
        for name, host_path, writable in layout.shares:
            self.run("sharedfolder", "add", vm, "--name", name, "--hostpath", host_path, *([] if writable else ["--readonly"]))

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
