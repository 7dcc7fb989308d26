"""The machines of one Home: make one, find one, list them all.

What happens to one machine is the business of its Machine object (pymachine.machine);
this facade only creates machines, hands out Machine objects, and answers questions
about all of them at once. None of it prints.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

from pymachine.arch import ARCHES, host_arch, normalize
from pymachine.dockercontext import active_machine
from pymachine.driver import EMULATED, Feature, State, load_driver
from pymachine.engineoptions import check_engine_flags, check_engine_settings
from pymachine.errors import ImageError, MachineError, MachineExists, MachineNotFound
from pymachine.guard import check_before_start
from pymachine.home import Home
from pymachine.hostlimits import check_machine_size
from pymachine.image import BootImage
from pymachine.machine import Machine
from pymachine.mounts import resolve_mounts, sharing_summary
from pymachine.store import STATUS_CREATING, MachineConfig, validate_name

#: Where a bare `-p H:C` may be forwarded on the host.
FORWARD_BINDS = ("127.0.0.1", "0.0.0.0")


@dataclass
class CreateOptions:
    """What `pymachine create` may choose."""

    driver: str = "qemu"
    cpus: int = 2
    memory_mb: int = 2048
    disk_mb: int = 20480
    iso: str | None = None
    engine_options: list[str] = field(default_factory=list)
    engine_labels: list[str] = field(default_factory=list)
    insecure_registries: list[str] = field(default_factory=list)
    registry_mirrors: list[str] = field(default_factory=list)
    driver_options: dict[str, str] = field(default_factory=dict)
    forward_bind: str = "127.0.0.1"
    #: forward ports the guest's processes listen on (`--no-listener-forwarding` turns it off)
    listener_forwarding: bool = True
    #: `--ignore-port` values: guest ports never forwarded as listeners
    ignore_ports: list[str] = field(default_factory=list)
    #: `--mount` values; None shares the home folder where the driver can, [] shares nothing
    mounts: list[str] | None = None
    force: bool = False
    #: the guest's architecture; None is the host's own
    arch: str | None = None
    #: let `iso` be a plain http:// URL (releases are fetched over https:// only otherwise)
    allow_http: bool = False


@dataclass(frozen=True)
class MachineInfo:
    """One row of `pymachine ls`."""

    name: str
    active: bool
    driver: str
    arch: str
    state: str
    url: str
    docker: str
    error: str
    #: the memory the machine's VM holds on this host now, where its driver can tell
    host_memory_mb: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "Name": self.name,
            "Active": self.active,
            "Driver": self.driver,
            "Arch": self.arch,
            "State": self.state,
            "URL": self.url,
            "Docker": self.docker,
            "Error": self.error,
            "HostMemoryMB": self.host_memory_mb,
        }


class Machines:
    """The machines in one Home."""

    def __init__(self, home: Home) -> None:
        self.home = home
        self.store = home.store
        self.progress = home.progress

    def get(self, name: str) -> Machine:
        """The machine called `name`; MachineNotFound when there is none."""
        machine = Machine(self.home, name)
        if not machine.exists():
            raise MachineNotFound(name)
        return machine

    def _running(self, name: str) -> bool:
        try:
            return Machine(self.home, name).state() == State.RUNNING
        except MachineError:
            return False

    def names(self) -> list[str]:
        return self.store.names()

    # -- create -----------------------------------------------------------------------

    def create(self, name: str, options: CreateOptions) -> Machine:
        """Make a machine from nothing to a Docker daemon answering over TLS."""
        validate_name(name)
        if self.store.exists(name):
            raise MachineExists(name, running=self._running(name))
        if options.cpus < 1 or options.memory_mb < 256 or options.disk_mb < 1024:
            raise MachineError("A machine needs at least 1 CPU, 256 MB of memory and a 1024 MB disk", "Run `pymachine create --help`")
        check_machine_size(options.cpus, options.memory_mb, options.disk_mb)
        check_engine_settings(options.engine_options, options.engine_labels, options.registry_mirrors, options.insecure_registries)
        cls = load_driver(options.driver)
        if options.forward_bind not in FORWARD_BINDS:
            raise MachineError(f"--forward-bind takes 127.0.0.1 or 0.0.0.0, not '{options.forward_bind}'", "Run `pymachine create --help`")
        if options.forward_bind == "0.0.0.0" and not cls.supports(Feature.ANY_HOST_ADDRESS):
            raise MachineError(f"The {cls.name} driver forwards on 127.0.0.1 only", "Run `pymachine create` without --forward-bind")
        from pymachine.forwarding.listeners import normalize_ignore_ports

        ignore_ports = normalize_ignore_ports(options.ignore_ports, "--ignore-port", "pymachine create --help")
        driver_options = cls.options_class.parse(options.driver_options)
        arch = self._guest_arch(cls, driver_options, options.arch)
        mounts = resolve_mounts(options.mounts, cls.supports(Feature.SHARED_FOLDERS, arch), cls.name, arch)
        with self.progress.step(f"Checking the {options.driver} driver"):
            cls.precheck(self.home.runner, driver_options, arch)
        # Before anything is made: a refusal must leave nothing to clean up.
        check_before_start(self.home.runner, cls, driver_options, options.force, self.progress, arch)
        if options.iso and "://" in options.iso:
            with self.progress.step("Fetching the release's boot image"):
                image = BootImage.locate(self.home.cache, options.iso, self.progress.transfer, arch, options.allow_http, self.progress.note)
        else:
            image = BootImage.locate(self.home.cache, options.iso, arch=arch, note=self.progress.note)
        if image.arch != arch:
            raise ImageError(f"{image.iso} is an {image.arch} boot image, and this machine's guest is {arch}", f"Pass an {arch} image to --iso, or `--arch {image.arch}`")
        check_engine_flags(options.engine_options, image.dockerd_flags)

        self.progress.note(sharing_summary(mounts, options.mounts, cls.supports(Feature.SHARED_FOLDERS, arch), cls.name, arch))
        config = MachineConfig(
            name=name,
            driver=options.driver,
            driver_options=driver_options.to_dict(),
            arch=arch,
            cpus=options.cpus,
            memory_mb=options.memory_mb,
            disk_mb=options.disk_mb,
            engine_options=list(options.engine_options),
            engine_labels=list(options.engine_labels),
            insecure_registries=list(options.insecure_registries),
            registry_mirrors=list(options.registry_mirrors),
            forward_bind=options.forward_bind,
            listener_forwarding=options.listener_forwarding,
            ignore_ports=ignore_ports,
            mounts=[m.as_dict() for m in mounts],
            status=STATUS_CREATING,
            created_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        )
        machine = Machine(self.home, name)
        with self.store.reserve(config):
            machine.adopt(config)
            machine.build(image)
        machine.after_ready()
        return machine

    def _guest_arch(self, cls: Any, driver_options: Any, asked: str | None) -> str:
        """The guest architecture: the one asked for, else the host's; refused when the
        driver cannot run it here, and said in one line when it runs emulated."""
        host = host_arch()
        arch = normalize(asked) if asked else host
        if arch not in ARCHES:
            raise MachineError(f"This host is {host}; pymachine runs {' and '.join(ARCHES)} guests", "Run `pymachine create --arch amd64` or `--arch arm64` with -d qemu, which emulates either")
        runs = cls.guest_arches(self.home.runner, driver_options)
        if arch not in runs:
            can = ", ".join(sorted(runs)) or "none"
            raise MachineError(f"The {cls.name} driver cannot run {arch} guests on this {host} host (it runs {can} here)", f"Run `pymachine create --arch {host}`, or use -d qemu, which emulates {arch}")
        if runs[arch] == EMULATED:
            self.progress.note(f"An {arch} guest on this {host} host runs emulated (QEMU's TCG), about ten times slower than a native one")
        return arch

    # -- all machines -------------------------------------------------------------------

    def active(self) -> str | None:
        """The machine the docker CLI points at: by DOCKER_HOST, else by the current context."""
        return active_machine(self.store)

    def list(self, timeout: float = 10.0) -> list[MachineInfo]:
        """Every machine with its state, asked of the hypervisors in parallel."""
        names = self.store.names()
        if not names:
            return []
        active = self.active()
        rows: dict[str, MachineInfo] = {}
        # Daemon threads, not a pool: a pool joins its threads when it closes and again at
        # exit, so one hung hypervisor would hold `ls` well past its timeout.
        futures = {name: _in_thread(self._info, name, active) for name in names}
        deadline = time.monotonic() + timeout
        for name, future in futures.items():
            try:
                rows[name] = future.result(timeout=max(0.0, deadline - time.monotonic()))
            except FutureTimeout:
                rows[name] = MachineInfo(name, name == active, "", "", "Timeout", "", "", f"no answer within {timeout:g}s")
        return [rows[n] for n in names]

    def _info(self, name: str, active: str | None) -> MachineInfo:
        machine = Machine(self.home, name)
        try:
            config = machine.config
        except MachineError as exc:
            return MachineInfo(name, False, "", "", State.ERROR.value, "", "", str(exc))
        try:
            state = machine.status()
        except MachineError as exc:
            return MachineInfo(name, name == active, config.driver, config.arch, State.ERROR.value, "", "", str(exc))
        # One machine's surprise stays in its own row (and in the debug log).
        except Exception as exc:
            logging.getLogger("pymachine").exception("state of machine %s", name)
            return MachineInfo(name, name == active, config.driver, config.arch, State.ERROR.value, "", "", f"{type(exc).__name__}: {exc}")
        url = config.docker_url if state == State.RUNNING.value else ""
        docker = f"v{config.engine_version}" if config.engine_version else ""
        memory = machine.host_memory_mb() if state in (State.RUNNING.value, State.STARTING.value) else None
        return MachineInfo(name, name == active, config.driver, config.arch, state, url, docker, config.error, memory)


def _in_thread(fn: Any, *args: Any) -> Future:
    """Run fn(*args) in a daemon thread; its result or exception arrives in the Future."""
    future: Future = Future()

    def run() -> None:
        try:
            future.set_result(fn(*args))
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=run, daemon=True).start()
    return future

