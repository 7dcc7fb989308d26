"""A fake of what pyvbox needs from vboxapi: XPCOM objects served by the fake host.

pyvbox's generated classes wrap the COM objects vboxapi returns (`Interface._i`): they
check argument types, pass enums as numbers, and turn a COM error (an exception with
`errno` and `msg`, as xpcom.Exception has) into a VBoxError subclass chosen by the
result code, e.g. OleErrorInvalidarg carrying "A NAT rule of this name already exists".
So this fake stands exactly where vboxapi and VBoxSVC stand: `FakePyvbox.VirtualBox()`
is the real `virtualbox.library_ext.IVirtualBox` over a fake IVirtualBox, and every
error the driver sees went through pyvbox's own translation.

The objects read and change the same state file as the fake VBoxManage, because the
real API and the real VBoxManage both talk to one VBoxSVC. Names (findMachine,
lockMachine, NATEngine, redirects ...) and numbers (MachineState, LockType ...) are
those of the VirtualBox 6.1 API that pyvbox 2.1.1 was generated against.

Simplification: settings changed through a session are applied at once rather than at
saveSettings; the driver always saves, so it cannot tell.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from virtualbox import library
from virtualbox.library_ext import ISession, IVirtualBox

from .vbox_model import (
    E_INVALIDARG,
    VBOX_E_INVALID_OBJECT_STATE,
    VBOX_E_INVALID_VM_STATE,
    VBOX_E_NOT_SUPPORTED,
    FakeVirtualBox,
    Host,
    VBoxFault,
)

E_UNEXPECTED = 0x8000FFFF

#: MachineState numbers of the VirtualBox 6.1 API, by VBoxManage's short names.
MACHINE_STATES_61 = {
    "poweroff": 1,
    "saved": 2,
    "teleported": 3,
    "aborted": 4,
    "running": 5,
    "paused": 6,
    "gurumeditation": 7,
    "teleporting": 8,
    "livesnapshotting": 9,
    "starting": 10,
    "stopping": 11,
    "saving": 12,
    "restoring": 13,
    "teleportingpausedvm": 14,
    "teleportingin": 15,
    "deletingsnapshotlive": 16,
    "deletingsnapshotlivepaused": 17,
    "onlinesnapshotting": 18,
    "restoringsnapshot": 19,
    "deletingsnapshot": 20,
    "settingup": 21,
    "snapshotting": 22,
}
NIC_TYPES = {1: "Am79C970A", 2: "Am79C973", 3: "82540EM", 4: "82543GC", 5: "82545EM", 6: "virtio", 7: "Am79C960"}
BOOT_DEVICES = {0: "none", 1: "floppy", 2: "dvd", 3: "disk", 4: "net"}
BOOT_MENU = {0: "disabled", 1: "menuonly", 2: "messageandmenu"}
BUSES = {1: "ide", 2: "sata", 3: "scsi", 5: "sas", 7: "pcie", 8: "virtio"}
LOCK_SHARED, LOCK_WRITE = 1, 2


class XPCOMError(Exception):
    """What xpcom raises: the result code in `errno`, VirtualBox's text in `msg`."""

    def __init__(self, errno: int, msg: str) -> None:
        super().__init__(errno, msg)
        self.errno = errno
        self.msg = msg


class FakePyvbox:
    """Stands in for the `virtualbox` module: VirtualBox(), Session() and library."""

    library = library

    def __init__(self, fake: FakeVirtualBox) -> None:
        self.fake = fake
        #: (method, arguments) of every COM method called, for tests
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def VirtualBox(self) -> IVirtualBox:  # noqa: N802 - pyvbox's name
        return IVirtualBox(interface=_VirtualBox(self))

    def Session(self) -> ISession:  # noqa: N802 - pyvbox's name
        return ISession(interface=_Session(self))

    def run(self, method: str, args: tuple[Any, ...], work: Callable[[Host], Any]) -> Any:
        """One COM call: logged, done on the host under its lock, faults as XPCOM errors."""
        self.calls.append((method, args))
        with self.fake.transaction() as host:
            try:
                return work(host)
            except VBoxFault as fault:
                raise XPCOMError(fault.code, fault.text) from None


