"""The VirtualBox driver: NAT only, so no host-only adapter and no 192.168.56.0/21 limits.

SSH (guest 22) and the Docker TLS port (guest 2376) are NAT rules named `ssh` and
`docker` on 127.0.0.1:spec.ssh_port and 127.0.0.1:spec.docker_port; container ports
are rules named `pymachine-PROTO-HOSTPORT`, added with `controlvm natpf1` while the VM
runs and `modifyvm --natpf1` while it is off.

Files in the machine's folder:
    virtualbox/NAME/  the VM's settings and logs (VirtualBox's own folder)
    data.vdi          the data disk (the guest formats it on first boot)
    serial.log        the guest's console for this boot (serial.log.1: the previous one)

Two backends do the work: the VirtualBox API through pyvbox, when the SDK's vboxapi
imports, and VBoxManage through the Runner otherwise (see backend.py).

Guest architectures: VirtualBox virtualizes the host's own architecture only. On an
x86-64 host the guest is amd64, an x86 platform VM; on an arm64 host (Apple Silicon,
VirtualBox 7.1 or newer) it is arm64, an ARM platform VM (see vboxmanage.py for what
each is made of). Nothing is emulated. ARM VMs are made through VBoxManage only: pyvbox
speaks the 6.1 API, which has no platforms.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from pymachine.arch import AMD64, ARM64, host_arch
from pymachine.driver import (
    GUEST_DOCKER_PORT,
    GUEST_SSH_PORT,
    NATIVE,
    Driver,
    DriverOptions,
    Feature,
    HostReport,
    MachineSpec,
    PortForward,
    State,
    host_port_free,
    inside,
    option,
    share_tag,
)
from pymachine.errors import (
    CommandFailed,
    DriverError,
    DriverNotAvailable,
    MachineError,
    MachineStateError,
    PortUnavailable,
)
from pymachine.runner import Runner

from .api import NIC_TYPES, ApiBackend, ApiUnavailable, connect
from .backend import Backend, NatRule, VBoxFailure, VMInfo, VMLayout
from .vboxmanage import VBoxManageBackend

T = TypeVar("T")

INSTALL_HINT = "Install VirtualBox 5 or newer from https://www.virtualbox.org/wiki/Downloads"
MIN_MAJOR = 5
#: The first VirtualBox with the ARM platform (`createvm --platform-architecture=arm`); on
#: Apple Silicon, 7.0 was a developer preview that pymachine does not drive.
ARM_MIN_VERSION = (7, 1)
#: minikube's limit: a healthy VBoxManage answers --version at once.
VERSION_TIMEOUT = 4.0
SSH_RULE = "ssh"
DOCKER_RULE = "docker"
#: Rules pymachine adds for containers; others (made by hand) are left alone.
RULE_PREFIX = "pymachine-"
BACKENDS = ("auto", "api", "vboxmanage")
#: The NICs the ARM platform's VM configuration knows (VirtualBox's ConsoleImplConfigArmV8:
#: the e1000 family and virtio-net); the PCnet models are x86 only.
ARM_NIC_TYPES = ("virtio", "82540EM", "82543GC", "82545EM")
#: -o nic-type=auto: docker-machine's adapter on x86, virtio-net on ARM.
DEFAULT_NIC_TYPES = {AMD64: "82540EM", ARM64: "virtio"}

#: Every VMState that `showvminfo --machinereadable` prints, as a pymachine State.
VM_STATES: dict[str, State] = {
    "poweroff": State.STOPPED,
    "aborted": State.STOPPED,  # the VM process died; the VM is off
    "teleported": State.STOPPED,  # moved to another host; off here
    "saved": State.SAVED,
    "aborted-saved": State.SAVED,
    "running": State.RUNNING,
    "paused": State.PAUSED,
    "gurumeditation": State.ERROR,
    "teleporting": State.RUNNING,  # still runs here until the move completes
    "livesnapshotting": State.RUNNING,
    "onlinesnapshotting": State.RUNNING,
    "deletingsnapshotlive": State.RUNNING,
    "teleportingpausedvm": State.PAUSED,
    "deletingsnapshotlivepaused": State.PAUSED,
    "starting": State.STARTING,
    "restoring": State.STARTING,  # coming back from a saved state
    "teleportingin": State.STARTING,
    "stopping": State.STOPPING,
    "saving": State.STOPPING,
    # Off, while VirtualBox works on its settings or snapshots.
    "restoringsnapshot": State.STOPPED,
    "deletingsnapshot": State.STOPPED,
    "settingup": State.STOPPED,
    "snapshotting": State.STOPPED,
}
#: States in which a VM process holds the machine's session (controlvm, not modifyvm).
LIVE_STATES = frozenset(
    {
        "running",
        "paused",
        "gurumeditation",
        "teleporting",
        "livesnapshotting",
        "onlinesnapshotting",
        "deletingsnapshotlive",
        "teleportingpausedvm",
        "deletingsnapshotlivepaused",
        "starting",
        "restoring",
        "teleportingin",
        "stopping",
        "saving",
    }
)
SAVED_STATES = frozenset({"saved", "aborted-saved"})
_VERSION = re.compile(r"^(\d+)\.(\d+)\.(\d+)\S*$")


@dataclass
class VirtualBoxOptions(DriverOptions):
    backend: str = option("auto", "auto (the VirtualBox API through pyvbox when the SDK's vboxapi imports, VirtualBox is 6.x and the guest is amd64, else VBoxManage), api or vboxmanage")
    nic_type: str = option(
        "auto",
        "The NAT adapter's model: auto (82540EM, docker-machine's choice, for amd64 guests; virtio for arm64), "
        "virtio, 82540EM, 82543GC, 82545EM, Am79C970A or Am79C973 (the last two are x86 only)",
    )
    host_io_cache: bool = option(True, "Let the host cache the disk controller's I/O (docker-machine's --hostiocache on)")
    vboxmanage: str = option("", "The VBoxManage program to run (default: VBoxManage on PATH)")


class VirtualBoxDriver(Driver):
    """VirtualBox with NAT only: SSH, Docker and container ports are NAT rules on the host."""

    name = "virtualbox"
    options_class = VirtualBoxOptions
    features = frozenset(
        {
            Feature.RUNTIME_FORWARDS,
            Feature.STOPPED_FORWARDS,
            Feature.UDP_FORWARDS,
            Feature.ANY_HOST_ADDRESS,
            Feature.LOOPBACK_FORWARDS,
            Feature.SERIAL_LOG,
            Feature.SHARED_FOLDERS,
            Feature.DISK_GROW,
        }
    )
    options: VirtualBoxOptions
    #: seconds between retries of VirtualBox's transient refusals (tests set 0)
    retry_pause = 0.25
    #: seconds between looks at the state while the guest shuts down
    poll_interval = 0.5

    def __init__(self, spec: MachineSpec, options: DriverOptions, runner: Runner, client_role: str = "cli", *, api: Any = None) -> None:
        """`api` stands in for the pyvbox module (tests pass a fake); None means `import virtualbox`."""
        super().__init__(spec, options, runner, client_role)
        self._api = api
        self._backend: Backend | None = None
        self._backend_reason = ""

    @classmethod
    def arch_features(cls, arch: str) -> frozenset[Feature]:
        """No shared folders for arm64 guests: VirtualBox mounts them with its vboxsf
        module, which Debian's arm64 kernel does not build."""
        if arch == "arm64":
            return cls.features - {Feature.SHARED_FOLDERS}
        return cls.features

    # -- paths and names ----------------------------------------------------------------

    @property
    def vm(self) -> str:
        return self.spec.name

    @property
    def base_folder(self) -> Path:
        return self.spec.directory / "virtualbox"

    @property
    def disk(self) -> Path:
        return self.spec.data_disk_stem.with_suffix(".vdi")

    @property
    def console(self) -> Path:
        """Where VirtualBox writes the guest's serial console."""
        log = self.serial_log()
        assert log is not None
        return log

    @staticmethod
    def rule_name(forward: PortForward) -> str:
        """One rule per host port and protocol, as one forward per PortForward.key."""
        return f"{RULE_PREFIX}{forward.protocol}-{forward.host_port}"

    def system_rules(self) -> list[NatRule]:
        return [
            NatRule(SSH_RULE, "tcp", "127.0.0.1", self.spec.ssh_port, GUEST_SSH_PORT),
            NatRule(DOCKER_RULE, "tcp", "127.0.0.1", self.spec.docker_port, GUEST_DOCKER_PORT),
        ]

    # -- backend ------------------------------------------------------------------------

    @property
    def backend(self) -> Backend:
        """The backend in use, chosen on first use (see VirtualBoxOptions.backend)."""
        if self._backend is None:
            self._backend, self._backend_reason = choose_backend(self.options, self.runner, self._api, self.retry_pause, self.spec.arch)
        return self._backend

    def _do(self, what: str, action: Callable[[], T]) -> T:
        try:
            return action()
        except VBoxFailure as exc:
            raise self._explain(what, exc) from None

    def _explain(self, what: str, exc: VBoxFailure) -> MachineError:
        vm = self.vm
        if exc.locked:
            return MachineStateError(
                f"VirtualBox VM '{vm}' is locked by another session, so pymachine could not {what} it ({exc.text})",
                f"Close the VM in the VirtualBox window if it is open there, then run `pymachine status {vm}` and try again",
            )
        if exc.not_found:
            return MachineStateError(f"The VirtualBox VM '{vm}' does not exist", f"Run `pymachine rm -f {vm}`, then create the machine again")
        if exc.wrong_platform:
            # Python's view of the host can be wrong (an x86 Python under Rosetta on Apple
            # Silicon says x86_64); VirtualBox's own refusal is the last word.
            runs = AMD64 if self.spec.arch == ARM64 else ARM64
            return DriverError(
                f"VirtualBox on this host cannot {what} VM '{vm}', an {self.spec.arch} machine: {exc.text}",
                f"Run `pymachine rm -f {vm}`, then `pymachine create --arch {runs}`",
            )
        if what == "create":
            return DriverError(f"VirtualBox could not create VM '{vm}': {exc.text}", f"Run `pymachine rm -f {vm}` to clean up, then create it again")
        return DriverError(f"VirtualBox could not {what} VM '{vm}': {exc.text}", f"Run `pymachine status {vm}`, and `VBoxManage showvminfo {vm}` for VirtualBox's view")

    def _info(self) -> VMInfo | None:
        info = self._do("read the state of", lambda: self.backend.info(self.vm))
        if info is not None and info.settings_file and not inside(info.settings_file, self.base_folder):
            # A VM of this name that another folder made (a machine folder renamed or
            # copied by hand, or the user's own VM): never act on it.
            raise MachineStateError(
                f"The VirtualBox VM '{self.vm}' is not machine '{self.vm}''s: its settings are in {info.settings_file}, outside {self.base_folder}",
                f"Run `pymachine rm -f {self.vm}` to remove this machine's folder; that VM is left alone",
            )
        return info

    def _require_info(self) -> VMInfo:
        info = self._info()
        if info is None:
            raise MachineStateError(f"The VirtualBox VM '{self.vm}' does not exist", f"Run `pymachine rm -f {self.vm}`, then create the machine again")
        return info

    # -- contract -----------------------------------------------------------------------

    @classmethod
    def precheck(cls, runner: Runner, options: DriverOptions, arch: str = "") -> None:
        assert isinstance(options, VirtualBoxOptions)
        validate_options(options)
        if options.backend != "api":
            version = check_vboxmanage(runner, options.vboxmanage or "VBoxManage")
            if host_arch() == ARM64 and not runs_arm(version):
                raise DriverNotAvailable(
                    f"VirtualBox {version} cannot run VMs on this arm64 host: the ARM platform came with VirtualBox 7.1",
                    "Install VirtualBox 7.1 or newer for Apple Silicon, or use `pymachine create -d qemu`",
                )
        else:
            try:
                connect()
            except ApiUnavailable as exc:
                raise DriverNotAvailable(f"The VirtualBox API cannot be used here: {exc}", "Install the VirtualBox SDK's vboxapi, or pass -o backend=vboxmanage") from None

    @classmethod
    def guest_arches(cls, runner: Runner, options: DriverOptions) -> dict[str, str]:
        """The host's own architecture, natively; nothing emulated.

        Decided by the host's architecture (pymachine.arch.host_arch) and, on an arm64
        host, by `VBoxManage --version`: only 7.1 and newer have the ARM platform.
        `list hostinfo` and `list systemproperties` are not consulted: how they show the
        host's platform is not confirmed, and VirtualBox refuses a VM of the wrong platform
        at startvm anyway (the driver then names `--arch`).
        """
        assert isinstance(options, VirtualBoxOptions)
        host = host_arch()
        if host == ARM64:
            program = options.vboxmanage or "VBoxManage"
            try:
                version = check_vboxmanage(runner, program)
            except DriverNotAvailable:
                return {ARM64: NATIVE}  # precheck has said what is wrong
            return {ARM64: NATIVE} if runs_arm(version) else {}
        return {AMD64: NATIVE} if host == AMD64 else {}

    @classmethod
    def host_report(cls, runner: Runner) -> HostReport:
        accelerator = _accelerator()
        if runner.which("VBoxManage") is None:
            return HostReport(False, accelerator=accelerator, detail=INSTALL_HINT)
        try:
            version = check_vboxmanage(runner, "VBoxManage")
        except DriverNotAvailable as exc:
            return HostReport(True, "", accelerator, str(exc))
        from importlib.util import find_spec

        if find_spec("virtualbox") is None:
            backend = "backend: VBoxManage (pyvbox, the `virtualbox` package, is not installed)"
        else:
            backend = "backend: the API when the SDK's vboxapi imports and VirtualBox is 6.x, else VBoxManage"
        return HostReport(True, version, accelerator, backend)

    def create(self) -> None:
        validate_options(self.options)
        nic_type = nic_type_for(self.options, self.spec.arch)
        # VirtualBox makes --basefolder and its parents: not in a folder `rm -f` took.
        self.require_folder()
        if self._info() is not None:
            raise MachineStateError(
                f"A VirtualBox VM named '{self.vm}' already exists",
                f"Run `VBoxManage unregistervm {self.vm} --delete` if it is a leftover, then create the machine again",
            )
        layout = VMLayout(
            name=self.vm,
            base_folder=self.base_folder,
            cpus=self.spec.cpus,
            memory_mb=self.spec.memory_mb,
            boot_iso=self.spec.boot.iso,
            config_medium=self.spec.config_medium,
            disk=self.disk,
            disk_mb=self.spec.disk_mb,
            serial_log=self.console,
            nic_type=nic_type,
            host_io_cache=self.options.host_io_cache,
            rules=self.system_rules(),
            shares=[(share_tag(i), mount.host, mount.writable) for i, mount in enumerate(self.spec.mounts)],
            arch=self.spec.arch,
        )
        self._do("create", lambda: self.backend.create(layout))

    def start(self) -> None:
        info = self._require_info()
        if info.state in LIVE_STATES:
            raise MachineStateError(f"Machine '{self.vm}' is already running", f"Run `pymachine stop {self.vm}` first")
        self._sync_system_rules(info)
        # VirtualBox starts the VM even when a forward's host port is taken, and the
        # forward then silently does nothing: check the two that matter first.
        for port in (self.spec.ssh_port, self.spec.docker_port):
            if not host_port_free("tcp", "127.0.0.1", port):
                raise PortUnavailable(f"Host port {port} is already in use", "pymachine will pick another port")
        self.rotate_serial_log()
        self._do("start", lambda: self.backend.start(self.vm))

    def stop(self, timeout: float) -> None:
        info = self._info()
        if info is None or info.state not in LIVE_STATES:
            return
        if info.state == "running":
            deadline = time.monotonic() + timeout
            try:
                self.backend.press_power_button(self.vm)
            except VBoxFailure:
                pass  # gone off meanwhile, or refusing ACPI: powering off decides
            while time.monotonic() < deadline:
                if self._vm_state() not in LIVE_STATES:
                    return
                time.sleep(self.poll_interval)
        self._power_off()

    def kill(self) -> None:
        info = self._info()
        if info is None:
            return
        if info.state in LIVE_STATES:
            self._power_off()
        elif info.state in SAVED_STATES:
            self._do("discard the saved state of", lambda: self.backend.discard_state(self.vm))

    def remove(self) -> None:
        info = self._info()
        if info is not None:
            if info.state in LIVE_STATES:
                self._power_off()
            try:
                self.backend.delete(self.vm)
            except VBoxFailure as exc:
                if not exc.not_found:
                    raise self._explain("delete", exc) from None
        if self.disk.exists():
            # A create that stopped before attaching the disk leaves it known to
            # VirtualBox but to no VM: unregistervm does not delete it.
            try:
                self.backend.close_disk(self.disk)
            except VBoxFailure:
                pass
            self.disk.unlink(missing_ok=True)
        for log in (self.console, self.console.with_name("serial.log.1")):
            log.unlink(missing_ok=True)
        shutil.rmtree(self.base_folder, ignore_errors=True)

    @classmethod
    def reap(cls, folder: Path, name: str, runner: Runner) -> list[str]:
        """Power off and delete the VMs registered from this folder's virtualbox/ subfolder.

        The VMs are found in `VBoxManage list vms` by the names the folder holds settings
        for (virtualbox/VM/VM.vbox) and by the machine's name, and acted on by UUID only
        when VirtualBox's own CfgFile for them lies inside the folder.
        """
        base = folder / "virtualbox"
        if not base.is_dir() or runner.which("VBoxManage") is None:
            return []
        names = {name} | {p.stem for p in base.glob("*/*.vbox")}
        backend = VBoxManageBackend(runner)
        done = []
        for vm_name, uuid in registered_vms(backend):
            if vm_name not in names:
                continue
            info = backend.info(uuid)
            if info is None or not info.settings_file or not inside(info.settings_file, base):
                continue
            if info.state in LIVE_STATES:
                backend.power_off(uuid)
            backend.delete(uuid)
            done.append(f"Removed the VirtualBox VM '{vm_name}' ({uuid}) of machine '{name}'")
        disk = folder / "data.vdi"
        if disk.exists():
            with contextlib.suppress(VBoxFailure):
                backend.close_disk(disk)
        return done

    def state(self) -> State:
        info = self._info()
        if info is None:
            return State.NOT_FOUND
        return VM_STATES.get(info.state, State.ERROR)

    def disk_size_mb(self) -> int:
        return self._do("read the data disk size of", lambda: self.backend.disk_size_mb(self.disk))

    def grow_disk(self, size_mb: int) -> None:
        # VirtualBox write-locks the disks of a running VM: it must be powered off.
        if self._require_info().state in LIVE_STATES:
            raise MachineStateError(f"VirtualBox grows the data disk of machine '{self.vm}' only while it is powered off", f"Run `pymachine stop {self.vm}` first")
        self._do("grow the data disk of", lambda: self.backend.resize_disk(self.disk, size_mb))

    def add_forward(self, forward: PortForward) -> None:
        info = self._require_info()
        running = info.state in LIVE_STATES
        wanted = NatRule(self.rule_name(forward), forward.protocol, _rule_host_ip(forward.host_ip), forward.host_port, forward.guest_port)
        current = {rule.name: rule for rule in info.rules}
        if current.get(wanted.name) == wanted:
            return
        if wanted.name in current:
            # Same host port, another guest port or address: the old rule goes first.
            self._do("change a forward of", lambda: self.backend.remove_rule(self.vm, wanted.name, running))
        clash = next((r for r in info.rules if r.name != wanted.name and r.protocol == forward.protocol and r.host_port == forward.host_port), None)
        if clash is not None:
            raise PortUnavailable(
                f"Host port {forward.host_port}/{forward.protocol} is already forwarded to machine '{self.vm}' by its rule '{clash.name}'",
                f"Run `pymachine ports {self.vm}` to see its forwards",
            )
        # VirtualBox does not report a busy host port: a live rule just stays deaf.
        if running and not host_port_free(forward.protocol, forward.host_ip, forward.host_port):
            raise PortUnavailable(f"Host port {forward.host_ip}:{forward.host_port}/{forward.protocol} is already in use", f"Run `pymachine ports {self.vm}` to see which forwards are blocked")
        try:
            self.backend.add_rule(self.vm, wanted, running)
        except VBoxFailure as exc:
            if "A NAT rule for this host port and this host IP already exists" in exc.text:
                raise PortUnavailable(f"Host port {forward.host_ip}:{forward.host_port}/{forward.protocol} already has a rule in VM '{self.vm}'", f"Run `pymachine ports {self.vm}` to see its forwards") from None
            raise self._explain(f"add forward {forward} to", exc) from None

    def remove_forward(self, forward: PortForward) -> None:
        info = self._info()
        name = self.rule_name(forward)
        if info is None or all(rule.name != name for rule in info.rules):
            return
        try:
            self.backend.remove_rule(self.vm, name, info.state in LIVE_STATES)
        except VBoxFailure as exc:
            after = self._info()
            if after is None or all(rule.name != name for rule in after.rules):
                return  # removed meanwhile (by the watcher, or by hand)
            raise self._explain(f"remove forward {forward} from", exc) from None

    def list_forwards(self) -> list[PortForward]:
        info = self._info()
        if info is None:
            return []
        return sorted(_forward_of(rule) for rule in info.rules if rule.name.startswith(RULE_PREFIX))

    def details(self) -> dict[str, Any]:
        try:
            backend = self.backend.name
        except MachineError as exc:
            backend = f"unavailable: {exc}"
        return {
            "backend": backend,
            "backend_reason": self._backend_reason,
            "platform": "ARM" if self.spec.arch == ARM64 else "x86",
            "vm": self.vm,
            "vm_folder": str(self.base_folder / self.vm),
            "disk": str(self.disk),
            "serial_log": str(self.console),
        }

    # -- helpers ------------------------------------------------------------------------

    def _vm_state(self) -> str:
        info = self._info()
        return info.state if info is not None else "notfound"

    def _power_off(self) -> None:
        try:
            self.backend.power_off(self.vm)
        except VBoxFailure as exc:
            if self._vm_state() in LIVE_STATES:
                raise self._explain("power off", exc) from None

    def _sync_system_rules(self, info: VMInfo) -> None:
        """Move the ssh and docker rules to the spec's ports (the core may have moved them)."""
        current = {rule.name: rule for rule in info.rules}
        for rule in self.system_rules():
            if current.get(rule.name) == rule:
                continue
            if rule.name in current:
                self._do("move a forward of", partial(self.backend.remove_rule, self.vm, rule.name, False))
            self._do("add a forward to", partial(self.backend.add_rule, self.vm, rule, False))


