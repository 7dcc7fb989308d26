"""The Parallels Desktop driver (macOS; the Pro or Business edition, which has prlctl).

SSH (guest 22), the Docker TLS port (guest 2376) and container ports are NAT rules of
Parallels' Shared network: `prlsrvctl net set Shared --nat-tcp-add NAME,HOSTPORT,VM,GUESTPORT`.
Those rules belong to the host, not to the VM, so their names carry the VM's identity:

    pm-<machine>-<first 8 hex digits of the VM's uuid>-ssh | -docker | -tcp-8080 | -udp-53

(a forward asked for 0.0.0.0 ends in `-any`). The ssh and docker rules exist while the VM
runs and go when it stops, so a stopped machine holds no host port.

Host address, honestly: a Parallels NAT rule has no host address. As far as its
documentation and tools show, it listens on every interface of the host. So this driver
does not declare loopback-forwards, and the forward watcher (forwarding/relay.py) gives a
loopback forward's rule a port that is never published, while its own relay holds
127.0.0.1:H and [::1]:H: a bare -p answers on loopback only. The rule's unpublished port,
and the SSH and Docker rules, can still be reached from the network (SSH needs the
machine's key, Docker its client certificate); docs/drivers.md says so too. A rule asked
for 0.0.0.0 is the published port itself, as asked.

Guest architectures: an Intel Mac runs amd64 guests, a Mac with Apple Silicon arm64
guests (Parallels KB 125343: VMs of one cannot run on the other), natively; nothing is
emulated. `prlctl create` makes a VM of the host's architecture, with no option to ask for
another, so the driver reads back what it made (`prlctl list -i -j`: Hardware/cpu/type
is "arm" on Apple Silicon) and refuses a machine whose guest does not match. arm64 VMs
boot by EFI, which Parallels implies for them ("BIOS type": "efi-arm64"; there is no
--efi-boot to set), from the same CD as on Intel.

Files in the machine's folder:
    parallels/NAME.pvm   the VM bundle (settings, and the data disk harddisk.hdd)
    parallels.json       the VM's uuid, so `rm` can remove its NAT rules even without the VM
    serial.log           the guest's console for this boot (serial.log.1: the previous one)
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pymachine.arch import AMD64, ARCHES, ARM64, host_arch
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
)
from pymachine.errors import (
    CommandFailed,
    DriverError,
    DriverNotAvailable,
    MachineStateError,
    PortUnavailable,
)
from pymachine.runner import Completed, Runner

INSTALL_HINT = "Install Parallels Desktop Pro or Business edition (macOS): https://www.parallels.com/products/desktop/"
MIN_MAJOR = 11
EDITIONS = ("pro", "business")
ADAPTER_TYPES = ("virtio", "e1000", "rtl")
#: prlctl's words for a VM it does not know (exit status 255).
NOT_FOUND = "The virtual machine could not be found"
#: prlctl now and then cannot reach the Parallels service for a moment (vagrant-parallels
#: retries this): worth another try.
LOGIN_FAILED = "Login failed:"
LOGIN_ATTEMPTS = 4

#: Every word `prlctl list --output status` prints (vmstate2str in prlctl's sources,
#: OpenVZ/prlctl src/Utils.cpp, one per SDK state VMS_*), as a pymachine State.
VM_STATES: dict[str, State] = {
    "stopped": State.STOPPED,
    "starting": State.STARTING,
    "restoring": State.STARTING,  # coming back from suspended
    "running": State.RUNNING,
    "paused": State.PAUSED,
    "resetting": State.STARTING,
    "pausing": State.STOPPING,
    "suspending": State.STOPPING,
    "stopping": State.STOPPING,
    "compacting": State.STOPPED,  # its disks are being compacted; the VM is off
    "suspended": State.SAVED,
    "snapshoting": State.RUNNING,  # a snapshot of the running VM is being taken (sic)
    "continuing": State.STARTING,  # resuming from paused
    "migrating": State.RUNNING,  # runs here until the move to another host completes
    "del_snapshot": State.SAVED,  # VMS_DELETING_STATE: its saved state is being deleted
    "resuming": State.STARTING,
    "syncing": State.STOPPING,  # VMS_SUSPENDING_SYNC: the suspended memory is being written out
    "invalid": State.ERROR,  # VMS_UNKNOWN
    "reconnecting": State.RUNNING,  # the service reconnects to the running VM's process
    "mounted": State.STOPPED,  # its disks are mounted on the host (prlctl mount); the VM is off
    "unknown": State.ERROR,  # prlctl's word for a state it has no name for
}
#: Statuses in which the VM's process runs (or is on its way up or down): stop and kill
#: act on them. Not: suspended, del_snapshot and syncing (a saved state, no process),
#: compacting and mounted (off, the disks busy), stopped, invalid, unknown.
LIVE_STATUSES = frozenset(
    {
        "running", "paused", "stopping", "starting", "resuming", "restoring", "continuing", "resetting",
        "suspending", "pausing", "snapshoting", "migrating", "reconnecting",
    }
)  # fmt: skip
#: Statuses Parallels leaves by itself (a start, stop, snapshot, compaction ... under way):
#: start and disk grow wait for the VM to settle before acting, and say so if it does not.
TRANSITIONAL_STATUSES = frozenset(
    {
        "starting", "restoring", "resetting", "pausing", "suspending", "stopping", "continuing", "resuming",
        "snapshoting", "migrating", "del_snapshot", "syncing", "reconnecting", "compacting",
    }
)  # fmt: skip
#: `prlctl create --distribution` for each guest: Parallels' generic Linux on Intel, as
#: before; Debian (the guest's base) on Apple Silicon, as chef/bento's arm64 boxes do.
DISTRIBUTIONS = {AMD64: "linux", ARM64: "debian"}
#: `prlctl list -i`'s Hardware/cpu/type for an Apple Silicon VM; an Intel VM's is not "arm".
ARM_CPU_TYPE = "arm"
#: Fragments of prlctl's refusal to start a VM made on the other kind of Mac. UNVERIFIED:
#: only "an ARM-based operating system" is quoted from a user's report (vagrant-parallels#401).
WRONG_ARCH_WORDS = ("ARM-based operating system", "Apple silicon", "Intel processor")
_VERSION = re.compile(r"(\d+)\.(\d+)\.(\d+)")
_EDITION = re.compile(r'edition="([^"]*)"')


@dataclass
class ParallelsOptions(DriverOptions):
    network: str = option("Shared", "The Parallels network whose NAT carries SSH, Docker and the forwards")
    adapter_type: str = option("virtio", "The network adapter model: virtio, e1000 or rtl")
    nested_virt: bool = option(False, "Let the guest use hardware virtualization itself (--nested-virt on)")


@dataclass(frozen=True)
class NatRule:
    """One rule of the network's NAT, as `prlsrvctl net info --json` shows it."""

    name: str
    protocol: str
    source_port: int
    destination: str  # the VM's uuid (or an IP address)
    destination_port: int


