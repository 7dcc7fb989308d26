"""The driver contract: what every hypervisor backend must do, and how drivers are found.

A driver manages one VM for one machine. It never prints, never talks SSH, and calls
every external program through the Runner it is given. The core (pymachine.machine)
decides *what* happens; a driver only knows *how* on its hypervisor.

What every driver does alike lives here too: the guest's SSH and Docker ports and the
host endpoints that forward to them, and the serial log kept from the previous boot.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
import functools
import os
import socket
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pymachine.errors import DriverError, MachineError, MachineRemoved
from pymachine.runner import Runner

ENTRY_POINT_GROUP = "pymachine.drivers"
#: The guest's SSH server and Docker's TLS port, the same in every guest.
GUEST_SSH_PORT = 22
GUEST_DOCKER_PORT = 2376
#: Where every driver forwards the guest's SSH and Docker ports on the host.
LOOPBACK = "127.0.0.1"
#: How a driver runs a guest architecture (Driver.guest_arches).
NATIVE = "native"
EMULATED = "emulated"


class State(str, enum.Enum):
    """A VM's state as its hypervisor reports it (never guessed over SSH)."""

    RUNNING = "Running"
    STARTING = "Starting"
    STOPPING = "Stopping"
    STOPPED = "Stopped"
    PAUSED = "Paused"
    SAVED = "Saved"
    ERROR = "Error"
    NOT_FOUND = "NotFound"

    def __str__(self) -> str:
        return self.value


class Feature(str, enum.Enum):
    """Optional abilities a driver declares up front."""

    #: forwards can be added and removed while the VM runs
    RUNTIME_FORWARDS = "runtime-forwards"
    #: UDP forwards, not only TCP
    UDP_FORWARDS = "udp-forwards"
    #: a forward may bind all host interfaces (0.0.0.0), not only loopback
    ANY_HOST_ADDRESS = "any-host-address"
    #: the hypervisor can bind a forward to 127.0.0.1 alone; without it, the hypervisor's
    #: side gets an unpublished port and pymachine's relay holds 127.0.0.1 (forwarding/relay.py)
    LOOPBACK_FORWARDS = "loopback-forwards"
    #: the guest's serial console is kept in a log file (`pymachine logs`)
    SERIAL_LOG = "serial-log"
    #: boots the kernel and initrd directly, skipping the ISO's boot loader
    DIRECT_KERNEL_BOOT = "direct-kernel-boot"
    #: forwards can be changed while the VM is stopped (they persist in its config)
    STOPPED_FORWARDS = "stopped-forwards"
    #: host folders can be shared into the guest (`create --mount`)
    SHARED_FOLDERS = "shared-folders"
    #: the data disk can be grown while the VM is stopped (`pymachine disk grow`)
    DISK_GROW = "disk-grow"
    #: the data disk can be grown while the VM runs, too
    ONLINE_DISK_GROW = "online-disk-grow"
    #: the hypervisor's NAT takes frames far larger than Ethernet's (QEMU's slirp does): the
    #: guest's NIC and Docker's networks run at LARGE_FRAME_MTU, and the guest raises the
    #: MSS in the NAT's SYNs, so TCP through a forward moves 64 KiB per packet, not 1460 bytes
    LARGE_FRAMES = "large-frames"


#: The guest's MTU under Feature.LARGE_FRAMES: the largest an IPv4 packet can be, less a
#: margin, as passt and gvisor-tap-vsock give their guests.
LARGE_FRAME_MTU = 65520


@dataclass(frozen=True, order=True)
class PortForward:
    """One host port carried to one guest port."""

    protocol: str  # "tcp" or "udp"
    host_ip: str  # "127.0.0.1", "0.0.0.0", or "::1" (asked of the watcher's relay, never of a hypervisor)
    host_port: int
    guest_port: int

    def __post_init__(self) -> None:
        if self.protocol not in ("tcp", "udp"):
            raise ValueError(f"protocol must be tcp or udp, not {self.protocol!r}")
        for port in (self.host_port, self.guest_port):
            if not 1 <= port <= 65535:
                raise ValueError(f"port out of range: {port}")

    @property
    def key(self) -> tuple[str, int]:
        """Two forwards with the same key cannot coexist on one host."""
        return (self.protocol, self.host_port)

    def __str__(self) -> str:
        return f"{self.host_ip}:{self.host_port}->{self.guest_port}/{self.protocol}"