# -- module helpers ---------------------------------------------------------------------


_LISTED_VM = re.compile(r'^"(.*)" \{([0-9a-fA-F-]+)\}$')


def registered_vms(backend: VBoxManageBackend) -> list[tuple[str, str]]:
    """(name, uuid) of every VM `VBoxManage list vms` shows."""
    out = backend.run("list", "vms", timeout=30).stdout
    return [(m.group(1), m.group(2)) for m in map(_LISTED_VM.match, out.splitlines()) if m]


def validate_options(options: VirtualBoxOptions) -> None:
    if options.backend not in BACKENDS:
        raise DriverError(f"Unknown VirtualBox backend '{options.backend}'", "Use -o backend=auto, api or vboxmanage")
    if options.nic_type != "auto" and options.nic_type not in NIC_TYPES:
        raise DriverError(f"Unknown network adapter model '{options.nic_type}'", f"Use -o nic-type=NAME, NAME one of auto, {', '.join(NIC_TYPES)}")


def nic_type_for(options: VirtualBoxOptions, arch: str) -> str:
    """The NAT adapter's model for a guest of `arch`; the ARM platform has no PCnet."""
    if options.nic_type == "auto":
        return DEFAULT_NIC_TYPES[arch]
    if arch == ARM64 and options.nic_type not in ARM_NIC_TYPES:
        raise DriverError(
            f"VirtualBox's ARM platform has no {options.nic_type} network adapter (it has {', '.join(ARM_NIC_TYPES)})",
            "Use -o nic-type=virtio, or leave -o nic-type out",
        )
    return options.nic_type