class ParallelsDriver(Driver):
    """Parallels Desktop Pro/Business; its NAT rules listen on every host interface, so published loopback ports are pymachine's relays."""

    name = "parallels"
    options_class = ParallelsOptions
    features = frozenset(
        {
            Feature.RUNTIME_FORWARDS,
            Feature.STOPPED_FORWARDS,
            Feature.UDP_FORWARDS,
            Feature.ANY_HOST_ADDRESS,
            Feature.SERIAL_LOG,
            Feature.DISK_GROW,
        }
    )
    options: ParallelsOptions
    #: seconds between looks at the state while the guest shuts down
    poll_interval = 0.5
    #: seconds between retries when prlctl could not reach the Parallels service (tests set 0)
    retry_pause = 1.0
    #: seconds start and disk grow wait for a VM in a transitional status to settle
    settle_timeout = 120.0

    def __init__(self, spec: MachineSpec, options: DriverOptions, runner: Runner, client_role: str = "cli") -> None:
        super().__init__(spec, options, runner, client_role)
        self._uuid: str | None = None

    # -- paths and names -------------------------------------------------------------------

    @property
    def vm(self) -> str:
        return self.spec.name

    @property
    def destination(self) -> Path:
        return self.spec.directory / "parallels"

    @property
    def identity_file(self) -> Path:
        return self.spec.directory / "parallels.json"

    @property
    def console(self) -> Path:
        """Where Parallels writes the guest's serial console."""
        log = self.serial_log()
        assert log is not None
        return log

    def _prefix(self, uuid: str) -> str:
        return f"pm-{self.vm}-{_bare(uuid)[:8]}-"

    def rule_name(self, uuid: str, forward: PortForward) -> str:
        suffix = "-any" if forward.host_ip == "0.0.0.0" else ""
        return f"{self._prefix(uuid)}{forward.protocol}-{forward.host_port}{suffix}"

    def system_rules(self, uuid: str) -> list[NatRule]:
        prefix = self._prefix(uuid)
        return [
            NatRule(prefix + "ssh", "tcp", self.spec.ssh_port, uuid, GUEST_SSH_PORT),
            NatRule(prefix + "docker", "tcp", self.spec.docker_port, uuid, GUEST_DOCKER_PORT),
        ]

    # -- the tools ----------------------------------------------------------------------

    def _prlctl(self, *args: str, timeout: float = 120) -> Completed:
        return self._retrying(["prlctl", *args], timeout)

    def _prlsrvctl(self, *args: str, timeout: float = 60) -> Completed:
        return self._retrying(["prlsrvctl", *args], timeout)

    def _retrying(self, argv: list[str], timeout: float) -> Completed:
        attempt = 1
        while True:
            try:
                return self.runner.run(argv, timeout=timeout)
            except CommandFailed as exc:
                if LOGIN_FAILED not in exc.stderr or attempt >= LOGIN_ATTEMPTS:
                    raise
            attempt += 1
            time.sleep(self.retry_pause)

    def _status(self) -> str | None:
        """`prlctl list NAME --output status --no-header`, or None when there is no such VM."""
        try:
            out = self._prlctl("list", self.vm, "--output", "status", "--no-header", timeout=30).stdout
        except CommandFailed as exc:
            if NOT_FOUND in exc.stderr or NOT_FOUND in exc.stdout:
                return None
            raise self._explain("read the state of", exc) from None
        return out.strip().split()[0] if out.strip() else "invalid"

    def uuid(self) -> str:
        """The VM's uuid (with braces, as prlctl prints it)."""
        if self._uuid is None:
            try:
                listing = json.loads(_json_part(self._prlctl("list", "-a", "-j", timeout=30).stdout) or "[]")
            except CommandFailed as exc:
                raise self._explain("list the VMs for", exc) from None
            found = next((vm for vm in listing if vm.get("name") == self.vm), None)
            if found is None:
                raise MachineStateError(f"The Parallels VM '{self.vm}' does not exist", f"Run `pymachine rm -f {self.vm}`, then create the machine again")
            self._uuid = str(found["uuid"])
        return self._uuid

    def _saved_uuid(self) -> str | None:
        try:
            return json.loads(self.identity_file.read_text()).get("uuid") or None
        except (OSError, ValueError):
            return None

    def _rules(self) -> list[NatRule]:
        try:
            out = self._prlsrvctl("net", "info", self.options.network, "--json", timeout=30).stdout
        except CommandFailed as exc:
            raise self._explain(f"read the rules of network '{self.options.network}' for", exc) from None
        try:
            info = json.loads(_json_part(out) or "{}")
        except ValueError:
            raise DriverError(f"prlsrvctl printed no JSON for network '{self.options.network}'", "Run `prlsrvctl net info Shared --json` to see what it says") from None
        rules = []
        nat = info.get("NAT server") or {}
        for group, protocol in (("TCP rules", "tcp"), ("UDP rules", "udp")):
            for name, params in (nat.get(group) or {}).items():
                try:
                    rules.append(NatRule(name, protocol, int(params["source port"]), str(params["destination IP/VM id"]), int(params["destination port"])))
                except (KeyError, TypeError, ValueError):
                    continue  # a rule shape this driver does not know: not one of its own
        return rules

    def _add_rules(self, rules: list[NatRule]) -> None:
        if not rules:
            return
        args: list[str] = []
        for rule in rules:
            args += [f"--nat-{rule.protocol}-add", f"{rule.name},{rule.source_port},{rule.destination},{rule.destination_port}"]
        try:
            self._prlsrvctl("net", "set", self.options.network, *args)
        except CommandFailed as exc:
            if "already exists" in exc.stderr:
                raise PortUnavailable(f"Parallels already has a NAT rule named like this machine's ({_last_line(exc)})", f"Run `prlsrvctl net info {self.options.network}` to see the rules") from None
            raise self._explain("add NAT rules for", exc) from None

    def _delete_rules(self, rules: list[NatRule]) -> None:
        if not rules:
            return
        args: list[str] = []
        for rule in rules:
            args += [f"--nat-{rule.protocol}-del", rule.name]
        try:
            self._prlsrvctl("net", "set", self.options.network, *args)
        except CommandFailed as exc:
            raise self._explain("remove NAT rules of", exc) from None

    def _explain(self, what: str, exc: CommandFailed) -> DriverError:
        if NOT_FOUND in exc.stderr or NOT_FOUND in exc.stdout:
            return MachineStateError(f"The Parallels VM '{self.vm}' does not exist", f"Run `pymachine rm -f {self.vm}`, then create the machine again")
        return DriverError(f"Parallels could not {what} VM '{self.vm}': {_last_line(exc)}", f"Run `pymachine status {self.vm}`, and `prlctl list -a` for Parallels' view")

    # -- contract -------------------------------------------------------------------------

    @classmethod
    def precheck(cls, runner: Runner, options: DriverOptions, arch: str = "") -> None:
        assert isinstance(options, ParallelsOptions)
        validate_options(options)
        check_parallels(runner)

    @classmethod
    def guest_arches(cls, runner: Runner, options: DriverOptions) -> dict[str, str]:
        """The Mac's own architecture, natively: arm64 on Apple Silicon, amd64 on an Intel
        Mac (KB 125343). Parallels Desktop 20.2+ has a hidden x86_64 emulation preview on
        Apple Silicon; pymachine does not use it."""
        host = host_arch()
        return {host: NATIVE} if host in ARCHES else {}

    @classmethod
    def host_report(cls, runner: Runner) -> HostReport:
        if runner.which("prlctl") is None:
            return HostReport(False, accelerator="Parallels hypervisor", detail=INSTALL_HINT)
        try:
            version, edition = check_parallels(runner)
        except DriverNotAvailable as exc:
            return HostReport(True, "", "Parallels hypervisor", str(exc))
        return HostReport(True, version, "Parallels hypervisor", f"{edition} edition; NAT rules listen on every host interface (published loopback ports are relayed)")

    def create(self) -> None:
        validate_options(self.options)
        if self._status() is not None:
            raise MachineStateError(f"A Parallels VM named '{self.vm}' already exists", f"Run `prlctl delete {self.vm}` if it is a leftover, then create the machine again")
        self.require_folder()
        self.destination.mkdir(exist_ok=True)
        vm, spec = self.vm, self.spec
        try:
            self._prlctl("create", vm, "--distribution", DISTRIBUTIONS.get(spec.arch, "linux"), "--dst", str(self.destination), "--no-hdd")
            self._uuid = None
            self.identity_file.write_text(json.dumps({"uuid": self.uuid()}) + "\n")
            self._check_made_arch()
            self._prlctl("set", vm, "--cpus", str(spec.cpus), "--memsize", str(spec.memory_mb), "--startup-view", "headless", "--device-bootorder", "cdrom0")
            self._prlctl("set", vm, "--device-set", "cdrom0", "--image", str(spec.boot.iso), "--connect")
            self._prlctl("set", vm, "--device-add", "cdrom", "--image", str(spec.config_medium), "--connect")
            self._prlctl("set", vm, "--device-add", "hdd", "--size", str(spec.disk_mb))
            self._prlctl("set", vm, "--device-set", "net0", "--type", "shared", "--adapter-type", self.options.adapter_type)
            # The guest's console goes to a file, so `pymachine logs` works as with QEMU.
            self._prlctl("set", vm, "--device-add", "serial", "--output", str(self.console))
            if self.options.nested_virt:
                self._prlctl("set", vm, "--nested-virt", "on")
        except CommandFailed as exc:
            raise DriverError(f"Parallels could not create VM '{vm}': {_last_line(exc)}", f"Run `pymachine rm -f {vm}` to clean up, then create it again") from None

    def _check_made_arch(self) -> None:
        """Refuse, and delete, a VM Parallels made for another architecture than the guest's.

        pymachine.arch.host_arch() trusts Python, which can be wrong (an x86 Python under
        Rosetta on Apple Silicon reports x86_64); Parallels' own report is the last word."""
        try:
            listing = json.loads(_json_part(self._prlctl("list", "-i", "-j", self.vm, timeout=30).stdout) or "[]")
        except (CommandFailed, ValueError):
            return  # the architecture could not be read; start will tell
        # A list of one object per VM (as `prlctl list -a -i -j` gives); take a bare object too.
        info = listing[0] if isinstance(listing, list) and listing else listing if isinstance(listing, dict) else {}
        cpu = (info.get("Hardware") or {}).get("cpu") or {}
        made = ARM64 if cpu.get("type") == ARM_CPU_TYPE else AMD64
        if made == self.spec.arch:
            return
        try:
            self._prlctl("delete", self.vm)
        except CommandFailed:
            pass  # `pymachine rm -f` cleans up what is left
        raise DriverError(
            f"Parallels on this Mac makes {made} VMs (prlctl list -i: cpu type '{cpu.get('type', '')}'), and machine '{self.vm}' is {self.spec.arch}",
            f"Run `pymachine rm -f {self.vm}`, then `pymachine create --arch {made}`",
        )

    def _settled_status(self, action: str) -> str:
        """The VM's status once Parallels has finished what it is doing with it; a status
        no `action` can start from is refused in one line naming what to run."""
        status = self._status()
        deadline = time.monotonic() + self.settle_timeout
        while status in TRANSITIONAL_STATUSES and time.monotonic() < deadline:
            time.sleep(self.poll_interval)
            status = self._status()
        vm = self.vm
        if status is None:
            raise MachineStateError(f"The Parallels VM '{vm}' does not exist", f"Run `pymachine rm -f {vm}`, then create the machine again")
        if status in TRANSITIONAL_STATUSES:
            raise MachineStateError(
                f"Parallels is still busy with VM '{vm}' ({status}) after {self.settle_timeout:.0f}s, so pymachine cannot {action} it",
                "Wait until `prlctl list -a` shows it stopped or running, then run the command again",
            )
        if status == "mounted":
            raise MachineStateError(f"The disks of Parallels VM '{vm}' are mounted on this Mac (prlctl mount), so pymachine cannot {action} it", f"Run `prlctl umount {vm}`, then the command again")
        if status in ("invalid", "unknown"):
            raise MachineStateError(f"Parallels reports VM '{vm}' as {status} (its configuration cannot be used)", f"Open it in Parallels Desktop to see why, or run `pymachine rm -f {vm}` and create the machine again")
        return status

    def start(self) -> None:
        status = self._settled_status("start")
        if status == "paused":
            raise MachineStateError(f"Machine '{self.vm}' is paused", f"Run `prlctl resume {self.vm}`, or `pymachine restart {self.vm}`")
        if status in LIVE_STATUSES:
            raise MachineStateError(f"Machine '{self.vm}' is already running", f"Run `pymachine stop {self.vm}` first")
        uuid = self.uuid()
        self._delete_rules([r for r in self._rules() if r.name in {s.name for s in self.system_rules(uuid)}])
        # Parallels listens on every interface and does not say when a port is taken.
        for port in (self.spec.ssh_port, self.spec.docker_port):
            if not host_port_free("tcp", "0.0.0.0", port):
                raise PortUnavailable(f"Host port {port} is already in use", "pymachine will pick another port")
        self._add_rules(self.system_rules(uuid))
        self.rotate_serial_log()
        try:
            self._prlctl("start", self.vm)
        except CommandFailed as exc:
            self._drop_system_rules()
            text = _last_line(exc)
            if any(words in text for words in WRONG_ARCH_WORDS):
                runs = AMD64 if self.spec.arch == ARM64 else ARM64
                raise DriverError(
                    f"Parallels on this Mac cannot run machine '{self.vm}', an {self.spec.arch} VM: {text}",
                    f"Run `pymachine rm -f {self.vm}`, then `pymachine create --arch {runs}`",
                ) from None
            raise self._explain("start", exc) from None

    def stop(self, timeout: float) -> None:
        status = self._status()
        if status is None:
            return
        if status == "running":
            deadline = time.monotonic() + timeout
            try:
                # A graceful stop: prlctl waits for the guest, so it gets the whole timeout.
                self._prlctl("stop", self.vm, timeout=max(timeout, 1.0))
            except CommandFailed:
                pass  # the guest ignored it, or prlctl gave up: --kill decides
            while time.monotonic() < deadline and self._status() in LIVE_STATUSES:
                time.sleep(self.poll_interval)
        if self._status() in LIVE_STATUSES:
            self._kill_now()
        self._drop_system_rules()

    def kill(self) -> None:
        status = self._status()
        if status is None:
            return
        if status in LIVE_STATUSES:
            self._kill_now()
        self._drop_system_rules()

    def remove(self) -> None:
        status = self._status()
        if status is not None:
            self._check_owned()
            if status in LIVE_STATUSES:
                self._kill_now()
            try:
                self._prlctl("delete", self.vm)
            except CommandFailed as exc:
                if NOT_FOUND not in exc.stderr:
                    raise self._explain("delete", exc) from None
        uuid = self._uuid or self._saved_uuid()
        if uuid is not None:
            prefix = self._prefix(uuid)
            self._delete_rules([r for r in self._rules() if r.name.startswith(prefix)])
        self._uuid = None
        for path in (self.identity_file, self.console, self.console.with_name("serial.log.1")):
            path.unlink(missing_ok=True)
        shutil.rmtree(self.destination, ignore_errors=True)

    def _check_owned(self) -> None:
        """Refuse to act on a VM of this name that another folder made (a machine folder
        copied or renamed by hand, or the user's own VM): its bundle must be ours."""
        try:
            listing = json.loads(_json_part(self._prlctl("list", "-i", "-j", self.vm, timeout=30).stdout) or "[]")
        except (CommandFailed, ValueError):
            return  # gone meanwhile, or no answer: delete will say
        home = str(listing[0].get("Home") or "") if listing and isinstance(listing[0], dict) else ""
        if home and not inside(home, self.destination):
            raise MachineStateError(
                f"The Parallels VM '{self.vm}' is not machine '{self.vm}''s: its bundle is {home}, outside {self.destination}",
                f"Run `pymachine rm -f {self.vm}` to remove this machine's folder; that VM is left alone",
            )

    @classmethod
    def reap(cls, folder: Path, name: str, runner: Runner) -> list[str]:
        """Kill and delete the VMs whose bundles lie in this folder's parallels/ subfolder,
        and the Shared network's NAT rules named for them.

        Candidates are the VMs of `prlctl list -a -j` named like a bundle in the folder or
        like the machine, or with the uuid parallels.json kept; each is acted on by uuid,
        and only when `prlctl list -i -j` puts its Home inside the folder.
        """
        bundles = folder / "parallels"
        if not (bundles.is_dir() or (folder / "parallels.json").exists()) or runner.which("prlctl") is None:
            return []
        try:
            saved = _bare(str(json.loads((folder / "parallels.json").read_text()).get("uuid") or ""))
        except (OSError, ValueError, AttributeError):
            saved = ""
        names = {name} | {p.stem for p in bundles.glob("*.pvm")}
        listing = json.loads(_json_part(runner.run(["prlctl", "list", "-a", "-j"], timeout=30).stdout) or "[]")
        network = ParallelsOptions().network
        done = []
        for vm in listing:
            uuid, vm_name = str(vm.get("uuid") or ""), str(vm.get("name") or "")
            if not uuid or (vm_name not in names and _bare(uuid) != saved):
                continue
            info = json.loads(_json_part(runner.run(["prlctl", "list", "-i", "-j", uuid], timeout=30).stdout) or "[]")
            home = str(info[0].get("Home") or "") if info and isinstance(info[0], dict) else ""
            if not home or not inside(home, bundles):
                continue
            if vm.get("status") in LIVE_STATUSES:
                runner.run(["prlctl", "stop", uuid, "--kill"], timeout=60)
            runner.run(["prlctl", "delete", uuid], timeout=120)
            prefix = f"pm-{vm_name}-{_bare(uuid)[:8]}-"
            nat = (json.loads(_json_part(runner.run(["prlsrvctl", "net", "info", network, "--json"], timeout=30).stdout) or "{}").get("NAT server")) or {}
            args: list[str] = []
            for group, protocol in (("TCP rules", "tcp"), ("UDP rules", "udp")):
                args += [a for rule in (nat.get(group) or {}) if rule.startswith(prefix) for a in (f"--nat-{protocol}-del", rule)]
            if args:
                runner.run(["prlsrvctl", "net", "set", network, *args], timeout=60)
            done.append(f"Removed the Parallels VM '{vm_name}' ({uuid}) of machine '{name}'")
        return done

    def state(self) -> State:
        status = self._status()
        if status is None:
            return State.NOT_FOUND
        return VM_STATES.get(status, State.ERROR)

    def _data_disk(self) -> tuple[str, int]:
        """The data disk's image (hdd0) and its size in MB, from `prlctl list -i -j`."""
        try:
            listing = json.loads(_json_part(self._prlctl("list", "-i", "-j", self.vm, timeout=30).stdout) or "[]")
        except CommandFailed as exc:
            raise self._explain("read the disks of", exc) from None
        except ValueError:
            listing = []
        info = listing[0] if isinstance(listing, list) and listing else listing if isinstance(listing, dict) else {}
        disk = (info.get("Hardware") or {}).get("hdd0") or {}
        size = re.fullmatch(r"(\d+)\s*Mb", str(disk.get("size", "")).strip())
        if not disk.get("image") or size is None:
            raise DriverError(f"Parallels shows no data disk (hdd0) for VM '{self.vm}'", f"Run `prlctl list -i {self.vm}` to see its devices")
        return str(disk["image"]), int(size.group(1))

    def disk_size_mb(self) -> int:
        return self._data_disk()[1]

    def grow_disk(self, size_mb: int) -> None:
        # prl_disk_tool works on the disks of stopped VMs only.
        status = self._settled_status("grow the data disk of")
        if status != "stopped":
            raise MachineStateError(f"Parallels grows the data disk of machine '{self.vm}' only while it is stopped, and it is {status}", f"Run `pymachine stop {self.vm}` first")
        image, _ = self._data_disk()
        try:
            self._retrying(["prl_disk_tool", "resize", "--hdd", image, "--size", f"{size_mb}M"], timeout=600)
        except CommandFailed as exc:
            raise DriverError(f"Parallels could not grow the data disk of VM '{self.vm}': {_last_line(exc)}", f"Run `pymachine status {self.vm}`, and `prlctl list -i {self.vm}` for Parallels' view") from None

    def add_forward(self, forward: PortForward) -> None:
        if self._status() is None:
            raise MachineStateError(f"The Parallels VM '{self.vm}' does not exist", f"Run `pymachine rm -f {self.vm}`, then create the machine again")
        uuid = self.uuid()
        wanted = NatRule(self.rule_name(uuid, forward), forward.protocol, forward.host_port, uuid, forward.guest_port)
        rules = self._rules()
        mine = self._forward_rules(rules, uuid)
        same_key = [r for r, f in mine if f.key == forward.key]
        if same_key == [wanted]:
            return
        self._delete_rules(same_key)
        # The rules are global: another VM's rule on this port would take the traffic.
        clash = next((r for r in rules if r.protocol == forward.protocol and r.source_port == forward.host_port and r not in same_key), None)
        if clash is not None:
            raise PortUnavailable(f"Host port {forward.host_port}/{forward.protocol} is already forwarded by Parallels NAT rule '{clash.name}'", f"Run `prlsrvctl net info {self.options.network}` to see the rules")
        # A Parallels rule listens on every interface, whatever address was asked for.
        if not host_port_free(forward.protocol, "0.0.0.0", forward.host_port):
            raise PortUnavailable(f"Host port {forward.host_port}/{forward.protocol} is already in use", f"Run `pymachine ports {self.vm}` to see which forwards are blocked")
        self._add_rules([wanted])

    def remove_forward(self, forward: PortForward) -> None:
        uuid = self._uuid or self._saved_uuid()
        if uuid is None:
            if self._status() is None:
                return
            uuid = self.uuid()
        self._delete_rules([r for r, f in self._forward_rules(self._rules(), uuid) if f.key == forward.key])

    def list_forwards(self) -> list[PortForward]:
        uuid = self._uuid or self._saved_uuid()
        if uuid is None:
            if self._status() is None:
                return []
            uuid = self.uuid()
        return sorted(f for _, f in self._forward_rules(self._rules(), uuid))

    def details(self) -> dict[str, Any]:
        return {
            "vm": self.vm,
            "uuid": self._uuid or self._saved_uuid() or "",
            "bundle": str(self.destination / f"{self.vm}.pvm"),
            "network": self.options.network,
            "serial_log": str(self.console),
            "forwards_listen_on": "127.0.0.1 and ::1 through pymachine's relay; the NAT rule behind it (an unpublished port), SSH and Docker on every host interface (Parallels NAT rules have no host address)",
        }

    # -- helpers ------------------------------------------------------------------------

    def _forward_rules(self, rules: list[NatRule], uuid: str) -> list[tuple[NatRule, PortForward]]:
        """This VM's container forwards among the network's rules, with what each carries."""
        prefix = self._prefix(uuid)
        found = []
        for rule in rules:
            if not rule.name.startswith(prefix) or _bare(rule.destination) != _bare(uuid):
                continue
            match = re.fullmatch(r"(tcp|udp)-(\d+)(-any)?", rule.name[len(prefix) :])
            if match is None or match.group(1) != rule.protocol or int(match.group(2)) != rule.source_port:
                continue  # the ssh and docker rules, or one this driver did not make
            host_ip = "0.0.0.0" if match.group(3) else "127.0.0.1"
            found.append((rule, PortForward(rule.protocol, host_ip, rule.source_port, rule.destination_port)))
        return found

    def _kill_now(self) -> None:
        try:
            self._prlctl("stop", self.vm, "--kill", timeout=60)
        except CommandFailed as exc:
            if self._status() in LIVE_STATUSES:
                raise self._explain("power off", exc) from None

    def _drop_system_rules(self) -> None:
        uuid = self._uuid or self._saved_uuid()
        if uuid is None:
            return
        names = {r.name for r in self.system_rules(uuid)}
        self._delete_rules([r for r in self._rules() if r.name in names])


