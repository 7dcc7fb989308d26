"""A fake VirtualBox host: what VBoxSVC keeps, shared by the fake VBoxManage program and
the fake pyvbox COM objects, as the real VBoxManage and the real API share VBoxSVC.

The state is a JSON file (its path in $PYMACHINE_FAKE_VBOX) so that separate processes
(the driver's VBoxManage calls, the forward watcher, the test itself) see one host.
Every change happens inside `FakeVirtualBox.transaction()`, under a lock file.

Semantics and texts follow VirtualBox's sources and reports quoted in REFERENCE.md:
NATEngine::addRedirect (name with ',' refused, duplicate name, duplicate host IP+port),
removeRedirect of an unknown rule (E_INVALIDARG without text), LockMachine on a VM
that runs ("is already locked for a session (or being unlocked)"), LaunchVMProcess on
a VM that runs ("is already locked by a session (or being locked or unlocked)"),
FindMachine ("Could not find a registered machine named '...'"), the transient
"The object is not ready" (E_ACCESSDENIED), and the short VMState names.

The host has an architecture ("x86" or "arm", VirtualBox's PlatformArchitecture names)
and each VM a platform. As VirtualBox 7.1 does, an ARM host creates x86 VMs but will
not run them ("Cannot run the machine because its platform architecture x86 is not
supported on ARM", VBOX_E_PLATFORM_ARCH_NOT_SUPPORTED, seen in user reports of
startvm). A VM that starts boots only what its firmware can start from its DVDs (see
bootmedia.py); otherwise its console says so and nothing answers on its forwards.

A NAT rule listens on its host address (127.0.0.1, or every interface for an empty one
or 0.0.0.0) from the moment the VM starts, or from its `controlvm natpf1` while the VM
runs. As the real VirtualBox does, the fake accepts a rule whose host port is taken (by
a program on this host, found by really trying to bind it, or by another running VM's
rule) and does not report it: the rule just never carries traffic (VirtualBox only
writes "NAT: failed to redirect" to the VM's log).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

STATE_ENV = "PYMACHINE_FAKE_VBOX"

E_INVALIDARG = 0x80070057
E_ACCESSDENIED = 0x80070005
VBOX_E_OBJECT_NOT_FOUND = 0x80BB0001
VBOX_E_INVALID_VM_STATE = 0x80BB0002
VBOX_E_FILE_ERROR = 0x80BB0004
VBOX_E_INVALID_OBJECT_STATE = 0x80BB0007
VBOX_E_NOT_SUPPORTED = 0x80BB0009
VBOX_E_OBJECT_IN_USE = 0x80BB000C
VBOX_E_PLATFORM_ARCH_NOT_SUPPORTED = 0x80BB0012
NS_ERROR_FAILURE = 0x80004005

#: How VBoxManage on Linux and macOS (XPCOM) names the result codes.
CODE_NAMES = {
    E_INVALIDARG: "NS_ERROR_INVALID_ARG",
    E_ACCESSDENIED: "E_ACCESSDENIED",
    VBOX_E_OBJECT_NOT_FOUND: "VBOX_E_OBJECT_NOT_FOUND",
    VBOX_E_INVALID_VM_STATE: "VBOX_E_INVALID_VM_STATE",
    VBOX_E_FILE_ERROR: "VBOX_E_FILE_ERROR",
    VBOX_E_INVALID_OBJECT_STATE: "VBOX_E_INVALID_OBJECT_STATE",
    VBOX_E_NOT_SUPPORTED: "VBOX_E_NOT_SUPPORTED",
    VBOX_E_OBJECT_IN_USE: "VBOX_E_OBJECT_IN_USE",
    VBOX_E_PLATFORM_ARCH_NOT_SUPPORTED: "VBOX_E_PLATFORM_ARCH_NOT_SUPPORTED",
    NS_ERROR_FAILURE: "NS_ERROR_FAILURE",
}
#: What VBoxManage adds when a failure carries no text ("extended info not available").
CODE_DESCRIPTIONS = {E_INVALIDARG: "Invalid argument value", E_ACCESSDENIED: "Access denied"}

#: States in which a VM process holds the machine (a console exists).
LIVE_STATES = {
    "running",
    "paused",
    "gurumeditation",
    "teleporting",
    "livesnapshotting",
    "onlinesnapshotting",
    "deletingsnapshotlive",
    "deletingsnapshotlivepaused",
    "teleportingpausedvm",
    "teleportingin",
    "starting",
    "stopping",
    "saving",
    "restoring",
}

#: PlatformArchitecture as VirtualBox prints it in its messages (Global::stringify...).
PLATFORM_NAMES = {"x86": "x86", "arm": "ARM"}
#: The controllers the ARM platform's VM configuration knows (ConsoleImplConfigArmV8.cpp:
#: USB, IntelAhci, VirtioSCSI, NVMe); IDE, the SCSI HBAs, SAS and floppy are x86 only.
ARM_CONTROLLER_TYPES = {"IntelAhci", "VirtioSCSI", "NVMe", "USB"}
#: The NICs it knows (ibid.: the e1000 family and virtio-net); PCnet and the others are x86 only.
ARM_NIC_TYPES = {"82540EM", "82543GC", "82545EM", "virtio"}
#: NetworkAdapterType numbers (VirtualBox.xidl), for the ARM configuration's error text.
NIC_TYPE_NUMBERS = {"Am79C970A": 1, "Am79C973": 2, "82540EM": 3, "82543GC": 4, "82545EM": 5, "virtio": 6, "Am79C960": 7}
#: What the firmware shows on the console when nothing on the DVDs boots. The BIOS line
#: is VirtualBox's BIOS; the EFI line is EDK2's boot manager. UNVERIFIED: the exact words
#: that reach the serial port on a real VirtualBox.
NO_BOOT_BIOS = "FATAL: No bootable medium found! System halted."
NO_BOOT_EFI = "BdsDxe: No bootable option or device was found."
#: UNVERIFIED: an ARM VM left with BIOS firmware (createvm's default) has nothing to run;
#: VirtualBox has no BIOS for ARM, and the text is this fake's.
NO_FIRMWARE_ARM = "No BIOS firmware exists for the ARM platform: set --firmware=efi."

DEFAULT_FAULTS: dict[str, Any] = {
    "not_ready": 0,  # the next N machine operations fail with "The object is not ready"
    "locked": 0,  # the next N write locks fail with "is already locked for a session"
    "exit_zero": 0,  # the next N failing commands print their error but exit 0
    "acpi": "shutdown",  # what the guest does with the power button: "shutdown" or "ignore"
    "acpi_delay": 0.0,  # seconds the guest takes to power off after the button
    "version_warning": "",  # a line VBoxManage --version prints before the version
    "version_hang": 0.0,  # seconds VBoxManage --version takes to answer
}


class VBoxFault(Exception):
    """VirtualBox refusing an operation, as its COM layer reports it."""

    def __init__(self, code: int, text: str, component: str = "", interface: str = "", extended: bool = True) -> None:
        super().__init__(text)
        self.code = code
        self.text = text
        self.component = component
        self.interface = interface
        self.extended = extended


def not_found(name: str) -> VBoxFault:
    return VBoxFault(VBOX_E_OBJECT_NOT_FOUND, f"Could not find a registered machine named '{name}'", "VirtualBoxWrap", "IVirtualBox")


class Host:
    """One loaded state of the fake host; its methods are VirtualBox's operations."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    @property
    def version(self) -> str:
        return self.data["version"]

    @property
    def arch(self) -> str:
        """The host's architecture: "x86" or "arm"."""
        return self.data.get("host_arch", "x86")

    @property
    def faults(self) -> dict[str, Any]:
        return self.data["faults"]

    def take(self, fault: str) -> bool:
        """Use up one of the injected faults of that kind; True if there was one."""
        if self.faults.get(fault, 0) > 0:
            self.faults[fault] -= 1
            return True
        return False

    # -- machines ------------------------------------------------------------------------

    def machines(self) -> list[dict[str, Any]]:
        return self.data["machines"]

    def find(self, name_or_uuid: str) -> dict[str, Any]:
        if self.take("not_ready"):
            raise VBoxFault(E_ACCESSDENIED, "The object is not ready", "SessionMachine", "IMachine")
        for machine in self.machines():
            if name_or_uuid in (machine["name"], machine["uuid"]):
                self._advance_guest(machine)
                return machine
        raise not_found(name_or_uuid)

    def _advance_guest(self, machine: dict[str, Any]) -> None:
        """A guest that got the power button shuts down after a while (unless it ignores it)."""
        pressed = machine.get("acpi_pressed")
        if pressed is None or self.faults.get("acpi") != "shutdown" or machine["state"] != "running":
            return
        if time.time() >= pressed + float(self.faults.get("acpi_delay", 0.0)):
            self._serial(machine, "reboot: Power down")
            self.set_state(machine, "poweroff")

    def set_state(self, machine: dict[str, Any], state: str) -> None:
        machine["state"] = state
        machine["state_changed"] = time.strftime("%Y-%m-%dT%H:%M:%S.000000000", time.gmtime())
        if state not in LIVE_STATES:
            machine["acpi_pressed"] = None
            machine["booted"] = False
            machine.pop("listening", None)  # the VM process and its sockets are gone

    def new_machine(self, name: str, base_folder: str, ostype: str = "Other", platform: str = "x86") -> dict[str, Any]:
        """createMachine: an unregistered machine with VirtualBox's defaults."""
        if not name:
            raise VBoxFault(E_INVALIDARG, "Machine name is invalid", "VirtualBoxWrap", "IVirtualBox")
        settings = Path(base_folder) / name / f"{name}.vbox"
        if settings.exists():
            raise VBoxFault(VBOX_E_FILE_ERROR, f"Machine settings file '{settings}' already exists", "MachineWrap", "IMachine")
        return {
            "name": name,
            "uuid": str(uuid.uuid4()),
            "settings_file": str(settings),
            "platform": platform,
            "chipset": "armv8virtual" if platform == "arm" else "piix3",
            "graphics": "vboxvga",
            "usb": {"ohci": "off", "ehci": "off", "xhci": "off"},
            "mouse": "ps2mouse",
            "keyboard": "ps2kbd",
            "booted": False,
            "ostype": ostype or "Other",
            "state": "poweroff",
            "state_changed": time.strftime("%Y-%m-%dT%H:%M:%S.000000000", time.gmtime()),
            "cpus": 1,
            "memory": 128,
            "firmware": "BIOS",
            "acpi": "on",
            "ioapic": "on",
            "rtcuseutc": "off",
            "hwvirtex": "on",
            "nestedpaging": "on",
            "biosbootmenu": "messageandmenu",
            "boot": ["floppy", "dvd", "disk", "none"],
            "nics": {"1": {"attachment": "nat", "type": "Am79C973", "cable": "on", "dnsproxy": "off", "localhostreachable": "off", "mac": _mac(), "rules": []}},
            "uarts": {},
            "controllers": {},
            "acpi_pressed": None,
        }

    def register(self, machine: dict[str, Any]) -> None:
        if any(m["uuid"] == machine["uuid"] for m in self.machines()):
            raise VBoxFault(VBOX_E_OBJECT_IN_USE, f"Machine '{machine['name']}' with UUID {{{machine['uuid']}}} already exists", "VirtualBoxWrap", "IVirtualBox")
        settings = Path(machine["settings_file"])
        if settings.exists():
            raise VBoxFault(VBOX_E_FILE_ERROR, f"Machine settings file '{settings}' already exists", "MachineWrap", "IMachine")
        (settings.parent / "Logs").mkdir(parents=True, exist_ok=True)
        self.machines().append(machine)
        self.save_settings(machine)

    def save_settings(self, machine: dict[str, Any]) -> None:
        settings = Path(machine["settings_file"])
        if settings.parent.is_dir():
            settings.write_text(json.dumps({k: v for k, v in machine.items() if k not in ("acpi_pressed", "listening")}, indent=1))

    def write_lock(self, machine: dict[str, Any]) -> None:
        """LockMachine(LockType_Write): refused while a VM process (or anyone) holds it."""
        if self.take("locked") or machine["state"] in LIVE_STATES:
            raise VBoxFault(VBOX_E_INVALID_OBJECT_STATE, f"The machine '{machine['name']}' is already locked for a session (or being unlocked)", "MachineWrap", "IMachine")

    def has_console(self, machine: dict[str, Any]) -> bool:
        return machine["state"] in LIVE_STATES

    def check_platform(self, platform: str, action: str = "run") -> None:
        """LaunchVMProcess refuses a VM of another platform than the host's; and, UNVERIFIED,
        createvm's SaveSettings refuses an ARM VM on an x86 host, whose build lacks the ARM
        platform."""
        if platform == self.arch:
            return
        if action == "create":
            if platform == "x86":
                return  # an ARM host makes x86 VMs (it lists x86 OS types) and refuses them at start
            # An x86 host:
            # PlatformImpl.cpp's i_saveSettings on a build without VBOX_WITH_VIRT_ARMV8.
            # UNVERIFIED that an x86 release build takes this path at createvm.
            raise VBoxFault(VBOX_E_PLATFORM_ARCH_NOT_SUPPORTED, f"Platform '{PLATFORM_NAMES[platform]}' not supported", "PlatformWrap", "IPlatform")
        raise VBoxFault(
            VBOX_E_PLATFORM_ARCH_NOT_SUPPORTED,
            f"Cannot run the machine because its platform architecture {PLATFORM_NAMES[platform]} is not supported on {PLATFORM_NAMES[self.arch]}",
            "MachineWrap",
            "IMachine",
        )

    def _check_arm_devices(self, machine: dict[str, Any]) -> None:
        """What the ARM platform's VM configuration refuses (ConsoleImplConfigArmV8.cpp)."""
        for slot, nic in sorted(machine["nics"].items()):
            if nic["attachment"] != "none" and nic["type"] not in ARM_NIC_TYPES:
                number = NIC_TYPE_NUMBERS.get(nic["type"], 0)
                raise VBoxFault(NS_ERROR_FAILURE, f"Invalid/Unsupported network adapter type '{number}' for slot '{int(slot) - 1}' (VERR_INVALID_PARAMETER)", "ConsoleWrap", "IConsole")
        for name, controller in machine["controllers"].items():
            if controller["type"] not in ARM_CONTROLLER_TYPES:
                # The configuration asserts "invalid storage controller type"; the words
                # that reach VBoxManage are UNVERIFIED.
                text = f"Invalid storage controller type for the ARM platform: {controller['type']} (controller '{name}') (VERR_MAIN_CONFIG_CONSTRUCTOR_IPE)"
                raise VBoxFault(NS_ERROR_FAILURE, text, "ConsoleWrap", "IConsole")

    def firmware_kind(self, machine: dict[str, Any]) -> str | None:
        """What the VM's firmware boots: "bios", "efi-x64", "efi-aa64"; None for none."""
        efi = machine["firmware"].startswith("EFI")
        if machine.get("platform", "x86") == "arm":
            return "efi-aa64" if efi else None
        return "efi-x64" if efi else "bios"

    def boot_medium(self, machine: dict[str, Any]) -> str | None:
        """The first DVD, by controller and port, that the firmware can start."""
        kind = self.firmware_kind(machine)
        if kind is None:
            return None
        # Imported here: most VBoxManage calls never boot anything, and each is a new process.
        try:
            from .bootmedia import boot_medium_kind
        except ImportError:  # run by the fake VBoxManage, with tests/fakes itself on sys.path
            from bootmedia import boot_medium_kind  # type: ignore[no-redef]
        for controller in machine["controllers"].values():
            for _, attachment in sorted(controller["attachments"].items()):
                if attachment["type"] == "dvddrive" and boot_medium_kind(attachment["medium"], kind):
                    return attachment["medium"]
        return None

    def start(self, machine: dict[str, Any]) -> None:
        if machine["state"] in LIVE_STATES:
            raise VBoxFault(VBOX_E_INVALID_OBJECT_STATE, f"The machine '{machine['name']}' is already locked by a session (or being locked or unlocked)", "MachineWrap", "IMachine")
        self.check_platform(machine.get("platform", "x86"))
        if machine.get("platform") == "arm":
            self._check_arm_devices(machine)
        for controller in machine["controllers"].values():
            for attachment in controller["attachments"].values():
                if not Path(attachment["medium"]).exists():
                    path = attachment["medium"]
                    raise VBoxFault(VBOX_E_FILE_ERROR, f"Could not open the medium '{path}'. VD: error VERR_FILE_NOT_FOUND opening image file '{path}' (VERR_FILE_NOT_FOUND)", "MediumWrap", "IMedium")
        self.set_state(machine, "running")
        machine["listening"] = {}
        for nic in machine["nics"].values():
            for rule in nic["rules"]:
                self._listen(machine, rule)
        if self.boot_medium(machine) is None:
            # The VM runs, but its firmware found nothing to start: no guest, no SSH.
            kind = self.firmware_kind(machine)
            self._serial(machine, NO_FIRMWARE_ARM if kind is None else NO_BOOT_BIOS if kind == "bios" else NO_BOOT_EFI)
            return
        machine["booted"] = True
        self._serial(machine, f"Linux version 6.1.0 (fake VirtualBox guest {machine['name']})")
        # What the pymachine boot image prints on its console once SSH is up.
        self._serial(machine, f"pymachine: ready hostname={machine['name']} ip=10.0.2.15 ssh=22 data=/dev/sda")

    def press_power_button(self, machine: dict[str, Any]) -> None:
        machine["acpi_pressed"] = time.time()
        self._advance_guest(machine)

    def power_off(self, machine: dict[str, Any]) -> None:
        self.set_state(machine, "poweroff")

    def discard_state(self, machine: dict[str, Any]) -> None:
        if machine["state"] not in ("saved", "aborted-saved"):
            raise VBoxFault(VBOX_E_INVALID_VM_STATE, f"Cannot discard the saved state as the machine is not in the saved state (machine state: {machine['state']})", "MachineWrap", "IMachine")
        self.set_state(machine, "poweroff")

    def unregister(self, machine: dict[str, Any]) -> list[str]:
        """Unregister(DetachAllReturnHardDisksOnly): the hard disks it had."""
        if machine["state"] in LIVE_STATES:
            raise VBoxFault(VBOX_E_INVALID_OBJECT_STATE, f"Cannot unregister the machine '{machine['name']}' while it is locked", "MachineWrap", "IMachine")
        disks = []
        for controller in machine["controllers"].values():
            for attachment in controller["attachments"].values():
                if attachment["type"] == "hdd":
                    disks.append(attachment["medium"])
        self.machines().remove(machine)
        return disks

    def delete_config(self, machine: dict[str, Any], disks: list[str]) -> None:
        """DeleteConfig: settings file, logs and the given hard disks go."""
        for disk in disks:
            Path(disk).unlink(missing_ok=True)
            self.data["media"].pop(disk, None)
        settings = Path(machine["settings_file"])
        settings.unlink(missing_ok=True)
        shutil.rmtree(settings.parent / "Logs", ignore_errors=True)
        try:
            settings.parent.rmdir()
        except OSError:
            pass

    def _serial(self, machine: dict[str, Any], line: str) -> None:
        uart = machine["uarts"].get("1")
        if uart and uart.get("enabled") and uart.get("mode") == "file" and uart.get("path"):
            try:
                with open(uart["path"], "a") as handle:
                    handle.write(line + "\n")
            except OSError:
                pass

    # -- storage --------------------------------------------------------------------------

    def add_controller(self, machine: dict[str, Any], name: str, bus: str) -> dict[str, Any]:
        if name in machine["controllers"]:
            raise VBoxFault(VBOX_E_OBJECT_IN_USE, f"Storage controller named '{name}' already exists", "MachineWrap", "IMachine")
        types = {"sata": "IntelAhci", "ide": "PIIX4", "scsi": "LsiLogic", "sas": "LsiLogicSas", "virtio": "VirtioSCSI", "virtio-scsi": "VirtioSCSI", "pcie": "NVMe", "usb": "USB", "floppy": "I82078"}
        controller = {"bus": bus, "type": types.get(bus, "IntelAhci"), "hostiocache": "off", "attachments": {}}
        machine["controllers"][name] = controller
        return controller

    def open_medium(self, path: str, kind: str) -> dict[str, Any]:
        location = str(Path(path).absolute())
        if not Path(location).is_file():
            raise VBoxFault(VBOX_E_FILE_ERROR, f"Could not find file for the medium '{location}' (VERR_FILE_NOT_FOUND)", "MediumWrap", "IMedium")
        medium = self.data["media"].setdefault(location, {"uuid": str(uuid.uuid4()), "kind": kind, "format": "VDI" if kind == "hdd" else "RAW"})
        return medium

    def attach(self, machine: dict[str, Any], controller: str, port: int, device: int, kind: str, path: str) -> None:
        if controller not in machine["controllers"]:
            raise VBoxFault(VBOX_E_OBJECT_NOT_FOUND, f"Could not find a storage controller named '{controller}'", "MachineWrap", "IMachine")
        location = str(Path(path).absolute())
        medium = self.open_medium(location, kind)
        machine["controllers"][controller]["attachments"][f"{port}-{device}"] = {"type": kind, "medium": location, "uuid": medium["uuid"]}

    def create_disk(self, path: str, size_mb: int, fmt: str) -> dict[str, Any]:
        location = str(Path(path).absolute())
        if Path(location).exists():
            raise VBoxFault(
                VBOX_E_FILE_ERROR,
                f"Could not create the medium storage unit '{location}'.\nVDI: cannot create image '{location}' (VERR_ALREADY_EXISTS)",
                "MediumWrap",
                "IMedium",
            )
        Path(location).parent.mkdir(parents=True, exist_ok=True)
        with open(location, "wb") as handle:
            # A dynamic VDI starts small: its header, no data blocks yet.
            handle.write(b"<<< Oracle VM VirtualBox Disk Image >>>\n".ljust(512, b"\0"))
        medium = {"uuid": str(uuid.uuid4()), "kind": "hdd", "format": fmt, "size_mb": size_mb}
        self.data["media"][location] = medium
        return medium

    def close_disk(self, path: str, delete: bool) -> None:
        location = str(Path(path).absolute())
        users = [
            m["name"]
            for m in self.machines()
            for c in m["controllers"].values()
            for a in c["attachments"].values()
            if a["medium"] == location
        ]
        if users:
            raise VBoxFault(VBOX_E_OBJECT_IN_USE, f"Medium '{location}' cannot be closed because it is still attached to {len(users)} virtual machines", "MediumWrap", "IMedium")
        if location not in self.data["media"] and not Path(location).is_file():
            raise VBoxFault(VBOX_E_FILE_ERROR, f"Could not find file for the medium '{location}' (VERR_FILE_NOT_FOUND)", "MediumWrap", "IMedium")
        self.data["media"].pop(location, None)
        if delete:
            Path(location).unlink(missing_ok=True)

    def hard_disk(self, path: str) -> dict[str, Any]:
        """A known hard disk image (IVirtualBox::openMedium of a hard disk)."""
        location = str(Path(path).absolute())
        medium = self.data["media"].get(location)
        if medium is None or medium.get("kind") != "hdd" or not Path(location).is_file():
            raise VBoxFault(VBOX_E_FILE_ERROR, f"Could not find file for the medium '{location}' (VERR_FILE_NOT_FOUND)", "MediumWrap", "IMedium")
        return medium

    def users_of(self, path: str) -> list[dict[str, Any]]:
        location = str(Path(path).absolute())
        return [m for m in self.machines() for c in m["controllers"].values() for a in c["attachments"].values() if a["medium"] == location]

    def resize_disk(self, path: str, size_mb: int) -> None:
        """IMedium::resize. A disk a running VM holds is write-locked; VDI cannot shrink."""
        location = str(Path(path).absolute())
        medium = self.hard_disk(location)
        if any(m["state"] in LIVE_STATES for m in self.users_of(location)):
            raise VBoxFault(VBOX_E_INVALID_OBJECT_STATE, f"Medium '{location}' is locked for writing by another task", "MediumWrap", "IMedium")
        if size_mb < medium.get("size_mb", 0):
            # Reported through the progress object (Medium::i_taskResizeHandler). UNVERIFIED
            # beyond the sentence itself, which users quote.
            raise VBoxFault(VBOX_E_NOT_SUPPORTED, f"Shrinking is not yet supported for medium '{location}'", "MediumWrap", "IMedium")
        medium["size_mb"] = size_mb

    # -- NAT rules (NATEngine::addRedirect / removeRedirect) ---------------------------------

    def add_rule(self, machine: dict[str, Any], slot: str, rule: dict[str, Any]) -> None:
        nic = machine["nics"][slot]
        name = rule["name"] or f"{rule['proto']}_{rule['host_port']}_{rule['guest_port']}"
        if "," in name:
            raise VBoxFault(E_INVALIDARG, "',' - invalid character in NAT rule name", "NATEngineWrap", "INATEngine")
        for existing in nic["rules"]:
            if existing["name"] == name:
                raise VBoxFault(E_INVALIDARG, "A NAT rule of this name already exists", "NATEngineWrap", "INATEngine")
            if (existing["host_ip"], existing["host_port"], existing["proto"]) == (rule["host_ip"], rule["host_port"], rule["proto"]):
                raise VBoxFault(E_INVALIDARG, "A NAT rule for this host port and this host IP already exists", "NATEngineWrap", "INATEngine")
        nic["rules"].append({**rule, "name": name})
        # VirtualBox keeps the rules in a map by name: they come back sorted.
        nic["rules"].sort(key=lambda r: r["name"])
        if self.has_console(machine):
            self._listen(machine, {**rule, "name": name})

    def _listen(self, machine: dict[str, Any], rule: dict[str, Any]) -> None:
        """The VM process binds the rule's host address and port, or silently fails to."""
        address = rule.get("host_ip") or "0.0.0.0"
        taken = not _bindable(rule["proto"], address, int(rule["host_port"])) or any(
            other is not machine and self._holds(other, rule["proto"], address, int(rule["host_port"])) for other in self.machines()
        )
        machine.setdefault("listening", {})[rule["name"]] = not taken

    def _holds(self, machine: dict[str, Any], protocol: str, address: str, port: int) -> bool:
        """True if this VM's process listens on that port, on an address that overlaps."""
        if not self.has_console(machine):
            return False
        listening = machine.get("listening") or {}
        for nic in machine["nics"].values():
            for rule in nic["rules"]:
                mine = rule.get("host_ip") or "0.0.0.0"
                if not listening.get(rule["name"]) or rule["proto"] != protocol or int(rule["host_port"]) != port:
                    continue
                if "0.0.0.0" in (mine, address) or mine == address:
                    return True
        return False

    def add_shared_folder(self, machine: dict[str, Any], name: str, host_path: str, writable: bool) -> None:
        """createSharedFolder: a permanent share; names are unique per machine."""
        shares = machine.setdefault("shares", [])
        if any(share["name"] == name for share in shares):
            raise VBoxFault(VBOX_E_OBJECT_IN_USE, f"Shared folder named '{name}' already exists", "MachineWrap", "IMachine")
        shares.append({"name": name, "path": host_path, "writable": writable})

    def remove_rule(self, machine: dict[str, Any], slot: str, name: str) -> None:
        nic = machine["nics"][slot]
        kept = [r for r in nic["rules"] if r["name"] != name]
        if len(kept) == len(nic["rules"]):
            raise VBoxFault(E_INVALIDARG, "", "NATEngineWrap", "INATEngine", extended=False)
        nic["rules"] = kept
        (machine.get("listening") or {}).pop(name, None)