def runs_arm(version: str) -> bool:
    """True if VirtualBox `version` ("7.1.6r167084") has the ARM platform."""
    found = re.match(r"(\d+)\.(\d+)", version)
    return found is not None and (int(found.group(1)), int(found.group(2))) >= ARM_MIN_VERSION


def choose_backend(options: VirtualBoxOptions, runner: Runner, api: Any, retry_pause: float, arch: str = AMD64) -> tuple[Backend, str]:
    """The backend the options ask for, and why it was chosen."""
    program = options.vboxmanage or "VBoxManage"
    if options.backend == "vboxmanage":
        return VBoxManageBackend(runner, program, retry_pause), "asked for with -o backend=vboxmanage"
    if arch == ARM64:
        # pyvbox was generated against the 6.1 API: no IPlatform, so no ARM VMs.
        if options.backend == "api":
            raise DriverError(
                "The VirtualBox API backend cannot make arm64 VMs: pyvbox speaks the VirtualBox 6.1 API, which has no ARM platform",
                "Pass -o backend=vboxmanage",
            )
        return VBoxManageBackend(runner, program, retry_pause), "VBoxManage, because pyvbox speaks the VirtualBox 6.1 API, which has no ARM platform for this arm64 guest"
    try:
        pyvbox, vbox = connect(api)
    except ApiUnavailable as exc:
        if options.backend == "api":
            raise DriverNotAvailable(f"The VirtualBox API cannot be used here: {exc}", "Install the VirtualBox SDK's vboxapi, or pass -o backend=vboxmanage") from None
        return VBoxManageBackend(runner, program, retry_pause), f"VBoxManage, because {exc}"
    reason = "asked for with -o backend=api" if options.backend == "api" else "the VirtualBox SDK's vboxapi imports"
    return ApiBackend(pyvbox, vbox, retry_pause), reason