# -- module helpers ---------------------------------------------------------------------


def validate_options(options: ParallelsOptions) -> None:
    if options.adapter_type not in ADAPTER_TYPES:
        raise DriverError(f"Unknown network adapter model '{options.adapter_type}'", "Use -o adapter-type=virtio, e1000 or rtl")
    if not options.network or "," in options.network:
        raise DriverError(f"Invalid Parallels network name '{options.network}'", "Use -o network=Shared")


def check_parallels(runner: Runner) -> tuple[str, str]:
    """(version, edition) of a usable Parallels Desktop, or DriverNotAvailable saying why not."""
    runner.require("prlctl", INSTALL_HINT)
    runner.require("prlsrvctl", INSTALL_HINT)
    try:
        out = runner.run(["prlctl", "--version"], timeout=10).stdout
    except CommandFailed as exc:
        raise DriverNotAvailable(f"`prlctl --version` failed: {_last_line(exc)}", INSTALL_HINT) from None
    found = _VERSION.search(out)
    if found is None:
        raise DriverNotAvailable(f"`prlctl --version` printed no version: {out.strip()[:80]}", INSTALL_HINT)
    version = found.group(0)
    if int(found.group(1)) < MIN_MAJOR:
        raise DriverNotAvailable(f"Parallels Desktop {version} is too old: pymachine needs {MIN_MAJOR} or newer", "Update Parallels Desktop, then run `pymachine doctor`")
    try:
        license_text = runner.run(["prlsrvctl", "info", "--license"], timeout=10).stdout
    except CommandFailed as exc:
        raise DriverNotAvailable(f"`prlsrvctl info --license` failed: {_last_line(exc)}", "Start Parallels Desktop once, then run `pymachine doctor`") from None
    edition_match = _EDITION.search(license_text)
    if edition_match is None:
        raise DriverNotAvailable("Parallels Desktop reports no license edition", "Activate a Pro or Business license in Parallels Desktop, then run `pymachine doctor`")
    edition = edition_match.group(1)
    if edition.lower() not in EDITIONS:
        raise DriverNotAvailable(
            f"Parallels Desktop {edition} edition cannot be driven from the command line (prlctl needs Pro or Business)",
            "Upgrade to Parallels Desktop Pro or Business, or use `pymachine create -d qemu`",
        )
    return version, edition


def _bare(uuid: str) -> str:
    return uuid.strip().strip("{}").lower()


def _json_part(text: str) -> str:
    """The JSON in prlctl's output, without anything printed around it."""
    found = re.search(r"(\{.*\}|\[.*\])", text, re.S)
    return found.group(1) if found else ""


def _last_line(exc: CommandFailed) -> str:
    lines = (exc.stderr.strip() or exc.stdout.strip()).splitlines()
    return lines[-1] if lines else f"exit status {exc.returncode}"