def _progress() -> _Progress:
    return _Progress()


def _offline() -> Host:
    """VirtualBox's checks for a machine not yet registered (nothing else to consult)."""
    return Host({"faults": {}, "machines": [], "media": {}})


class _Progress:
    """A finished IProgress (the fake host does everything at once)."""

    completed = True
    canceled = False
    resultCode = 0  # noqa: N815 - COM attribute names
    errorInfo = None  # noqa: N815
    percent = 100

    def waitForCompletion(self, timeout: int) -> None:  # noqa: N802
        return None


class _ErrorInfo:
    """IVirtualBoxErrorInfo of a failed background task."""

    def __init__(self, code: int, text: str) -> None:
        self.resultCode = code  # noqa: N815
        self.text = text


class _FailedProgress(_Progress):
    """An IProgress whose task failed."""

    def __init__(self, code: int, text: str) -> None:
        self.resultCode = code  # noqa: N815
        self.errorInfo = _ErrorInfo(code, text)  # noqa: N815


class _VirtualBox:
    """IVirtualBox."""

    def __init__(self, svc: FakePyvbox) -> None:
        self._svc = svc

    @property
    def version(self) -> str:
        return self._svc.run("version", (), lambda host: host.version)

    @property
    def revision(self) -> int:
        return self._svc.run("revision", (), lambda host: int(host.data["revision"]))

    def composeMachineFilename(self, name: str, group: str, flags: str, base_folder: str) -> str:  # noqa: N802
        return str(Path(base_folder) / name / f"{name}.vbox")

    def createMachine(self, settings_file: str, name: str, groups: list[str], os_type: str, flags: str) -> _Machine:  # noqa: N802
        def create(host: Host) -> dict[str, Any]:
            base = str(Path(settings_file).parent.parent) if settings_file else str(Path.home() / "VirtualBox VMs")
            return host.new_machine(name, base, os_type)

        return _Machine(self._svc, draft=self._svc.run("createMachine", (settings_file, name, groups, os_type, flags), create))

    def registerMachine(self, machine: _Machine) -> None:  # noqa: N802
        if machine._draft is None:
            raise XPCOMError(VBOX_E_INVALID_OBJECT_STATE, "The machine is already registered")
        draft = machine._draft
        self._svc.run("registerMachine", (draft["name"],), lambda host: host.register(draft))
        machine._draft = None
        machine._uuid = draft["uuid"]
        machine._mutable = False

    def findMachine(self, name_or_id: str) -> _Machine:  # noqa: N802
        found = self._svc.run("findMachine", (name_or_id,), lambda host: host.find(name_or_id))
        return _Machine(self._svc, uuid=found["uuid"])

    def openMedium(self, location: str, device_type: int, access_mode: int, force_new_uuid: bool) -> _Medium:  # noqa: N802
        kind = "hdd" if device_type == 3 else "dvddrive"
        self._svc.run("openMedium", (location, device_type), lambda host: host.open_medium(location, kind))
        return _Medium(self._svc, str(Path(location).absolute()), kind)

    def createMedium(self, fmt: str, location: str, access_mode: int, device_type: int) -> _Medium:  # noqa: N802
        self._svc.calls.append(("createMedium", (fmt, location)))
        return _Medium(self._svc, str(Path(location).absolute()), "hdd", fmt)


