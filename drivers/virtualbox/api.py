"""The API backend: VirtualBox's COM/XPCOM API through pyvbox (the `virtualbox` package).

`import virtualbox` works alone; creating `virtualbox.VirtualBox()` imports the SDK's
`vboxapi` (not on PyPI) and raises ModuleNotFoundError without it. pyvbox 2.1.1 was
generated against VirtualBox 6.1: VirtualBox 7 renumbered MachineState (AbortedSaved
went in at 5) and changed createMachine, so this backend serves VirtualBox 6.x only and
the driver falls back to VBoxManage elsewhere.

COM errors arrive as pyvbox VBoxError subclasses (OleErrorInvalidarg ...) whose `msg`
is VirtualBox's own text, the same text VBoxManage prints.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from pymachine.errors import DriverError

from .backend import NatRule, VBoxFailure, VMInfo, VMLayout, with_retries

T = TypeVar("T")

#: IMachine.state in the VirtualBox 6.1 API, by number, as VBoxManage names it.
MACHINE_STATES_61 = {
    1: "poweroff",
    2: "saved",
    3: "teleported",
    4: "aborted",
    5: "running",
    6: "paused",
    7: "gurumeditation",
    8: "teleporting",
    9: "livesnapshotting",
    10: "starting",
    11: "stopping",
    12: "saving",
    13: "restoring",
    14: "teleportingpausedvm",
    15: "teleportingin",
    16: "deletingsnapshotlive",
    17: "deletingsnapshotlivepaused",
    18: "onlinesnapshotting",
    19: "restoringsnapshot",
    20: "deletingsnapshot",
    21: "settingup",
    22: "snapshotting",
}

#: --nictype names and the NetworkAdapterType members that mean the same.
NIC_TYPES = {
    "Am79C970A": "am79_c970_a",
    "Am79C973": "am79_c973",
    "82540EM": "i82540_em",
    "82543GC": "i82543_gc",
    "82545EM": "i82545_em",
    "virtio": "virtio",
}


class ApiUnavailable(Exception):
    """The API cannot be used here; the message says why."""


def connect(pyvbox: Any = None) -> tuple[Any, Any]:
    """(pyvbox or a stand-in for it, its IVirtualBox); ApiUnavailable says why not."""
    if pyvbox is None:
        try:
            import virtualbox as pyvbox
        except Exception as exc:  # noqa: BLE001 - a broken optional package must not break the CLI
            raise ApiUnavailable(f"the `virtualbox` package (pyvbox) does not import ({type(exc).__name__}: {exc})") from None
    try:
        vbox = pyvbox.VirtualBox()
    except ImportError as exc:
        raise ApiUnavailable(f"the VirtualBox SDK's vboxapi does not import ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - VBoxSVC may be missing, stuck or refusing
        raise ApiUnavailable(f"the VirtualBox API did not answer ({type(exc).__name__}: {exc})") from None
    try:
        version = str(vbox.version)
    except Exception as exc:  # noqa: BLE001
        raise ApiUnavailable(f"the VirtualBox API did not tell its version ({type(exc).__name__}: {exc})") from None
    if not version.startswith("6."):
        raise ApiUnavailable(f"pyvbox speaks the VirtualBox 6.1 API, and this is VirtualBox {version}")
    return pyvbox, vbox


class ApiBackend:
    """VirtualBox through pyvbox: the same operations as VBoxManageBackend."""

    name = "api"

    def __init__(self, pyvbox: Any, vbox: Any, retry_pause: float = 0.25) -> None:
        self.pyvbox = pyvbox
        self.lib = pyvbox.library
        self.vbox = vbox
        self.retry_pause = retry_pause

    # -- calls, errors and sessions ------------------------------------------------------

    def _call(self, operation: str, work: Callable[[], T]) -> T:
        return with_retries(lambda: self._once(operation, work), self.retry_pause)

    def _once(self, operation: str, work: Callable[[], T]) -> T:
        try:
            return work()
        except VBoxFailure:
            raise
        except Exception as exc:  # noqa: BLE001 - only COM errors are translated
            failure = self._failure(operation, exc)
            if failure is None:
                raise
            raise failure from None

    def _failure(self, operation: str, exc: Exception) -> VBoxFailure | None:
        if isinstance(exc, self.lib.VBoxError):
            return VBoxFailure(operation, str(exc.msg or exc), int(exc.value) & 0xFFFFFFFF, exc.name)
        # A COM error raised by an attribute access bypasses pyvbox's translation.
        code = getattr(exc, "errno", getattr(exc, "hresult", None))
        text = getattr(exc, "msg", None)
        if isinstance(code, int) and text is not None:
            return VBoxFailure(operation, str(text), code & 0xFFFFFFFF)
        return None

    @contextmanager
    def _session(self, vm: str, lock_type: Any) -> Iterator[Any]:
        machine = self.vbox.find_machine(vm)
        session = self.pyvbox.Session()
        machine.lock_machine(session, lock_type)
        try:
            yield session
        finally:
            try:
                session.unlock_machine()
            except Exception:  # noqa: BLE001 - the work's own error matters more
                pass

    def _wait(self, progress: Any, operation: str) -> None:
        progress.wait_for_completion(-1)
        if int(progress.result_code or 0) != 0:
            text = progress.error_info.text if progress.error_info is not None else f"result code {progress.result_code:#x}"
            raise VBoxFailure(operation, str(text), int(progress.result_code) & 0xFFFFFFFF)

    # -- Backend ---------------------------------------------------------------------

    def version(self) -> str:
        return str(self._call("tell its version", lambda: self.vbox.version))

    def info(self, vm: str) -> VMInfo | None:
        def look() -> VMInfo:
            machine = self.vbox.find_machine(vm)
            state = MACHINE_STATES_61.get(int(machine.state), "unknown")
            redirects = machine.get_network_adapter(0).nat_engine.redirects
            rules = [r for r in (NatRule.parse(str(text)) for text in redirects) if r is not None]
            return VMInfo(state, rules, str(machine.settings_file_path))

        try:
            return self._call(f"find VM '{vm}'", look)
        except VBoxFailure as exc:
            if exc.not_found:
                return None
            raise

    def create(self, layout: VMLayout) -> None:
        if layout.arch != "amd64":
            # choose_backend never picks this backend for arm64; keep it that way.
            raise DriverError(f"The VirtualBox API backend cannot make {layout.arch} VMs (the 6.1 API has no ARM platform)", "Pass -o backend=vboxmanage")
        lib = self.lib
        operation = f"create VM '{layout.name}'"

        def register() -> None:
            settings = self.vbox.compose_machine_filename(layout.name, "/", "", str(layout.base_folder))
            machine = self.vbox.create_machine(settings, layout.name, ["/"], "Linux26_64", "")
            machine.cpu_count = layout.cpus
            machine.memory_size = layout.memory_mb
            machine.firmware_type = lib.FirmwareType.bios
            machine.rtc_use_utc = True
            bios = machine.bios_settings
            bios.acpi_enabled = True
            bios.ioapic_enabled = True
            bios.boot_menu_mode = lib.BIOSBootMenuMode.disabled
            machine.set_hw_virt_ex_property(lib.HWVirtExPropertyType.enabled, True)
            machine.set_hw_virt_ex_property(lib.HWVirtExPropertyType.nested_paging, True)
            machine.set_boot_order(1, lib.DeviceType.dvd)
            nic = machine.get_network_adapter(0)
            nic.enabled = True
            nic.attachment_type = lib.NetworkAttachmentType.nat
            nic.adapter_type = getattr(lib.NetworkAdapterType, NIC_TYPES[layout.nic_type])
            nic.cable_connected = True
            nic.nat_engine.dns_proxy = True
            for rule in layout.rules:
                nic.nat_engine.add_redirect(rule.name, self._protocol(rule.protocol), rule.host_ip, rule.host_port, rule.guest_ip, rule.guest_port)
            uart = machine.get_serial_port(0)
            uart.io_base = 0x3F8
            uart.irq = 4
            uart.path = str(layout.serial_log)
            uart.host_mode = lib.PortMode.raw_file
            uart.enabled = True
            controller = machine.add_storage_controller("SATA", lib.StorageBus.sata)
            controller.use_host_io_cache = layout.host_io_cache
            machine.save_settings()
            self.vbox.register_machine(machine)

        def make_disk() -> Any:
            disk = self.vbox.create_medium("VDI", str(layout.disk), lib.AccessMode.read_write, lib.DeviceType.hard_disk)
            self._wait(disk.create_base_storage(layout.disk_mb * 1024 * 1024, [lib.MediumVariant.standard]), operation)
            return disk

        def attach(disk: Any) -> None:
            with self._session(layout.name, lib.LockType.write) as session:
                machine = session.machine
                boot = self.vbox.open_medium(str(layout.boot_iso), lib.DeviceType.dvd, lib.AccessMode.read_only, False)
                config = self.vbox.open_medium(str(layout.config_medium), lib.DeviceType.dvd, lib.AccessMode.read_only, False)
                machine.attach_device("SATA", 0, 0, lib.DeviceType.dvd, boot)
                machine.attach_device("SATA", 1, 0, lib.DeviceType.hard_disk, disk)
                machine.attach_device("SATA", 2, 0, lib.DeviceType.dvd, config)
                for name, host_path, writable in layout.shares:
                    machine.create_shared_folder(name, host_path, writable, False, "")
                machine.save_settings()

        self._call(operation, register)
        disk = self._call(operation, make_disk)
        self._call(operation, lambda: attach(disk))

    def start(self, vm: str) -> None:
        def launch() -> None:
            machine = self.vbox.find_machine(vm)
            session = self.pyvbox.Session()
            progress = machine.launch_vm_process(session, "headless", [])
            try:
                self._wait(progress, f"start VM '{vm}'")
            finally:
                session.unlock_machine()

        self._call(f"start VM '{vm}'", launch)

    def press_power_button(self, vm: str) -> None:
        def press() -> None:
            with self._session(vm, self.lib.LockType.shared) as session:
                session.console.power_button()

        self._call(f"press the power button of VM '{vm}'", press)

    def power_off(self, vm: str) -> None:
        def pull() -> None:
            with self._session(vm, self.lib.LockType.shared) as session:
                self._wait(session.console.power_down(), f"power off VM '{vm}'")

        self._call(f"power off VM '{vm}'", pull)

    def discard_state(self, vm: str) -> None:
        def discard() -> None:
            with self._session(vm, self.lib.LockType.write) as session:
                session.machine.discard_saved_state(True)

        self._call(f"discard the saved state of VM '{vm}'", discard)

    def delete(self, vm: str) -> None:
        def unregister() -> None:
            machine = self.vbox.find_machine(vm)
            media = machine.unregister(self.lib.CleanupMode.detach_all_return_hard_disks_only)
            self._wait(machine.delete_config(list(media)), f"delete VM '{vm}'")

        self._call(f"delete VM '{vm}'", unregister)

    def close_disk(self, path: Path) -> None:
        def close() -> None:
            disk = self.vbox.open_medium(str(path), self.lib.DeviceType.hard_disk, self.lib.AccessMode.read_write, False)
            self._wait(disk.delete_storage(), f"delete disk {path}")

        self._call(f"delete disk {path}", close)

    def _hard_disk(self, path: Path) -> Any:
        return self.vbox.open_medium(str(path), self.lib.DeviceType.hard_disk, self.lib.AccessMode.read_write, False)

    def disk_size_mb(self, path: Path) -> int:
        return self._call(f"read the size of {path}", lambda: int(self._hard_disk(path).logical_size) // (1024 * 1024))

    def resize_disk(self, path: Path, size_mb: int) -> None:
        operation = f"resize disk {path}"
        self._call(operation, lambda: self._wait(self._hard_disk(path).resize(size_mb * 1024 * 1024), operation))

    def add_rule(self, vm: str, rule: NatRule, running: bool) -> None:
        def add() -> None:
            with self._session(vm, self.lib.LockType.shared if running else self.lib.LockType.write) as session:
                engine = session.machine.get_network_adapter(0).nat_engine
                engine.add_redirect(rule.name, self._protocol(rule.protocol), rule.host_ip, rule.host_port, rule.guest_ip, rule.guest_port)
                session.machine.save_settings()

        self._call(f"add NAT rule '{rule.name}' to VM '{vm}'", add)

    def remove_rule(self, vm: str, name: str, running: bool) -> None:
        def remove() -> None:
            with self._session(vm, self.lib.LockType.shared if running else self.lib.LockType.write) as session:
                session.machine.get_network_adapter(0).nat_engine.remove_redirect(name)
                session.machine.save_settings()

        self._call(f"remove NAT rule '{name}' from VM '{vm}'", remove)

    def _protocol(self, protocol: str) -> Any:
        return self.lib.NATProtocol.tcp if protocol == "tcp" else self.lib.NATProtocol.udp