class FakeVirtualBox:
    """A handle on one fake host's state file, for the fakes and for tests."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.log_path = self.path.with_name(self.path.name + ".argv.log")

    @classmethod
    def from_environment(cls) -> FakeVirtualBox:
        return cls(os.environ[STATE_ENV])

    def initialise(self, version: str = "6.1.50", revision: str = "161033", host_arch: str = "x86", **faults: Any) -> FakeVirtualBox:
        """Write a fresh host of `host_arch` ("x86" or "arm"): no VMs, no media, the given faults."""
        if host_arch not in PLATFORM_NAMES:
            raise ValueError(f"host_arch is x86 or arm, not {host_arch!r}")
        data = {"version": version, "revision": revision, "host_arch": host_arch, "machines": [], "media": {}, "faults": {**DEFAULT_FAULTS, **faults}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(data, indent=1))
        self.log_path.write_text("")
        return self

    @contextmanager
    def transaction(self) -> Iterator[Host]:
        """The host, locked against other processes; saved afterwards even when the
        operation was refused, as a refusal still uses up the injected faults."""
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            host = Host(json.loads(self.path.read_text()))
            try:
                yield host
            finally:
                self._save(host)

    def _save(self, host: Host) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(host.data, indent=1))
        os.replace(tmp, self.path)

    # -- for tests --------------------------------------------------------------------------

    def read(self) -> dict[str, Any]:
        return json.loads(self.path.read_text())

    def set_faults(self, **faults: Any) -> None:
        with self.transaction() as host:
            host.faults.update(faults)

    def machine(self, name: str) -> dict[str, Any] | None:
        return next((m for m in self.read()["machines"] if m["name"] == name), None)

    def set_vm_state(self, name: str, state: str) -> None:
        with self.transaction() as host:
            for machine in host.machines():
                if machine["name"] == name:
                    host.set_state(machine, state)

    def add_rule_by_hand(self, name: str, rule: dict[str, Any]) -> None:
        """A rule someone made outside pymachine (the GUI, VBoxManage by hand)."""
        with self.transaction() as host:
            machine = next(m for m in host.machines() if m["name"] == name)
            host.add_rule(machine, "1", rule)

    def forward_works(self, name: str, protocol: str, host_port: int, guest_port: int, host_ip: str = "127.0.0.1") -> bool:
        """What the real host would show for a connection to host_ip:host_port: a running VM
        whose guest booted carries it if a rule of that port listens there (its address is
        host_ip, or every interface) and got its port when it was made live. A VM that
        booted nothing answers on no port."""
        machine = self.machine(name)
        if machine is None or machine["state"] != "running" or not machine.get("booted"):
            return False
        listening = machine.get("listening") or {}
        return any(
            r["proto"] == protocol
            and r["host_port"] == host_port
            and r["guest_port"] == guest_port
            and (r.get("host_ip") or "0.0.0.0") in ("0.0.0.0", host_ip)
            and listening.get(r["name"], False)
            for nic in machine["nics"].values()
            for r in nic["rules"]
        )

    def console(self, name: str) -> str:
        """What the VM's serial console (uart 1 in file mode) has received."""
        machine = self.machine(name)
        uart = (machine or {}).get("uarts", {}).get("1") or {}
        try:
            return Path(uart.get("path", "")).read_text() if uart.get("path") else ""
        except OSError:
            return ""

    def calls(self) -> list[list[str]]:
        """Every argv the fake VBoxManage received, in order, program name first."""
        if not self.log_path.exists():
            return []
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line.strip()]

    def log(self, argv: list[str]) -> None:
        with open(self.log_path, "a") as handle:
            handle.write(json.dumps(argv) + "\n")


def _bindable(protocol: str, address: str, port: int) -> bool:
    """True if a process on this host could bind address:port now, as the VM process must.
    VirtualBox's NAT sets SO_REUSEADDR on its TCP listeners, so TIME_WAIT does not count."""
    import socket

    kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as sock:
        if protocol == "tcp":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError:
            return False
    return True


def _mac() -> str:
    return "080027" + uuid.uuid4().hex[:6].upper()