class _Machine:
    """IMachine: unregistered (a draft, mutable), registered (read only), or a session's."""

    def __init__(self, svc: FakePyvbox, draft: dict[str, Any] | None = None, uuid: str = "", mutable: bool = False) -> None:
        self._svc = svc
        self._draft = draft
        self._uuid = uuid
        self._mutable = mutable or draft is not None
        self._gone: dict[str, Any] | None = None

    def _read(self, what: str, pick: Callable[[dict[str, Any]], Any]) -> Any:
        if self._draft is not None:
            return pick(self._draft)
        return self._svc.run(what, (), lambda host: pick(host.find(self._uuid)))

    def _edit(self, what: str, change: Callable[[Host | None, dict[str, Any]], Any], args: tuple[Any, ...] = ()) -> Any:
        if self._draft is not None:
            try:
                return change(None, self._draft)
            except VBoxFault as fault:
                raise XPCOMError(fault.code, fault.text) from None

        def edit(host: Host) -> Any:
            machine = host.find(self._uuid)
            if not self._mutable:
                state = {"poweroff": "PoweredOff", "running": "Running"}.get(machine["state"], machine["state"])
                raise VBoxFault(VBOX_E_INVALID_VM_STATE, f"The machine is not mutable (state is {state})", "SessionMachine", "IMachine")
            return change(host, machine)

        return self._svc.run(what, args, edit)

    # -- attributes --------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._read("name", lambda m: m["name"])

    @property
    def id(self) -> str:
        return self._read("id", lambda m: m["uuid"])

    @property
    def state(self) -> int:
        return self._read("state", lambda m: MACHINE_STATES_61.get(m["state"], 0))

    @property
    def settingsFilePath(self) -> str:  # noqa: N802
        return self._read("settingsFilePath", lambda m: m["settings_file"])

    @property
    def OSTypeId(self) -> str:  # noqa: N802
        return self._read("OSTypeId", lambda m: m["ostype"])

    @property
    def CPUCount(self) -> int:  # noqa: N802
        return self._read("CPUCount", lambda m: m["cpus"])

    @CPUCount.setter
    def CPUCount(self, value: int) -> None:  # noqa: N802
        self._edit("setCPUCount", lambda h, m: m.update(cpus=value), (value,))

    @property
    def memorySize(self) -> int:  # noqa: N802
        return self._read("memorySize", lambda m: m["memory"])

    @memorySize.setter
    def memorySize(self, value: int) -> None:  # noqa: N802
        self._edit("setMemorySize", lambda h, m: m.update(memory=value), (value,))

    @property
    def firmwareType(self) -> int:  # noqa: N802
        return self._read("firmwareType", lambda m: {"BIOS": 1, "EFI": 2}.get(m["firmware"], 1))

    @firmwareType.setter
    def firmwareType(self, value: int) -> None:  # noqa: N802
        self._edit("setFirmwareType", lambda h, m: m.update(firmware={1: "BIOS", 2: "EFI", 3: "EFI32", 4: "EFI64"}[value]), (value,))

    @property
    def RTCUseUTC(self) -> bool:  # noqa: N802
        return self._read("RTCUseUTC", lambda m: m["rtcuseutc"] == "on")

    @RTCUseUTC.setter
    def RTCUseUTC(self, value: bool) -> None:  # noqa: N802
        self._edit("setRTCUseUTC", lambda h, m: m.update(rtcuseutc="on" if value else "off"), (value,))

    @property
    def BIOSSettings(self) -> _BIOSSettings:  # noqa: N802
        return _BIOSSettings(self)

    # -- methods ---------------------------------------------------------------------------

    def setHWVirtExProperty(self, prop: int, value: bool) -> None:  # noqa: N802
        key = {1: "hwvirtex", 3: "nestedpaging"}.get(prop)
        if key is None:
            return
        self._edit("setHWVirtExProperty", lambda h, m: m.update({key: "on" if value else "off"}), (prop, value))

    def setBootOrder(self, position: int, device: int) -> None:  # noqa: N802
        def change(host: Host | None, machine: dict[str, Any]) -> None:
            if not 1 <= position <= 4:
                raise VBoxFault(E_INVALIDARG, f"Invalid boot position: {position} (must be in range [1, 4])", "MachineWrap", "IMachine")
            machine["boot"][position - 1] = BOOT_DEVICES[device]

        self._edit("setBootOrder", change, (position, device))

    def getNetworkAdapter(self, slot: int) -> _NetworkAdapter:  # noqa: N802
        return _NetworkAdapter(self, str(slot + 1))

    def getSerialPort(self, slot: int) -> _SerialPort:  # noqa: N802
        return _SerialPort(self, str(slot + 1))

    def addStorageController(self, name: str, bus: int) -> _StorageController:  # noqa: N802
        def change(host: Host | None, machine: dict[str, Any]) -> None:
            (host or _offline()).add_controller(machine, name, BUSES.get(bus, "sata"))

        self._edit("addStorageController", change, (name, bus))
        return _StorageController(self, name)

    def saveSettings(self) -> None:  # noqa: N802
        if self._draft is not None:
            return
        self._edit("saveSettings", lambda host, machine: host.save_settings(machine) if host else None)

    def attachDevice(self, controller: str, port: int, device: int, kind: int, medium: _Medium) -> None:  # noqa: N802
        def change(host: Host | None, machine: dict[str, Any]) -> None:
            assert host is not None, "attach media to a registered machine"
            host.attach(machine, controller, port, device, "hdd" if kind == 3 else "dvddrive", medium.location)

        self._edit("attachDevice", change, (controller, port, device, kind, medium.location))

    def createSharedFolder(self, name: str, host_path: str, writable: bool, automount: bool, auto_mount_point: str) -> None:  # noqa: N802
        def change(host: Host | None, machine: dict[str, Any]) -> None:
            (host or _offline()).add_shared_folder(machine, name, host_path, writable)

        self._edit("createSharedFolder", change, (name, host_path, writable, automount, auto_mount_point))

    def lockMachine(self, session: _Session, lock_type: int) -> None:  # noqa: N802
        if session.state == 2:
            raise XPCOMError(VBOX_E_INVALID_OBJECT_STATE, "The given session is busy")

        def lock(host: Host) -> bool:
            machine = host.find(self._uuid)
            live = host.has_console(machine)
            if lock_type == LOCK_WRITE or not live:
                # A shared lock on a VM nobody holds is a write lock.
                host.write_lock(machine)
            return live

        live = self._svc.run("lockMachine", (self._uuid, lock_type), lock)
        session._lock(self._uuid, console=live)

    def launchVMProcess(self, session: _Session, kind: str, environment: list[str]) -> _Progress:  # noqa: N802
        if session.state == 2:
            raise XPCOMError(VBOX_E_INVALID_OBJECT_STATE, "The given session is busy")
        self._svc.run("launchVMProcess", (self._uuid, kind), lambda host: host.start(host.find(self._uuid)))
        session._lock(self._uuid, console=True)
        return _progress()

    def unregister(self, cleanup_mode: int) -> list[_Medium]:
        def unregister(host: Host) -> tuple[dict[str, Any], list[str]]:
            machine = host.find(self._uuid)
            return machine, host.unregister(machine)

        machine, disks = self._svc.run("unregister", (self._uuid, cleanup_mode), unregister)
        self._gone = machine
        return [_Medium(self._svc, disk, "hdd") for disk in disks]

    def deleteConfig(self, media: list[_Medium]) -> _Progress:  # noqa: N802
        if self._gone is None:
            raise XPCOMError(VBOX_E_INVALID_OBJECT_STATE, "Cannot delete settings of a registered machine")
        machine = self._gone
        self._svc.run("deleteConfig", (machine["name"],), lambda host: host.delete_config(machine, [m.location for m in media]))
        return _progress()

    def discardSavedState(self, remove_file: bool) -> None:  # noqa: N802
        self._edit("discardSavedState", lambda host, machine: host.discard_state(machine) if host else None, (remove_file,))


