"""The core API: every command of the CLI is a method here, and none of them prints.

A command loads the machine's config from the store, builds its driver, and composes
driver calls, SSH provisioning and store writes. Progress goes to `home.progress`.
"""

from __future__ import annotations

import datetime
import os
import socket
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable
from typing import Any

from .certs import CertificateAuthority, CertPaths, SSHKeyPair
from .configmedium import write_config_medium
from .dockercontext import DockerContexts, context_name, current_context
from .driver import BootMedia, Driver, DriverOptions, Feature, MachineSpec, State, host_port_free, load_driver
from .errors import (
    DriverError,
    Interrupted,
    MachineError,
    MachineExists,
    MachineNotFound,
    MachineStateError,
    PortUnavailable,
)
from .home import Home
from .image import BootImage
from .mounts import Mount, medium_lines, resolve_mounts
from .provision import Provisioner
from .ssh import GuestSSH, SSHTarget
from .store import STATUS_CREATING, STATUS_ERROR, STATUS_READY, MachineConfig, validate_name

STOP_TIMEOUT = 30.0
#: How long `start` waits for the engine to come back by itself before provisioning.
ENGINE_BOOT_TIMEOUT = 60.0
USER_KEY = "id_ed25519"
HOST_KEY = "ssh_host_ed25519_key"
CONFIG_MEDIUM = "config.iso"


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
    #: `--mount` values; None shares the home folder where the driver can, [] shares nothing
    mounts: list[str] | None = None
    force: bool = False


@dataclass(frozen=True)
class MachineInfo:
    """One row of `pymachine ls`."""

    name: str
    active: bool
    driver: str
    state: str
    url: str
    docker: str
    error: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "Name": self.name,
            "Active": self.active,
            "Driver": self.driver,
            "State": self.state,
            "URL": self.url,
            "Docker": self.docker,
            "Error": self.error,
        }


