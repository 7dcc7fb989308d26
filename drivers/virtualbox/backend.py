"""What both VirtualBox backends share: NAT rules, VM facts, the failure type, retries.

VBoxManage and the API (pyvbox) are two ways into the same VBoxSVC. Each backend turns
its answers into the same shapes: a VM's state as VBoxManage's short VMState name
("poweroff", "running" ...), its NAT rules as NatRule, and any refusal as VBoxFailure
carrying VirtualBox's own text and result code. The driver decides what they mean.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

from pymachine.errors import DriverError

T = TypeVar("T")

#: "The object is not ready" (E_ACCESSDENIED) comes and goes while VBoxSVC is busy.
NOT_READY_ATTEMPTS = 6
#: "is already locked for a session": createvm/modifyvm release their write session
#: asynchronously, so the next command can briefly find it still held.
LOCKED_ATTEMPTS = 4

E_ACCESSDENIED = 0x80070005
VBOX_E_OBJECT_NOT_FOUND = 0x80BB0001
VBOX_E_INVALID_OBJECT_STATE = 0x80BB0007
#: "Cannot run the machine because its platform architecture x86 is not supported on ARM"
VBOX_E_PLATFORM_ARCH_NOT_SUPPORTED = 0x80BB0012


@dataclass(frozen=True)
class NatRule:
    """One port-forwarding rule of the VM's first (NAT) adapter."""

    name: str
    protocol: str  # "tcp" or "udp"
    host_ip: str  # "" binds every host interface
    host_port: int
    guest_port: int
    guest_ip: str = ""

    def spec(self) -> str:
        """The rule as VBoxManage's --natpf1 and controlvm natpf1 take it."""
        return f"{self.name},{self.protocol},{self.host_ip},{self.host_port},{self.guest_ip},{self.guest_port}"

    @classmethod
    def parse(cls, text: str) -> NatRule | None:
        """A rule from `name,proto,host ip,host port,guest ip,guest port`; None if malformed.

        The protocol may be a word (showvminfo's Forwarding lines) or NATProtocol's
        number (the API's INATEngine.redirects: 0 is UDP, 1 is TCP).
        """
        parts = text.split(",")
        if len(parts) != 6:
            return None
        name, proto, host_ip, host_port, guest_ip, guest_port = (p.strip() for p in parts)
        protocol = {"0": "udp", "1": "tcp"}.get(proto, proto.lower())
        if protocol not in ("tcp", "udp") or not host_port.isdigit() or not guest_port.isdigit():
            return None
        return cls(name, protocol, host_ip, int(host_port), int(guest_port), guest_ip)


@dataclass(frozen=True)
class VMInfo:
    """What one look at a registered VM tells."""

    state: str  # VBoxManage's short VMState name, e.g. "poweroff"
    rules: list[NatRule] = field(default_factory=list)
    settings_file: str = ""


@dataclass(frozen=True)
class VMLayout:
    """Everything `create` makes, decided by the driver."""

    name: str
    base_folder: Path
    cpus: int
    memory_mb: int
    boot_iso: Path
    config_medium: Path
    disk: Path
    disk_mb: int
    serial_log: Path
    nic_type: str
    host_io_cache: bool
    rules: list[NatRule]
    #: host folders as (share name, host path, writable); the guest mounts them with vboxsf
    shares: list[tuple[str, str, bool]] = field(default_factory=list)
    #: the guest's architecture: "amd64" (VirtualBox's x86 platform) or "arm64" (its ARM platform)
    arch: str = "amd64"


class VBoxFailure(DriverError):
    """VirtualBox refused an operation; carries its own text and result code."""

    def __init__(self, operation: str, text: str, code: int | None = None, code_name: str = "") -> None:
        super().__init__(f"VirtualBox could not {operation}: {text}", "Run `pymachine doctor` to check VirtualBox")
        self.operation = operation
        self.text = text
        self.code = code
        self.code_name = code_name

    @property
    def not_ready(self) -> bool:
        return "The object is not ready" in self.text

    @property
    def locked(self) -> bool:
        return "is already locked for a session" in self.text or "is already locked by a session" in self.text

    @property
    def not_found(self) -> bool:
        return self.code == VBOX_E_OBJECT_NOT_FOUND or "Could not find a registered machine" in self.text

    @property
    def wrong_platform(self) -> bool:
        """This host's VirtualBox runs no VM of that platform (x86 on ARM, ARM on x86)."""
        return self.code == VBOX_E_PLATFORM_ARCH_NOT_SUPPORTED or "platform architecture" in self.text


def with_retries(action: Callable[[], T], pause: float) -> T:
    """Run `action`, again while VirtualBox answers with one of its transient refusals."""
    not_ready = locked = 0
    while True:
        try:
            return action()
        except VBoxFailure as exc:
            if exc.not_ready and not_ready < NOT_READY_ATTEMPTS - 1:
                not_ready += 1
            elif exc.locked and locked < LOCKED_ATTEMPTS - 1:
                locked += 1
            else:
                raise
        time.sleep(pause * (not_ready + locked))


class Backend(Protocol):
    """One way of talking to VirtualBox; see VBoxManageBackend and ApiBackend."""

    name: str

    def version(self) -> str:
        """VirtualBox's version, e.g. "7.0.14r161095" or "6.1.50"."""

    def info(self, vm: str) -> VMInfo | None:
        """The VM's state and NAT rules, or None when no VM of that name is registered."""

    def create(self, layout: VMLayout) -> None:
        """Register the VM, make its data disk and attach its media; leave it powered off."""

    def start(self, vm: str) -> None:
        """Power the VM on without a window."""

    def press_power_button(self, vm: str) -> None:
        """Send the ACPI power button event (the guest decides to shut down)."""

    def power_off(self, vm: str) -> None:
        """Pull the plug."""

    def discard_state(self, vm: str) -> None:
        """Forget a saved state, leaving the VM powered off."""

    def delete(self, vm: str) -> None:
        """Unregister the VM and delete its settings, logs and hard disks."""

    def close_disk(self, path: Path) -> None:
        """Forget a hard disk image VirtualBox still knows without a VM, and delete it."""

    def disk_size_mb(self, path: Path) -> int:
        """A hard disk image's capacity in MB."""

    def resize_disk(self, path: Path, size_mb: int) -> None:
        """Give a hard disk image a new capacity; VirtualBox refuses while a VM holds it."""

    def add_rule(self, vm: str, rule: NatRule, running: bool) -> None:
        """Add a NAT rule, live when `running`, else in the VM's settings."""

    def remove_rule(self, vm: str, name: str, running: bool) -> None:
        """Remove a NAT rule by name."""