class _BIOSSettings:
    """IBIOSSettings, stored in its machine."""

    def __init__(self, machine: _Machine) -> None:
        self._machine = machine

    def _flag(self, key: str) -> bool:
        return self._machine._read(key, lambda m: m[key] == "on")

    def _set_flag(self, key: str, value: bool) -> None:
        self._machine._edit(f"set_{key}", lambda h, m: m.update({key: "on" if value else "off"}), (value,))

    @property
    def ACPIEnabled(self) -> bool:  # noqa: N802
        return self._flag("acpi")

    @ACPIEnabled.setter
    def ACPIEnabled(self, value: bool) -> None:  # noqa: N802
        self._set_flag("acpi", value)

    @property
    def IOAPICEnabled(self) -> bool:  # noqa: N802
        return self._flag("ioapic")

    @IOAPICEnabled.setter
    def IOAPICEnabled(self, value: bool) -> None:  # noqa: N802
        self._set_flag("ioapic", value)

    @property
    def bootMenuMode(self) -> int:  # noqa: N802
        return self._machine._read("bootMenuMode", lambda m: {v: k for k, v in BOOT_MENU.items()}[m["biosbootmenu"]])

    @bootMenuMode.setter
    def bootMenuMode(self, value: int) -> None:  # noqa: N802
        self._machine._edit("setBootMenuMode", lambda h, m: m.update(biosbootmenu=BOOT_MENU[value]), (value,))