def host_port_free(protocol: str, host_ip: str, port: int) -> bool:
    """True if this process could bind host_ip:port now, as a new forward will need to.

    Hypervisors that do not report a busy port (VirtualBox, Parallels) are probed with
    this before a rule is added. A TCP port in TIME_WAIT counts as free: the hypervisors
    bind their forwards with SO_REUSEADDR.
    """
    kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as sock:
        if protocol == "tcp":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host_ip or "0.0.0.0", port))
        except OSError:
            return False
    return True


@dataclass(frozen=True)
class Mount:
    """One host folder, seen in the guest at `guest`."""

    host: str
    guest: str
    writable: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {"host": self.host, "guest": self.guest, "writable": self.writable}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Mount:
        return cls(str(data["host"]), str(data["guest"]), bool(data.get("writable", True)))

    def __str__(self) -> str:
        where = self.host if self.host == self.guest else f"{self.host} as {self.guest}"
        return where + ("" if self.writable else " (read-only)")


def share_tag(index: int) -> str:
    """The name the hypervisor gives the `index`th share; the guest mounts it by this name."""
    return f"pmshare{index}"


@dataclass(frozen=True)
class Endpoint:
    """A host and port the host can connect to."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class BootMedia:
    """What the VM boots from: the ISO, and its kernel and initrd for direct boot."""

    iso: Path
    kernel: Path | None = None
    initrd: Path | None = None
    cmdline: str = ""
    #: the same kernel uncompressed, with a PVH entry (QEMU x86 boots it without decompressing)
    pvh_kernel: Path | None = None


@dataclass(frozen=True)
class MachineSpec:
    """Everything a driver needs to know about its machine, decided by the core."""

    name: str
    directory: Path
    cpus: int
    memory_mb: int
    disk_mb: int
    boot: BootMedia
    config_medium: Path
    ssh_port: int
    docker_port: int
    #: host folders the guest mounts, in the order of their names (share_tag)
    mounts: tuple[Mount, ...] = ()
    #: the guest's architecture (pymachine.arch: amd64 or arm64)
    arch: str = "amd64"

    @property
    def data_disk_stem(self) -> Path:
        """Where drivers put the data disk, minus the extension their format wants."""
        return self.directory / "data"


@dataclass(frozen=True)
class HostReport:
    """What this host offers a driver, for `pymachine doctor`."""

    installed: bool
    version: str = ""
    accelerator: str = ""
    detail: str = ""
    #: further facts, one line each; a problem names the command that fixes it
    notes: tuple[str, ...] = ()


@dataclass
class DriverOptions:
    """Base for each driver's typed options. Field metadata "help" feeds --help and docs."""

    @classmethod
    def describe(cls) -> list[tuple[str, str, str]]:
        """(option name, default, help) for each option."""
        rows = []
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else ""
            rows.append((f.name.replace("_", "-"), _format_default(default), f.metadata.get("help", "")))
        return rows

    @classmethod
    def parse(cls, pairs: Mapping[str, str]) -> DriverOptions:
        """Options from `--opt key=value` strings, converted to each field's type."""
        hints = typing.get_type_hints(cls)
        known = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for raw_key, raw in pairs.items():
            key = raw_key.replace("-", "_")
            if key not in known:
                names = ", ".join(sorted(n.replace("_", "-") for n in known)) or "none"
                raise MachineError(
                    f"Unknown option '{raw_key}' for this driver (it takes: {names})",
                    "Run `pymachine drivers` to see each driver's options",
                )
            values[key] = _convert(raw_key, raw, hints[key])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DriverOptions:
        """Options as saved in a config; MachineError when one has the wrong type (a damaged file)."""
        hints = typing.get_type_hints(cls)
        values = {k: v for k, v in data.items() if k in hints}
        for key, value in values.items():
            if not _of_type(value, hints[key]):
                raise MachineError(f"driver option '{key}' is {type(value).__name__} {value!r:.40}, not {hints[key]}")
        return cls(**values)