class Machines:
    """The machines in one Home."""

    def __init__(self, home: Home) -> None:
        self.home = home
        self.store = home.store
        self.progress = home.progress
        self.ca = CertificateAuthority(home.certs_dir)
        self.contexts = DockerContexts(home.runner)

    # -- building blocks --------------------------------------------------------------

    def load(self, name: str) -> MachineConfig:
        validate_name(name)
        return self.store.load(name)

    def directory(self, name: str) -> Path:
        return self.store.machine_dir(name)

    def spec(self, config: MachineConfig) -> MachineSpec:
        directory = self.directory(config.name)

        def opt(path: str) -> Path | None:
            return Path(path) if path else None

        boot = BootMedia(
            iso=Path(config.iso),
            kernel=opt(config.kernel),
            initrd=opt(config.initrd),
            cmdline=config.cmdline,
            pvh_kernel=opt(str(directory / "boot" / "vmlinux")) if (directory / "boot" / "vmlinux").exists() else None,
        )
        return MachineSpec(
            name=config.name,
            directory=directory,
            cpus=config.cpus,
            memory_mb=config.memory_mb,
            disk_mb=config.disk_mb,
            boot=boot,
            config_medium=directory / CONFIG_MEDIUM,
            ssh_port=config.ssh_port,
            docker_port=config.docker_port,
            mounts=tuple(Mount.from_dict(m) for m in config.mounts),
        )

    def driver(self, config: MachineConfig, role: str = "cli") -> Driver:
        if not config.driver:
            raise MachineError(f"Machine '{config.name}' was not fully created", f"Run `pymachine rm -f {config.name}`")
        cls = load_driver(config.driver)
        options = cls.options_class.from_dict(config.driver_options)
        return cls(self.spec(config), options, self.home.runner, client_role=role)

    def ssh_target(self, config: MachineConfig, driver: Driver | None = None) -> SSHTarget:
        driver = driver or self.driver(config)
        endpoint = driver.ssh_endpoint()
        directory = self.directory(config.name)
        host_key = SSHKeyPair.public_of(directory / HOST_KEY)
        return SSHTarget(config.name, endpoint.host, endpoint.port, "root", directory / USER_KEY, " ".join(host_key.split()[:2]))

    def ssh(self, name: str) -> GuestSSH:
        config = self.load(name)
        return self.home.ssh(self.ssh_target(config))

    def _provisioner(self, config: MachineConfig, driver: Driver, ssh: GuestSSH) -> Provisioner:
        return Provisioner(config, self.directory(config.name), driver, ssh, self.ca, self.progress)

    # -- create -----------------------------------------------------------------------

    def create(self, name: str, options: CreateOptions) -> MachineConfig:
        """Make a machine from nothing to a Docker daemon answering over TLS."""
        validate_name(name)
        if self.store.exists(name):
            raise MachineExists(name)
        if options.forward_bind not in ("127.0.0.1", "0.0.0.0"):
            raise MachineError(f"--forward-bind takes 127.0.0.1 or 0.0.0.0, not '{options.forward_bind}'", "Run `pymachine create --help`")
        if options.cpus < 1 or options.memory_mb < 256 or options.disk_mb < 1024:
            raise MachineError("A machine needs at least 1 CPU, 256 MB of memory and a 1024 MB disk", "Run `pymachine create --help`")
        cls = load_driver(options.driver)
        driver_options = cls.options_class.parse(options.driver_options)
        mounts = resolve_mounts(options.mounts, Feature.SHARED_FOLDERS in cls.features, options.driver)
        with self.progress.step(f"Checking the {options.driver} driver"):
            cls.precheck(self.home.runner, driver_options)
        # Before anything is made: a refusal must leave nothing to clean up.
        self._guard(cls, driver_options, options.force)
        image = BootImage.locate(self.home.cache, options.iso, download_progress=self.progress.transfer)

        config = MachineConfig(
            name=name,
            driver=options.driver,
            driver_options=driver_options.to_dict(),
            cpus=options.cpus,
            memory_mb=options.memory_mb,
            disk_mb=options.disk_mb,
            engine_options=list(options.engine_options),
            engine_labels=list(options.engine_labels),
            insecure_registries=list(options.insecure_registries),
            registry_mirrors=list(options.registry_mirrors),
            forward_bind=options.forward_bind,
            mounts=[m.as_dict() for m in mounts],
            status=STATUS_CREATING,
            created_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        )
        directory = self.store.reserve(config)
        driver: Driver | None = None
        try:
            with self.store.lock(name):
                with self.progress.step("Preparing keys, certificates and the config medium"):
                    self._prepare(config, directory, image)
                driver = self.driver(config)
                with self.progress.step(f"Creating the {options.driver} VM"):
                    driver.create()
                driver = self._start_vm(config, driver)
                self._provision(config, driver, image)
                self._mark_ready(config)
            self._after_ready(config)
            return config
        except KeyboardInterrupt:
            self._fail(config, driver, "interrupted during create")
            raise Interrupted(f"Creating machine '{name}' was interrupted; it is left in state Error", f"Run `pymachine rm -f {name}` to clean it up") from None
        except BaseException as exc:
            self._fail(config, driver, str(exc) or type(exc).__name__)
            raise

    def _prepare(self, config: MachineConfig, directory: Path, image: BootImage) -> None:
        pinned = image.pin(directory)
        config.iso = str(pinned.iso)
        config.kernel = str(pinned.kernel or "")
        config.initrd = str(pinned.initrd or "")
        config.cmdline = pinned.cmdline
        config.image_version = pinned.version
        config.engine_bundle = str(image.engine_bundle or "")
        user = SSHKeyPair.generate(f"pymachine@{config.name}")
        user.write(directory / USER_KEY)
        host = SSHKeyPair.generate(f"root@{config.name}")
        host.write(directory / HOST_KEY)
        mounts = medium_lines([Mount.from_dict(m) for m in config.mounts])
        write_config_medium(directory / CONFIG_MEDIUM, config.name, user.public_line, host.private_pem, mounts)
        self._write_known_hosts(config.name, host.public_line)
        self.ca.ensure()
        self.ca.copy_client(CertPaths(directory))
        config.ssh_port, config.docker_port = self._free_ports(2, exclude=self._ports_in_use())
        self.store.save(config)

    def _mark_ready(self, config: MachineConfig) -> None:
        config.status = STATUS_READY
        config.error = ""
        self.store.save(config)

    def _write_known_hosts(self, name: str, host_public: str) -> None:
        from .store import atomic_write

        keytype, blob = host_public.split()[:2]
        atomic_write(self.directory(name) / "known_hosts", f"pymachine-{name} {keytype} {blob}\n", mode=0o644)

    def _fail(self, config: MachineConfig, driver: Driver | None, message: str) -> None:
        """Leave a failed create visible as Error, with no VM process left running."""
        try:
            if driver is not None:
                driver.kill()
        except Exception:
            pass
        try:
            if self.store.exists(config.name):
                config.status = STATUS_ERROR
                config.error = message.splitlines()[0][:300] if message else "failed"
                self.store.save(config)
        except Exception:
            pass

    # -- lifecycle ----------------------------------------------------------------------

    def _start_vm(self, config: MachineConfig, driver: Driver) -> Driver:
        """Start the VM; if a host port it needs was taken meanwhile, pick new ones and retry."""
        for attempt in range(3):
            busy = [p for p in (config.ssh_port, config.docker_port) if not host_port_free("tcp", "127.0.0.1", p)]
            if busy:
                self.progress.note(f"Port {busy[0]} is taken now; moving machine '{config.name}' to new ports")
                config.ssh_port, config.docker_port = self._free_ports(2, exclude=self._ports_in_use())
                self.store.save(config)
                driver = self.driver(config)
            try:
                with self.progress.step("Starting the VM"):
                    driver.start()
                return driver
            except PortUnavailable:
                if attempt == 2:
                    raise
                config.ssh_port, config.docker_port = self._free_ports(2, exclude=self._ports_in_use() | {config.ssh_port, config.docker_port})
                self.store.save(config)
                driver = self.driver(config)
        return driver

    def _provision(self, config: MachineConfig, driver: Driver, image: BootImage | None, *, reinstall: bool = False, regenerate: bool = False) -> None:
        with self.home.ssh(self.ssh_target(config, driver)) as ssh:
            self._provisioner(config, driver, ssh).run(image, config.driver, reinstall=reinstall, regenerate=regenerate)
        if image is not None and image.engine_version:
            config.engine_version = image.engine_version
        self._save_context(config)

    def _engine_came_back(self, config: MachineConfig, driver: Driver) -> bool:
        """A provisioned guest starts its engine at boot: wait for it over TLS alone.

        No SSH round trips while dockerd starts (under emulation they slow it down);
        if it does not answer in time, the caller provisions over SSH, which also
        diagnoses what went wrong.
        """
        from .dockerapi import DockerAPI

        endpoint = driver.docker_endpoint()
        api = DockerAPI(endpoint.host, endpoint.port, CertPaths(self.directory(config.name)))
        try:
            with self.progress.step("Waiting for Docker"):
                api.wait_ready(ENGINE_BOOT_TIMEOUT)
            return True
        except MachineError:
            self.progress.note("Docker did not come back on its own; provisioning over SSH")
            return False
        finally:
            api.close()

    def _save_context(self, config: MachineConfig) -> None:
        try:
            if self.contexts.save(config.name, config.docker_port, CertPaths(self.directory(config.name))):
                return
            self.progress.note("No docker CLI found: skipped the docker context (use `pymachine env`)")
        except MachineError as exc:
            self.progress.note(f"Could not save the docker context: {exc}")

    def start(self, name: str, force: bool = False) -> None:
        """Boot a stopped machine and wait for its Docker daemon."""
        config = self.load(name)
        with self.store.lock(name):
            driver = self.driver(config)
            state = driver.state()
            if state == State.RUNNING:
                raise MachineStateError(f"Machine '{name}' is already running", f"Run `pymachine restart {name}` to reboot it")
            if state == State.NOT_FOUND:
                raise MachineStateError(f"The VM of machine '{name}' no longer exists in {config.driver}", f"Run `pymachine rm -f {name}` and create it again")
            self._guard(type(driver), driver.options, force)
            ports_before = (config.ssh_port, config.docker_port)
            driver = self._start_vm(config, driver)
            try:
                if config.status == STATUS_READY and self._engine_came_back(config, driver):
                    if (config.ssh_port, config.docker_port) != ports_before:
                        self._save_context(config)
                else:
                    image = self._image_of(config) if config.status != STATUS_READY else None
                    self._provision(config, driver, image)
            except KeyboardInterrupt:
                self._fail(config, driver, "interrupted during start")
                raise Interrupted(f"Starting machine '{name}' was interrupted; it was stopped again", f"Run `pymachine start {name}`") from None
            except MachineError:
                driver.kill()
                raise
            self._mark_ready(config)
        self._after_ready(config)

    def stop(self, name: str, timeout: float = STOP_TIMEOUT) -> bool:
        """Shut the guest down cleanly (force it after `timeout`); False if it was not running."""
        return self._power_off(name, "Stopping", lambda driver: driver.stop(timeout))

    def kill(self, name: str) -> bool:
        """Power the VM off at once; False if it was not running."""
        return self._power_off(name, "Killing", lambda driver: driver.kill())

    def _power_off(self, name: str, verb: str, how: Callable[[Driver], None]) -> bool:
        config = self.load(name)
        with self.store.lock(name):
            driver = self.driver(config)
            self._before_stop(config, driver)
            if driver.state() in (State.STOPPED, State.NOT_FOUND):
                return False
            with self.progress.step(f"{verb} machine '{name}'"):
                how(driver)
        return True

    def restart(self, name: str, force: bool = False) -> None:
        self.stop(name)
        self.start(name, force=force)

    def remove(self, name: str, force: bool = False) -> None:
        """Delete the machine: its VM, files and docker context. `force` ignores driver errors."""
        validate_name(name)
        if not self.store.exists(name):
            raise MachineNotFound(name)
        try:
            config: MachineConfig | None = self.store.load(name)
        except MachineError:
            if not force:
                raise
            config = None
        try:
            lock = self.store.lock(name, timeout=2 if force else 10)
            lock.__enter__()
        except MachineError:
            if not force:
                raise
            lock = None
        try:
            if config is not None:
                if config.driver:
                    try:
                        driver = self.driver(config)
                        self._before_stop(config, driver)
                        with self.progress.step(f"Removing the VM of machine '{name}'"):
                            driver.remove()
                    except MachineError:
                        if not force:
                            raise
            try:
                self.contexts.remove(name)
            except MachineError:
                if not force:
                    raise
        finally:
            if lock is not None:
                lock.__exit__(None, None, None)
        self.store.remove(name)

    def provision(self, name: str, reinstall: bool = False) -> None:
        """Run provisioning again on a running machine (installs, certificates, config)."""
        config = self.load(name)
        with self.store.lock(name):
            driver = self._running_driver(config)
            self._provision(config, driver, self._image_of(config), reinstall=reinstall)
            self._mark_ready(config)
        self._after_ready(config)

    def regenerate_certs(self, name: str, include_ca: bool = False) -> None:
        """New client credentials (and CA if asked) and a new server certificate, installed."""
        config = self.load(name)
        with self.store.lock(name):
            driver = self._running_driver(config)
            self.ca.regenerate(include_ca=include_ca)
            with self.home.ssh(self.ssh_target(config, driver)) as ssh:
                provisioner = self._provisioner(config, driver, ssh)
                provisioner.wait_for_ssh(timeout=30)
                facts = provisioner.facts()
                provisioner.configure(facts, config.driver, regenerate=True)
                provisioner.start_engine(restart=facts.engine_running)
                provisioner.wait_for_docker()
            self._save_context(config)

    def upgrade(self, name: str) -> None:
        """Move a machine to the current boot image and engine bundle, restarting it."""
        config = self.load(name)
        image = BootImage.locate(self.home.cache)
        with self.store.lock(name):
            driver = self.driver(config)
            if driver.state() == State.RUNNING:
                with self.progress.step(f"Stopping machine '{name}'"):
                    self._before_stop(config, driver)
                    driver.stop(STOP_TIMEOUT)
            pinned = image.pin(self.directory(name))
            config.iso, config.kernel, config.initrd = str(pinned.iso), str(pinned.kernel or ""), str(pinned.initrd or "")
            config.cmdline, config.image_version, config.engine_bundle = pinned.cmdline, pinned.version, str(image.engine_bundle or "")
            self.store.save(config)
            driver = self._start_vm(config, self.driver(config))
            self._provision(config, driver, image)
            self._mark_ready(config)
        self._after_ready(config)

    def _running_driver(self, config: MachineConfig) -> Driver:
        driver = self.driver(config)
        if driver.state() != State.RUNNING:
            raise MachineStateError(f"Machine '{config.name}' is not running", f"Run `pymachine start {config.name}`")
        return driver

    def _image_of(self, config: MachineConfig) -> BootImage:
        """The engine bundle to install: the one the machine was made with, else the cache's."""
        bundle = Path(config.engine_bundle) if config.engine_bundle else None
        current = None
        try:
            current = BootImage.locate(self.home.cache)
        except MachineError:
            pass
        if current is not None and (bundle is None or not bundle.exists() or current.engine_bundle == bundle):
            return current
        if bundle is not None and bundle.exists():
            from .image import sha256_file

            digest = sha256_file(bundle)
            version = config.engine_version or bundle.name.split("-")[2]
            return BootImage(iso=Path(config.iso), version=config.image_version, engine_bundle=bundle, engine_sha256=digest, engine_version=version)
        if current is not None:
            return current
        raise MachineError(f"The engine bundle for machine '{config.name}' is gone from the cache", "Run `pymachine image build`")

    # -- hooks for the forward watcher and the hypervisor guard ---------------------------

    def _guard(self, cls: type[Driver], options: DriverOptions, force: bool) -> None:
        """Refuse to start a VM while another hypervisor runs VMs (see machine.guard)."""
        from .guard import HypervisorGuard

        accelerated = cls.hardware_accelerated(self.home.runner, options)
        HypervisorGuard(self.home.runner).check(cls.name, force=force, accelerated=accelerated, progress=self.progress)

    def _after_ready(self, config: MachineConfig) -> None:
        """Start the machine's forward watcher."""
        from .watcherproc import WatcherProcess

        WatcherProcess(self.home, config.name).ensure_running()

    def _before_stop(self, config: MachineConfig, driver: Driver | None = None) -> None:
        """Stop the watcher and take down the forwards it made (some hypervisors keep them)."""
        from .watcherproc import WatcherProcess

        WatcherProcess(self.home, config.name).stop(driver)

    def _revive_watcher(self, config: MachineConfig, state: State | str) -> None:
        """A watcher that died while its machine runs is started again by the next command."""
        if config.status == STATUS_READY and str(state) == State.RUNNING.value:
            from .watcherproc import WatcherProcess

            WatcherProcess(self.home, config.name).ensure_running()

    # -- queries ------------------------------------------------------------------------

    def state(self, name: str) -> State:
        return self.driver(self.load(name)).state()

    def status(self, name: str) -> str:
        """The state `ls` shows: the VM's, or Error for a machine that failed to provision."""
        config = self.load(name)
        if config.status == STATUS_ERROR or not config.driver:
            return State.ERROR.value
        state = self.driver(config).state()
        if config.status == STATUS_CREATING and state == State.RUNNING:
            return State.STARTING.value
        self._revive_watcher(config, state)
        return state.value

    def url(self, name: str) -> str:
        config = self.load(name)
        return f"tcp://127.0.0.1:{config.docker_port}"

    def ip(self, name: str) -> str:
        """Where the machine's forwarded ports answer on this host."""
        self.load(name)
        return "127.0.0.1"

    def active(self) -> str | None:
        """The machine the docker CLI points at: by DOCKER_HOST, else by the current context."""
        host = os.environ.get("DOCKER_HOST", "")
        names = self.store.names()
        if host:
            for name in names:
                try:
                    if self.url(name) == host:
                        return name
                except MachineError:
                    continue
            return None
        current = current_context()
        for name in names:
            if current == context_name(name):
                return name
        return None

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
                rows[name] = MachineInfo(name, name == active, "", "Timeout", "", "", f"no answer within {timeout:g}s")
        return [rows[n] for n in names]

    def _info(self, name: str, active: str | None) -> MachineInfo:
        try:
            config = self.store.load(name)
        except MachineError as exc:
            return MachineInfo(name, False, "", State.ERROR.value, "", "", str(exc))
        try:
            state = self.status(name)
        except MachineError as exc:
            return MachineInfo(name, name == active, config.driver, State.ERROR.value, "", "", str(exc))
        url = f"tcp://127.0.0.1:{config.docker_port}" if state == State.RUNNING.value else ""
        docker = f"v{config.engine_version}" if config.engine_version else ""
        return MachineInfo(name, name == active, config.driver, state, url, docker, config.error)

    def inspect(self, name: str) -> dict[str, Any]:
        config = self.load(name)
        driver = self.driver(config)
        data = config.to_json()
        data["state"] = driver.state().value
        self._revive_watcher(config, data["state"])
        data["directory"] = str(self.directory(name))
        data["driver_details"] = driver.details()
        data["docker_context"] = context_name(name)
        data["forwards"] = [str(f) for f in self._safe_forwards(driver)]
        return data

    @staticmethod
    def _safe_forwards(driver: Driver) -> list[Any]:
        try:
            if driver.state() == State.RUNNING:
                return driver.list_forwards()
        except MachineError:
            pass
        return []

    def docker_flags(self, name: str) -> str:
        """`pymachine config`: docker CLI flags that reach the machine."""
        config = self.load(name)
        certs = CertPaths(self.directory(name))
        return f'--tlsverify\n--tlscacert="{certs.ca}"\n--tlscert="{certs.cert}"\n--tlskey="{certs.key}"\n-H=tcp://127.0.0.1:{config.docker_port}'

    def serial_log(self, name: str) -> Path:
        config = self.load(name)
        path = self.driver(config).serial_log()
        if path is None:
            raise DriverError(f"The {config.driver} driver keeps no console log", f"Open the VM's console in {config.driver}")
        return path

    def docker_version(self, name: str) -> dict[str, Any]:
        from .dockerapi import api_for

        config = self.load(name)
        api = api_for(self.directory(name), config.docker_port, timeout=5)
        try:
            return api.version()
        except Exception:
            raise MachineStateError(f"The Docker daemon of machine '{name}' does not answer", f"Run `pymachine status {name}`") from None
        finally:
            api.close()

    def use(self, name: str) -> None:
        config = self.load(name)
        if not self.contexts.exists(name):
            self._save_context(config)
        self.contexts.use(name)

    # -- ports --------------------------------------------------------------------------

    def _ports_in_use(self) -> set[int]:
        """Host ports other machines were given (they may be stopped, not listening)."""
        ports: set[int] = set()
        for name in self.store.names():
            try:
                config = self.store.load(name)
            except MachineError:
                continue
            ports.update(p for p in (config.ssh_port, config.docker_port) if p)
        return ports

    @staticmethod
    def _free_ports(count: int, exclude: set[int]) -> tuple[int, ...]:
        chosen: list[int] = []
        for _ in range(200):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            if port not in exclude and port not in chosen:
                chosen.append(port)
                if len(chosen) == count:
                    return tuple(chosen)
        raise PortUnavailable("No free TCP port on 127.0.0.1", "Free some ports, then try again")


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