class _NetworkAdapter:
    """INetworkAdapter of one slot."""

    def __init__(self, machine: _Machine, slot: str) -> None:
        self._machine = machine
        self._slot = slot

    def _nic(self, machine: dict[str, Any]) -> dict[str, Any]:
        return machine["nics"].setdefault(self._slot, {"attachment": "null", "type": "Am79C973", "cable": "on", "dnsproxy": "off", "mac": "080027000000", "rules": []})

    def _set(self, what: str, key: str, value: Any) -> None:
        self._machine._edit(what, lambda h, m: self._nic(m).update({key: value}), (self._slot, value))

    @property
    def enabled(self) -> bool:
        return self._machine._read("enabled", lambda m: self._slot in m["nics"])

    @enabled.setter
    def enabled(self, value: bool) -> None:
        def change(host: Host | None, machine: dict[str, Any]) -> None:
            if value:
                self._nic(machine)
            else:
                machine["nics"].pop(self._slot, None)

        self._machine._edit("setEnabled", change, (self._slot, value))

    @property
    def attachmentType(self) -> int:  # noqa: N802
        return self._machine._read("attachmentType", lambda m: {"nat": 1, "bridged": 2, "intnet": 3, "hostonly": 4}.get(self._nic(m)["attachment"], 0))

    @attachmentType.setter
    def attachmentType(self, value: int) -> None:  # noqa: N802
        self._set("setAttachmentType", "attachment", {0: "null", 1: "nat", 2: "bridged", 3: "intnet", 4: "hostonly"}[value])

    @property
    def adapterType(self) -> int:  # noqa: N802
        return self._machine._read("adapterType", lambda m: {v: k for k, v in NIC_TYPES.items()}[self._nic(m)["type"]])

    @adapterType.setter
    def adapterType(self, value: int) -> None:  # noqa: N802
        self._set("setAdapterType", "type", NIC_TYPES[value])

    @property
    def cableConnected(self) -> bool:  # noqa: N802
        return self._machine._read("cableConnected", lambda m: self._nic(m)["cable"] == "on")

    @cableConnected.setter
    def cableConnected(self, value: bool) -> None:  # noqa: N802
        self._set("setCableConnected", "cable", "on" if value else "off")

    @property
    def NATEngine(self) -> _NATEngine:  # noqa: N802
        return _NATEngine(self)