def check_vboxmanage(runner: Runner, program: str) -> str:
    """VirtualBox's version from `VBoxManage --version`, or DriverNotAvailable saying what is wrong."""
    runner.require(program, INSTALL_HINT)
    try:
        done = runner.run([program, "--version"], check=False, timeout=VERSION_TIMEOUT)
    except CommandFailed:
        raise DriverNotAvailable(
            f"`{program} --version` did not answer within {VERSION_TIMEOUT:g}s",
            "Check VirtualBox's service with `VBoxManage list vms`, or restart VirtualBox",
        ) from None
    lines = [line.strip() for line in (done.stdout + "\n" + done.stderr).splitlines() if line.strip()]
    versions = [line for line in lines if _VERSION.match(line)]
    if done.returncode != 0 or not versions:
        raise DriverNotAvailable(f"`{program} --version` failed: {lines[-1] if lines else f'exit status {done.returncode}'}", INSTALL_HINT)
    # Warnings beside the version (no kernel driver, ...) mean VirtualBox cannot run VMs.
    others = [line for line in lines if line not in versions]
    if others:
        raise DriverNotAvailable(f"VirtualBox is installed but not healthy: {others[0]}", "Fix what it says (on Linux often `sudo /sbin/vboxconfig`), then run `pymachine doctor`")
    version = versions[-1]
    major = _VERSION.match(version)
    assert major is not None
    if int(major.group(1)) < MIN_MAJOR:
        raise DriverNotAvailable(f"VirtualBox {version} is too old: pymachine needs {MIN_MAJOR} or newer", INSTALL_HINT)
    return version


def _rule_host_ip(host_ip: str) -> str:
    # VirtualBox's own way to say "every interface" is an empty host address.
    return "" if host_ip == "0.0.0.0" else host_ip


def _forward_of(rule: NatRule) -> PortForward:
    return PortForward(rule.protocol, rule.host_ip or "0.0.0.0", rule.host_port, rule.guest_port)


def _accelerator() -> str:
    """What VirtualBox will use: it needs VT-x or AMD-V (6.1 and later refuse to run without),
    or on an arm64 host the CPU's own virtualization (Hypervisor.framework on macOS)."""
    if host_arch() == ARM64:
        return "ARM virtualization (VirtualBox 7.1+ ARM platform)"
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "VT-x/AMD-V"
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    if "vmx" in flags:
        return "VT-x"
    if "svm" in flags:
        return "AMD-V"
    return "none (the CPU shows no vmx/svm flag)"