def option(default: Any, help: str) -> Any:
    """A DriverOptions field with its help text."""
    return field(default=default, metadata={"help": help})


class Driver(abc.ABC):
    """One VM on one hypervisor. Each method is short; the core composes them."""

    #: the name users pass to `create -d`
    name: ClassVar[str]
    #: the options dataclass for `create -o key=value`
    options_class: ClassVar[type[DriverOptions]] = DriverOptions
    #: optional abilities, see Feature
    features: ClassVar[frozenset[Feature]] = frozenset()

    def __init__(self, spec: MachineSpec, options: DriverOptions, runner: Runner, client_role: str = "cli") -> None:
        self.spec = spec
        self.options = options
        self.runner = runner
        #: "cli" or "watcher": a driver whose control channel serves one client at a
        #: time (QEMU's QMP socket) gives the long-lived watcher a channel of its own.
        self.client_role = client_role

    @classmethod
    @abc.abstractmethod
    def precheck(cls, runner: Runner, options: DriverOptions, arch: str = "") -> None:
        """Raise DriverNotAvailable when this host cannot run the hypervisor (for `arch` guests; "" is the host's)."""

    @abc.abstractmethod
    def create(self) -> None:
        """Make the VM and its data disk; leave it stopped."""

    @abc.abstractmethod
    def start(self) -> None:
        """Boot the VM; return once the hypervisor runs it (the guest may still be booting)."""

    @abc.abstractmethod
    def stop(self, timeout: float) -> None:
        """Ask the guest to power off (ACPI); force it off after `timeout` seconds."""

    @abc.abstractmethod
    def kill(self) -> None:
        """Power the VM off at once."""

    @abc.abstractmethod
    def remove(self) -> None:
        """Delete the VM and every file the driver made; safe on a half-made VM."""

    @abc.abstractmethod
    def state(self) -> State:
        """The VM's state, asked of the hypervisor, quickly and without SSH."""

    def require_folder(self) -> None:
        """Refuse to make a VM for a machine whose folder is gone (removed while it was
        being created): the core makes the folder, a driver never makes it anew."""
        if not self.spec.directory.is_dir():
            raise MachineRemoved(f"The folder of machine '{self.spec.name}' is gone", f"Run `pymachine create {self.spec.name}` to make it again")

    def ssh_endpoint(self) -> Endpoint:
        """Where on the host the guest's SSH server answers (a forward on loopback)."""
        return Endpoint(LOOPBACK, self.spec.ssh_port)

    def docker_endpoint(self) -> Endpoint:
        """Where on the host the guest's Docker TLS port (2376) answers (a forward on loopback)."""
        return Endpoint(LOOPBACK, self.spec.docker_port)

    @abc.abstractmethod
    def add_forward(self, forward: PortForward) -> None:
        """Carry a host port to a guest port; raise PortUnavailable when the host port is taken."""

    @abc.abstractmethod
    def remove_forward(self, forward: PortForward) -> None:
        """Stop carrying that host port; a forward already gone is not an error."""

    @abc.abstractmethod
    def list_forwards(self) -> list[PortForward]:
        """The forwards made through add_forward (not the machine's own SSH and Docker ports)."""

    def disk_size_mb(self) -> int:
        """The data disk's size in MB, as the hypervisor has it (DISK_GROW)."""
        raise DriverError(f"The {self.name} driver cannot tell or change its data disk's size", "Run `pymachine drivers` to see what each driver can do")

    def grow_disk(self, size_mb: int) -> None:
        """Make the data disk `size_mb` MB, never smaller (DISK_GROW; while the VM runs only
        with ONLINE_DISK_GROW). The guest's filesystem is the guest's business."""
        raise DriverError(f"The {self.name} driver cannot grow its data disk", "Run `pymachine drivers` to see what each driver can do")

    @classmethod
    def reap(cls, folder: Path, name: str, runner: Runner) -> list[str]:
        """Stop and delete the VM this driver made for the machine in `folder`, found from
        the folder and the hypervisor's registry alone (for `rm -f` when the config is
        damaged); never a VM whose files lie outside `folder`. Returns what it did."""
        return []

    @classmethod
    @abc.abstractmethod
    def host_report(cls, runner: Runner) -> HostReport:
        """Installed or not, its version, and whether hardware acceleration is usable."""

    @classmethod
    def guest_arches(cls, runner: Runner, options: DriverOptions) -> dict[str, str]:
        """The guest architectures this driver runs on this host: arch -> "native" or
        "emulated". Most hypervisors run only the host's own."""
        from pymachine.arch import host_arch

        return {host_arch(): NATIVE}

    @classmethod
    def hardware_accelerated(cls, runner: Runner, options: DriverOptions, arch: str = "") -> bool:
        """True if its VMs (of `arch`; "" is the host's) use hardware virtualization, and so
        may clash with other hypervisors."""
        return True

    def details(self) -> dict[str, Any]:
        """Driver facts for `pymachine inspect` (backend, accelerator, paths)."""
        return {}

    def host_memory_mb(self) -> int | None:
        """The VM's resident memory on this host in MiB, or None where the hypervisor does not say."""
        return None

    def serial_log(self) -> Path | None:
        """The file holding the guest's serial console, where the driver keeps one (SERIAL_LOG)."""
        return self.spec.directory / "serial.log" if self.supports(Feature.SERIAL_LOG) else None

    @classmethod
    def supports(cls, feature: Feature, arch: str = "") -> bool:
        """True if this driver declares `feature` (for guests of `arch`, when given)."""
        return feature in (cls.arch_features(arch) if arch else cls.features)

    @classmethod
    def arch_features(cls, arch: str) -> frozenset[Feature]:
        """The features a guest of `arch` gets; most drivers offer the same to both."""
        return cls.features

    def rotate_serial_log(self) -> None:
        """Keep the previous boot's console as serial.log.1; call before each start."""
        log = self.serial_log()
        if log is not None and log.exists() and log.stat().st_size:
            os.replace(log, log.with_name(log.name + ".1"))