class _NATEngine:
    """INATEngine of one adapter: DNS proxy and the port-forwarding rules."""

    def __init__(self, adapter: _NetworkAdapter) -> None:
        self._adapter = adapter
        self._machine = adapter._machine

    @property
    def DNSProxy(self) -> bool:  # noqa: N802
        return self._machine._read("DNSProxy", lambda m: self._adapter._nic(m)["dnsproxy"] == "on")

    @DNSProxy.setter
    def DNSProxy(self, value: bool) -> None:  # noqa: N802
        self._adapter._set("setDNSProxy", "dnsproxy", "on" if value else "off")

    @property
    def redirects(self) -> list[str]:
        def rules(machine: dict[str, Any]) -> list[str]:
            return [
                f"{r['name']},{1 if r['proto'] == 'tcp' else 0},{r['host_ip']},{r['host_port']},{r['guest_ip']},{r['guest_port']}"
                for r in self._adapter._nic(machine)["rules"]
            ]

        return self._machine._read("redirects", rules)

    def addRedirect(self, name: str, proto: int, host_ip: str, host_port: int, guest_ip: str, guest_port: int) -> None:  # noqa: N802
        rule = {"name": name, "proto": "tcp" if proto == 1 else "udp", "host_ip": host_ip, "host_port": host_port, "guest_ip": guest_ip, "guest_port": guest_port}

        def change(host: Host | None, machine: dict[str, Any]) -> None:
            (host or _offline()).add_rule(machine, self._adapter._slot, rule)

        self._machine._edit("addRedirect", change, (name, proto, host_ip, host_port, guest_ip, guest_port))

    def removeRedirect(self, name: str) -> None:  # noqa: N802
        def change(host: Host | None, machine: dict[str, Any]) -> None:
            (host or _offline()).remove_rule(machine, self._adapter._slot, name)

        self._machine._edit("removeRedirect", change, (name,))


class _SerialPort:
    """ISerialPort of one slot."""

    def __init__(self, machine: _Machine, slot: str) -> None:
        self._machine = machine
        self._slot = slot

    def _uart(self, machine: dict[str, Any]) -> dict[str, Any]:
        return machine["uarts"].setdefault(self._slot, {"enabled": False, "io": 0x3F8, "irq": 4, "mode": "disconnected", "path": ""})

    def _set(self, what: str, key: str, value: Any) -> None:
        self._machine._edit(what, lambda h, m: self._uart(m).update({key: value}), (self._slot, value))

    @property
    def enabled(self) -> bool:
        return self._machine._read("enabled", lambda m: bool(m["uarts"].get(self._slot, {}).get("enabled")))

    @enabled.setter
    def enabled(self, value: bool) -> None:
        self._set("setEnabled", "enabled", bool(value))

    @property
    def IOBase(self) -> int:  # noqa: N802
        return self._machine._read("IOBase", lambda m: self._uart(m)["io"])

    @IOBase.setter
    def IOBase(self, value: int) -> None:  # noqa: N802
        self._set("setIOBase", "io", value)

    @property
    def IRQ(self) -> int:  # noqa: N802
        return self._machine._read("IRQ", lambda m: self._uart(m)["irq"])

    @IRQ.setter
    def IRQ(self, value: int) -> None:  # noqa: N802
        self._set("setIRQ", "irq", value)

    @property
    def path(self) -> str:
        return self._machine._read("path", lambda m: self._uart(m)["path"])

    @path.setter
    def path(self, value: str) -> None:
        self._set("setPath", "path", value)

    @property
    def hostMode(self) -> int:  # noqa: N802
        return self._machine._read("hostMode", lambda m: {"disconnected": 0, "file": 3}.get(self._uart(m)["mode"], 0))

    @hostMode.setter
    def hostMode(self, value: int) -> None:  # noqa: N802
        self._set("setHostMode", "mode", {0: "disconnected", 1: "client", 2: "device", 3: "file", 4: "tcpserver"}[value])


class _StorageController:
    """IStorageController."""

    def __init__(self, machine: _Machine, name: str) -> None:
        self._machine = machine
        self.name = name

    @property
    def useHostIOCache(self) -> bool:  # noqa: N802
        return self._machine._read("useHostIOCache", lambda m: m["controllers"][self.name]["hostiocache"] == "on")

    @useHostIOCache.setter
    def useHostIOCache(self, value: bool) -> None:  # noqa: N802
        self._machine._edit("setUseHostIOCache", lambda h, m: m["controllers"][self.name].update(hostiocache="on" if value else "off"), (value,))


class _Medium:
    """IMedium, known by its location."""

    def __init__(self, svc: FakePyvbox, location: str, kind: str, fmt: str = "VDI") -> None:
        self._svc = svc
        self.location = location
        self._kind = kind
        self._format = fmt

    def createBaseStorage(self, size: int, variants: list[int]) -> _Progress:  # noqa: N802
        self._svc.run("createBaseStorage", (self.location, size), lambda host: host.create_disk(self.location, size // (1024 * 1024), self._format))
        return _progress()

    def deleteStorage(self) -> _Progress:  # noqa: N802
        self._svc.run("deleteStorage", (self.location,), lambda host: host.close_disk(self.location, delete=True))
        return _progress()

    def close(self) -> None:
        self._svc.run("close", (self.location,), lambda host: host.close_disk(self.location, delete=False))

    @property
    def logicalSize(self) -> int:  # noqa: N802
        medium = self._svc.run("logicalSize", (self.location,), lambda host: host.hard_disk(self.location))
        return int(medium.get("size_mb", 0)) * 1024 * 1024

    def resize(self, size: int) -> _Progress:
        """IMedium::resize: a held disk is refused at once; a VDI that would shrink fails
        in the background task, through the progress object."""

        def resize(host: Host) -> _Progress:
            try:
                host.resize_disk(self.location, size // (1024 * 1024))
            except VBoxFault as fault:
                if fault.code != VBOX_E_NOT_SUPPORTED:
                    raise
                return _FailedProgress(fault.code, fault.text)
            return _progress()

        return self._svc.run("resize", (self.location, size), resize)


class _Console:
    """IConsole of a running VM."""

    def __init__(self, svc: FakePyvbox, uuid: str) -> None:
        self._svc = svc
        self._uuid = uuid

    def _live(self, host: Host) -> dict[str, Any]:
        machine = host.find(self._uuid)
        if not host.has_console(machine):
            raise VBoxFault(VBOX_E_INVALID_VM_STATE, "Invalid machine state: PoweredOff (must be Running, Paused or Stuck)", "ConsoleWrap", "IConsole")
        return machine

    def powerButton(self) -> None:  # noqa: N802
        self._svc.run("powerButton", (self._uuid,), lambda host: host.press_power_button(self._live(host)))

    def powerDown(self) -> _Progress:  # noqa: N802
        self._svc.run("powerDown", (self._uuid,), lambda host: host.power_off(self._live(host)))
        return _progress()


class _Session:
    """ISession: unlocked, or holding one machine (with a console if it runs)."""

    def __init__(self, svc: FakePyvbox) -> None:
        self._svc = svc
        self.state = 1  # SessionState.Unlocked
        self._uuid = ""
        self._console = False

    def _lock(self, uuid: str, console: bool) -> None:
        self.state = 2  # SessionState.Locked
        self._uuid = uuid
        self._console = console

    @property
    def machine(self) -> _Machine | None:
        if self.state != 2:
            return None
        return _Machine(self._svc, uuid=self._uuid, mutable=True)

    @property
    def console(self) -> _Console | None:
        if self.state != 2 or not self._console:
            return None
        return _Console(self._svc, self._uuid)

    def unlockMachine(self) -> None:  # noqa: N802
        self._svc.calls.append(("unlockMachine", (self._uuid,)))
        if self.state != 2:
            raise XPCOMError(E_UNEXPECTED, "The session is not locked (session state: Unlocked)")
        self.state = 1