def inside(path: str | Path, folder: Path) -> bool:
    """True if `path` lies in `folder` (symlinks resolved): the test of a VM's ownership."""
    real, base = os.path.realpath(path), os.path.realpath(folder)
    return real == base or real.startswith(base.rstrip(os.sep) + os.sep)


def _of_type(value: Any, hint: Any) -> bool:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_of_type(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def _format_default(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _convert(key: str, raw: str, hint: Any) -> Any:
    wanted = hint
    # Optional[int] is a typing.Union; `int | None` (PEP 604) is a types.UnionType.
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        wanted = next(a for a in typing.get_args(hint) if a is not type(None))
    if wanted is bool:
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise MachineError(f"Option '{key}' takes true or false, not '{raw}'", "Run `pymachine drivers` to see each driver's options")
    if wanted is int:
        try:
            return int(raw)
        except ValueError:
            raise MachineError(f"Option '{key}' takes a number, not '{raw}'", "Run `pymachine drivers` to see each driver's options") from None
    return raw


def driver_names() -> list[str]:
    """Every registered driver name, sorted (once, even if two metadata copies list it)."""
    return sorted({ep.name for ep in _entry_points()})


def load_driver(name: str) -> type[Driver]:
    """Import the driver registered as `name`, and only that one."""
    for ep in _entry_points():
        if ep.name == name:
            cls = ep.load()
            if not (isinstance(cls, type) and issubclass(cls, Driver)):
                raise DriverError(f"Driver '{name}' is registered as {ep.value}, which is not a Driver")
            return cls
    known = ", ".join(driver_names()) or "none"
    raise DriverError(f"Unknown driver '{name}' (known drivers: {known})", "Run `pymachine drivers` to list them")


@functools.cache
def _entry_points() -> tuple[Any, ...]:
    # Scanning every installed distribution takes tens of milliseconds; `ls` asks once
    # per machine. The set of installed drivers does not change while we run.
    from importlib.metadata import entry_points

    return tuple(entry_points(group=ENTRY_POINT_GROUP))
