"""One machine: its folder, its config, its driver and its lock, and what is done to it.

Like docker-machine's host.Host, a Machine is what every command about one machine
works on: no caller reloads a config and builds a driver before each call.

Changing commands (start, stop, kill, restart, rm, provision, regenerate-certs,
upgrade) take the machine's lock once, read its config anew inside the lock, and keep
the lock until their last write or deletion. Queries (status, inspect, url ...) never
take it. Nothing here prints: progress goes to `home.progress`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pymachine.dockercontext import context_name
from pymachine.driver import (
    LARGE_FRAME_MTU,
    BootMedia,
    Driver,
    Feature,
    MachineSpec,
    Mount,
    State,
    host_port_free,
    load_driver,
)
from pymachine.errors import (
    DriverError,
    EngineFailed,
    Interrupted,
    MachineError,
    MachineNotFound,
    MachineRemoved,
    MachineStateError,
    PortUnavailable,
    StoreError,
)
from pymachine.forwarding.process import WatcherProcess
from pymachine.guest.certs import CertPaths, SSHKeyPair
from pymachine.guest.configmedium import write_config_medium
from pymachine.guest.provision import EngineBundle, Provisioner
from pymachine.guest.ssh import GuestSSH, SSHTarget
from pymachine.home import Home
from pymachine.hostports import machine_ports
from pymachine.image import BootImage, engine_for
from pymachine.store import (
    STATUS_CREATING,
    STATUS_ERROR,
    STATUS_READY,
    MachineConfig,
    atomic_write,
    validate_name,
)

STOP_TIMEOUT = 30.0
#: How long a changing command waits for another one on the same machine.
LOCK_TIMEOUT = 10.0
#: How long `start` waits for the engine to come back by itself before provisioning.
ENGINE_BOOT_TIMEOUT = 60.0
USER_KEY = "id_ed25519"
HOST_KEY = "ssh_host_ed25519_key"
CONFIG_MEDIUM = "config.iso"


class Machine:
    """One machine in a Home, found by its folder's name."""

    def __init__(self, home: Home, name: str) -> None:
        self.home = home
        self.name = validate_name(name)
        self.directory = home.store.machine_dir(name)
        self._config: MachineConfig | None = None
        self._drivers: dict[str, Driver] = {}
        #: (st_dev, st_ino) of the folder create made: another folder of that name is not ours
        self._folder_id: tuple[int, int] | None = None

    def __repr__(self) -> str:
        return f"Machine({self.name!r})"

    # -- what it is -------------------------------------------------------------------

    def exists(self) -> bool:
        return self.home.store.exists(self.name)

    @property
    def config(self) -> MachineConfig:
        """The machine's config, read from disk on first use (and anew in each `changing`)."""
        if self._config is None:
            self._config = self.home.store.load(self.name)
        return self._config

    def adopt(self, config: MachineConfig) -> None:
        """Take `config` as this machine's (create has just written it)."""
        self._config = config
        self._drivers.clear()
        self._folder_id = self._identity()

    def _identity(self) -> tuple[int, int] | None:
        try:
            info = self.directory.stat()
        except OSError:
            return None
        return (info.st_dev, info.st_ino)

    def removed_meanwhile(self) -> bool:
        """True if the folder create made is gone (an `rm -f` while it worked)."""
        return self._folder_id is not None and self._identity() != self._folder_id

    @contextlib.contextmanager
    def changing(self, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
        """Hold the machine's lock; whatever was read before is forgotten, so the
        command works on the config as it is on disk now."""
        with self.home.store.lock(self.name, timeout):
            self._forget()
            yield

    def _forget(self) -> None:
        self._config = None
        self._drivers.clear()

    def save(self) -> None:
        self.home.store.save(self.config)

    def spec(self) -> MachineSpec:
        config = self.config
        boot = self.directory / "boot"

        def opt(path: str) -> Path | None:
            return Path(path) if path else None

        media = BootMedia(
            iso=Path(config.iso),
            kernel=opt(config.kernel),
            initrd=opt(config.initrd),
            cmdline=config.cmdline,
            pvh_kernel=boot / "vmlinux" if (boot / "vmlinux").exists() else None,
        )
        return MachineSpec(
            # The folder's name, never the config's: the folder is the machine's identity.
            name=self.name,
            directory=self.directory,
            cpus=config.cpus,
            memory_mb=config.memory_mb,
            disk_mb=config.disk_mb,
            boot=media,
            config_medium=self.directory / CONFIG_MEDIUM,
            ssh_port=config.ssh_port,
            docker_port=config.docker_port,
            mounts=tuple(Mount.from_dict(m) for m in config.mounts),
            arch=config.arch,
        )

    def driver(self, role: str = "cli") -> Driver:
        """The machine's driver; "watcher" gets a control channel of its own (see Driver)."""
        if role not in self._drivers:
            config = self.config
            if not config.driver:
                raise MachineError(f"Machine '{self.name}' was not fully created", f"Run `pymachine rm -f {self.name}`")
            cls = load_driver(config.driver)
            try:
                options = cls.options_class.from_dict(config.driver_options)
            except MachineError as exc:
                raise StoreError(f"Machine '{self.name}' has a damaged config.json ({exc.message})", f"Run `pymachine rm -f {self.name}` to remove it") from None
            self._drivers[role] = cls(self.spec(), options, self.home.runner, client_role=role)
        return self._drivers[role]

    def ssh_target(self, driver: Driver | None = None) -> SSHTarget:
        endpoint = (driver or self.driver()).ssh_endpoint()
        host_key = SSHKeyPair.public_of(self.directory / HOST_KEY)
        return SSHTarget(self.name, endpoint.host, endpoint.port, "root", self.directory / USER_KEY, " ".join(host_key.split()[:2]))

    def ssh(self, driver: Driver | None = None) -> GuestSSH:
        return self.home.ssh(self.ssh_target(driver))

    @property
    def certs(self) -> CertPaths:
        """The machine's folder as a DOCKER_CERT_PATH."""
        return CertPaths(self.directory)

    @property
    def watcher(self) -> WatcherProcess:
        return WatcherProcess(self.home.root, self.directory)

    # -- create -----------------------------------------------------------------------

    def build(self, image: BootImage) -> None:
        """From a reserved folder to a ready Docker; create holds the lock around it."""
        progress = self.home.progress
        try:
            with progress.step("Preparing keys, certificates and the config medium"):
                self._prepare(image)
            driver = self.driver()
            # Before each step that makes something: after an `rm -f`, a driver would make
            # the folder anew (mkdir -p) and a VM in it that no config knows.
            self._still_here()
            with progress.step(f"Creating the {self.config.driver} VM"):
                driver.create()
            self._still_here()
            driver = self._boot(driver)
            self._still_here()
            self._provision(driver, image.engine)
            self._still_here()
            self._mark_ready()
        except BaseException as exc:
            if self.removed_meanwhile():
                # `rm -f` took the folder (and stopped the VM): what failed after is no news.
                with contextlib.suppress(Exception):
                    (self._drivers.get("cli") or self.driver()).kill()
                raise MachineRemoved(f"Machine '{self.name}' was removed while it was being created", f"Run `pymachine create {self.name}` to make it again") from None
            if isinstance(exc, KeyboardInterrupt):
                self._fail("interrupted during create")
                raise Interrupted(f"Creating machine '{self.name}' was interrupted; it is left in state Error", f"Run `pymachine rm -f {self.name}` to clean it up") from None
            self._fail(str(exc) or type(exc).__name__)
            raise

    def _still_here(self) -> None:
        if self.removed_meanwhile():
            raise MachineRemoved(f"Machine '{self.name}' was removed while it was being created", f"Run `pymachine create {self.name}` to make it again")

    def _prepare(self, image: BootImage) -> None:
        config = self.config
        self._pin(image)
        user = SSHKeyPair.generate(f"pymachine@{self.name}")
        user.write(self.directory / USER_KEY)
        host = SSHKeyPair.generate(f"root@{self.name}")
        host.write(self.directory / HOST_KEY)
        mounts = [Mount.from_dict(m) for m in config.mounts]
        config.guest_mtu = LARGE_FRAME_MTU if load_driver(config.driver).supports(Feature.LARGE_FRAMES) else 0
        write_config_medium(self.directory / CONFIG_MEDIUM, self.name, user.public_line, host.private_pem, mounts, config.guest_mtu)
        keytype, blob = host.public_line.split()[:2]
        atomic_write(self.directory / "known_hosts", f"pymachine-{self.name} {keytype} {blob}\n", mode=0o644)
        self.home.ca.ensure()
        self.home.ca.copy_client(self.certs)
        config.ssh_port, config.docker_port = machine_ports(self.home.store)
        self.save()

    def _pin(self, image: BootImage) -> None:
        """Keep this machine's own copy of the boot files (see BootImage.pin)."""
        config = self.config
        direct = load_driver(config.driver).supports(Feature.DIRECT_KERNEL_BOOT)
        pinned = image.pin(self.directory, kernel=direct)
        config.iso = str(pinned.iso)
        config.kernel = str(pinned.kernel or "")
        config.initrd = str(pinned.initrd or "")
        config.cmdline = pinned.cmdline
        config.image_version = pinned.version
        config.engine_bundle = str(image.engine_bundle or "")
        self._drivers.clear()

    def _mark_ready(self) -> None:
        self.config.status = STATUS_READY
        self.config.error = ""
        self.save()
        self.home.store.clear_creator(self.name)

    def _fail(self, message: str, driver: Driver | None = None) -> None:
        """Leave a failed create or start visible as Error, with no VM process left running."""
        with contextlib.suppress(Exception):
            (driver or self._drivers.get("cli") or self.driver()).kill()
        with contextlib.suppress(Exception):
            if self.exists() and not self.removed_meanwhile():
                self.config.status = STATUS_ERROR
                self.config.error = message.splitlines()[0][:300] if message else "failed"
                self.save()

    # -- lifecycle ----------------------------------------------------------------------

    def _boot(self, driver: Driver) -> Driver:
        """Start the VM; if a host port it needs was taken meanwhile, pick new ones and retry."""
        config = self.config
        for attempt in range(3):
            busy = [p for p in (config.ssh_port, config.docker_port) if not host_port_free("tcp", "127.0.0.1", p)]
            if busy:
                self.home.progress.note(
                    f"Port {busy[0]} is taken now; moving machine '{self.name}' to new ports. Shells set up before must run `eval $(pymachine env {self.name})` again"
                )
                driver = self._move_ports()
            try:
                with self.home.progress.step("Starting the VM"):
                    driver.start()
                return driver
            except PortUnavailable:
                if attempt == 2:
                    raise
                driver = self._move_ports()
        return driver

    def _move_ports(self) -> Driver:
        config = self.config
        config.ssh_port, config.docker_port = machine_ports(self.home.store, avoid={config.ssh_port, config.docker_port})
        self.save()
        self._drivers.clear()
        return self.driver()

    def _provision(self, driver: Driver, engine: EngineBundle | None, *, reinstall: bool = False, regenerate: bool = False) -> None:
        with self.ssh(driver) as ssh:
            Provisioner(self.config, self.directory, driver, ssh, self.home.ca, self.home.progress).run(
                engine, self.config.driver, reinstall=reinstall, regenerate=regenerate
            )
        if engine is not None and engine.version:
            self.config.engine_version = engine.version
        self._save_context()

    def _engine_came_back(self, driver: Driver) -> bool:
        """A provisioned guest starts its engine at boot: wait for it over TLS alone.

        No SSH round trips while dockerd starts (under emulation they slow it down);
        if it does not answer in time, the caller provisions over SSH, which also
        diagnoses what went wrong.
        """
        from pymachine.guest.dockerapi import DockerAPI
        from pymachine.guest.provision import console_says_disk_full

        endpoint = driver.docker_endpoint()
        api = DockerAPI(endpoint.host, endpoint.port, self.certs)
        log = driver.serial_log()
        try:
            with self.home.progress.step("Waiting for Docker"):
                # A guest whose console says its data disk is full will not get dockerd up.
                api.wait_ready(ENGINE_BOOT_TIMEOUT, hopeless=(lambda: console_says_disk_full(log)) if log else None)
            return True
        except MachineError:
            self.home.progress.note("Docker did not come back on its own; provisioning over SSH")
            return False
        finally:
            api.close()

    def _save_context(self) -> None:
        try:
            if self.home.contexts.save(self.name, self.config.docker_port, self.certs):
                return
            self.home.progress.note("No docker CLI found: skipped the docker context (use `pymachine env`)")
        except MachineError as exc:
            self.home.progress.note(f"Could not save the docker context: {exc}")

    def start(self, force: bool = False) -> None:
        """Boot a stopped machine and wait for its Docker daemon."""
        with self.changing():
            self._start(force)
        self.after_ready()

    def _start(self, force: bool) -> None:
        config = self.config
        driver = self.driver()
        state = driver.state()
        if state == State.RUNNING and config.status == STATUS_ERROR:
            # Left running on purpose (its engine failed, e.g. on a full data disk): try again.
            self._recover(driver)
            return
        if state == State.RUNNING:
            raise MachineStateError(f"Machine '{self.name}' is already running", f"Run `pymachine restart {self.name}` to reboot it")
        if state == State.NOT_FOUND:
            raise MachineStateError(f"The VM of machine '{self.name}' no longer exists in {config.driver}", f"Run `pymachine rm -f {self.name}` and create it again")
        self.guard(force)
        ports_before = (config.ssh_port, config.docker_port)
        driver = self._boot(driver)
        try:
            if config.status == STATUS_READY and self._engine_came_back(driver):
                if (config.ssh_port, config.docker_port) != ports_before:
                    self._save_context()
            else:
                engine = engine_for(config, self.home.cache) if config.status != STATUS_READY else None
                self._provision(driver, engine)
        except KeyboardInterrupt:
            self._fail("interrupted during start", driver)
            raise Interrupted(f"Starting machine '{self.name}' was interrupted; it was stopped again", f"Run `pymachine start {self.name}`") from None
        except EngineFailed as exc:
            # SSH answers: keep the VM up, so `pymachine ssh` can get in to fix it.
            self._mark_error(exc)
            raise
        except MachineError:
            driver.kill()
            raise
        self._mark_ready()

    def _recover(self, driver: Driver) -> None:
        """Provision a running machine left in Error; Ready again if its engine comes up."""
        try:
            self._provision(driver, engine_for(self.config, self.home.cache))
        except EngineFailed as exc:
            self._mark_error(exc)
            raise
        self._mark_ready()

    def _mark_error(self, exc: MachineError) -> None:
        """State Error with the reason, the VM left as it is."""
        self.config.status = STATUS_ERROR
        self.config.error = exc.message.splitlines()[0][:300]
        self.save()

    def stop(self, timeout: float = STOP_TIMEOUT) -> bool:
        """Shut the guest down cleanly (force it after `timeout`); False if it was not running."""
        with self.changing():
            return self._power_off("Stopping", lambda driver: driver.stop(timeout))

    def kill(self) -> bool:
        """Power the VM off at once; False if it was not running."""
        with self.changing():
            return self._power_off("Killing", lambda driver: driver.kill())

    def restart(self, force: bool = False) -> None:
        """Stop, then start, under one hold of the lock."""
        with self.changing():
            self._power_off("Stopping", lambda driver: driver.stop(STOP_TIMEOUT))
            self._start(force)
        self.after_ready()

    def _power_off(self, verb: str, how: Callable[[Driver], None]) -> bool:
        driver = self.driver()
        self.before_stop(driver)
        if driver.state() in (State.STOPPED, State.NOT_FOUND):
            return False
        with self.home.progress.step(f"{verb} machine '{self.name}'"):
            how(driver)
        return True

    def remove(self, force: bool = False) -> None:
        """Delete the machine: its VM, files and docker context. `force` goes on past
        a damaged config, driver errors and a lock another command holds; a VM its
        driver could not remove is then found from the folder itself (Driver.reap)."""
        with contextlib.ExitStack() as held:
            try:
                held.enter_context(self.home.store.lock(self.name, timeout=2 if force else LOCK_TIMEOUT))
            except StoreError:
                if not force:
                    raise
                self.home.progress.note(f"Machine '{self.name}' is busy with another command; removing it anyway (--force)")
            self._forget()
            try:
                config: MachineConfig | None = self.config
            except MachineNotFound:
                raise
            except MachineError:
                if not force:
                    raise
                config = None
            removed = False
            if config is not None and config.driver:
                try:
                    driver = self.driver()
                    self.before_stop(driver)
                    with self.home.progress.step(f"Removing the VM of machine '{self.name}'"):
                        driver.remove()
                    removed = True
                except MachineError:
                    if not force:
                        raise
            if force and not removed:
                self._reap()
            try:
                self.home.contexts.remove(self.name)
            except MachineError:
                if not force:
                    raise
            self.home.store.remove(self.name)

    def _reap(self) -> None:
        """Stop the watcher and whatever VM each driver finds made from this folder."""
        from pymachine.driver import driver_names

        with contextlib.suppress(Exception):
            self.watcher.stop(None)
        for name in driver_names():
            try:
                done = load_driver(name).reap(self.directory, self.name, self.home.runner)
            except Exception as exc:  # noqa: BLE001 - rm -f goes on; the rest is still removed
                self.home.progress.note(f"Could not look for a {name} VM of machine '{self.name}': {exc}")
                continue
            for line in done:
                self.home.progress.note(line)

    def provision(self, reinstall: bool = False) -> None:
        """Run provisioning again on a running machine (installs, certificates, config)."""
        with self.changing():
            driver = self._running_driver()
            try:
                self._provision(driver, engine_for(self.config, self.home.cache), reinstall=reinstall)
            except EngineFailed as exc:
                self._mark_error(exc)
                raise
            self._mark_ready()
        self.after_ready()

    def grow_disk(self, size_mb: int, restart: bool = False) -> tuple[int, int]:
        """Grow the data disk to `size_mb` MB: (its size before, after). A running machine's
        filesystem grows at once where the driver grows disks online; a stopped one's at its
        next boot. `restart` stops and starts a running machine whose driver cannot."""
        with self.changing():
            driver = self.driver()
            if not driver.supports(Feature.DISK_GROW):
                raise DriverError(f"The {self.config.driver} driver cannot grow data disks", "Run `pymachine drivers` to see what each driver can do")
            before = driver.disk_size_mb()
            if size_mb < before:
                raise MachineError(
                    f"The data disk of machine '{self.name}' is {_size_text(before)}; it can grow, never shrink to {_size_text(size_mb)}",
                    f"Run `pymachine disk grow {self.name} SIZE` with SIZE above {_size_text(before)}",
                )
            if size_mb == before:
                self.home.progress.note(f"The data disk of machine '{self.name}' is already {_size_text(before)}")
                return before, before
            running = driver.state() not in (State.STOPPED, State.NOT_FOUND, State.SAVED)
            online = running and driver.supports(Feature.ONLINE_DISK_GROW)
            if running and not online:
                if not restart:
                    raise MachineStateError(
                        f"Machine '{self.name}' is running, and the {self.config.driver} driver grows its data disk only while it is stopped",
                        f"Run `pymachine stop {self.name}` first, or `pymachine disk grow --restart {self.name} {_size_text(size_mb)}`",
                    )
                self._power_off("Stopping", lambda d: d.stop(STOP_TIMEOUT))
            with self.home.progress.step(f"Growing the data disk of machine '{self.name}' to {_size_text(size_mb)}"):
                driver.grow_disk(size_mb)
            self.config.disk_mb = size_mb
            self.save()
            if online:
                self._grow_online(driver, size_mb)
            elif running:
                self._start(force=False)
            else:
                self.home.progress.note(f"The guest grows its filesystem to the new size when it boots: run `pymachine start {self.name}`")
        if running:
            self.after_ready()
        return before, size_mb

    def _grow_online(self, driver: Driver, size_mb: int) -> None:
        """The guest's filesystem to the disk's new size, then Docker checked (and brought
        back, where a full disk had stopped it)."""
        from pymachine.guest.provision import grow_filesystem

        with self.home.progress.step("Growing the guest's filesystem"), self.ssh(driver) as ssh:
            grown_kb = grow_filesystem(ssh, size_mb)
        if grown_kb < size_mb * 1024 * 0.9:
            # The guest's kernel has not seen the new size yet; its boot grows the filesystem.
            self.home.progress.note(f"The guest's filesystem is {grown_kb // 1024} MB for now; it takes the whole disk at the next `pymachine restart {self.name}`")
        self._recover(driver)

    def regenerate_certs(self, include_ca: bool = False) -> None:
        """New client credentials (and CA if asked) and a new server certificate, installed."""
        with self.changing():
            driver = self._running_driver()
            self.home.ca.regenerate(include_ca=include_ca)
            with self.ssh(driver) as ssh:
                provisioner = Provisioner(self.config, self.directory, driver, ssh, self.home.ca, self.home.progress)
                provisioner.wait_for_ssh(timeout=30)
                facts = provisioner.facts()
                provisioner.configure(facts, self.config.driver, regenerate=True)
                provisioner.start_engine(restart=facts.engine_running)
                provisioner.wait_for_docker()
            self._save_context()

    def upgrade(self) -> None:
        """Move the machine to the current boot image and engine bundle, restarting it."""
        with self.changing():
            image = BootImage.locate(self.home.cache, arch=self.config.arch, note=self.home.progress.note)
            driver = self.driver()
            if driver.state() == State.RUNNING:
                with self.home.progress.step(f"Stopping machine '{self.name}'"):
                    self.before_stop(driver)
                    driver.stop(STOP_TIMEOUT)
            self._pin(image)
            self.save()
            driver = self._boot(self.driver())
            self._provision(driver, image.engine)
            self._mark_ready()
        self.after_ready()

    def _running_driver(self) -> Driver:
        driver = self.driver()
        if driver.state() != State.RUNNING:
            raise MachineStateError(f"Machine '{self.name}' is not running", f"Run `pymachine start {self.name}`")
        return driver

    # -- the forward watcher and the hypervisor guard -------------------------------------

    def guard(self, force: bool) -> None:
        """Refuse to start the VM while another hypervisor runs VMs (see pymachine.guard)."""
        from pymachine.guard import check_before_start

        driver = self.driver()
        check_before_start(self.home.runner, type(driver), driver.options, force, self.home.progress, self.config.arch)

    def after_ready(self) -> None:
        """Start the machine's forward watcher, where its driver can forward at run time."""
        if self.driver().supports(Feature.RUNTIME_FORWARDS):
            self.watcher.ensure_running()

    def before_stop(self, driver: Driver | None = None) -> None:
        """Stop the watcher and take down the forwards it made (some hypervisors keep them)."""
        self.watcher.stop(driver)

    def revive_watcher(self, state: State | str) -> None:
        """A watcher that died while its machine runs is started again by the next command."""
        if self.config.status == STATUS_READY and str(state) == State.RUNNING.value and self.watcher.keeper_pid() is None:
            self.after_ready()

    def forward_watcher(self) -> Any:
        """The watcher loop for this machine, with a driver (and QMP socket) of its own."""
        from pymachine.forwarding.watcher import ForwardWatcher

        driver = self.driver(role="watcher")
        return ForwardWatcher(self.name, self.directory, driver, self.config.forward_bind, lambda: self.ssh(driver), self.home.store)

    def set_listener_forwarding(self, enabled: bool | None = None, ignore: list[str] | None = None, unignore: list[str] | None = None) -> None:
        """Turn listener forwarding on or off and change the ignored ports, in config.json;
        a running watcher picks it up within about a second."""
        from pymachine.forwarding.listeners import normalize_ignore_ports

        with self.changing():
            config = self.config
            if enabled is not None:
                config.listener_forwarding = enabled
            ports = list(config.ignore_ports)
            for spec in normalize_ignore_ports(ignore or [], "--ignore", "pymachine ports --help"):
                if spec not in ports:
                    ports.append(spec)
            gone = set(normalize_ignore_ports(unignore or [], "--unignore", "pymachine ports --help"))
            config.ignore_ports = [spec for spec in ports if spec not in gone]
            self.save()

    def listener_scanner(self, watcher: Any) -> Any:
        """The guest-listener scan that feeds `watcher` (pymachine.forwarding.listeners).

        Its settings are read from config.json again about once a second, so turning
        listener forwarding off or ignoring a port applies to the running watcher.
        """
        from pymachine.forwarding.listeners import ListenerScanner, ListenerSettings, apply_listener_forwards, proxies_listening

        def settings() -> ListenerSettings:
            config = self.home.store.load(self.name)
            return ListenerSettings.from_config(config.listener_forwarding, config.ignore_ports)

        return ListenerScanner(
            lambda: self.ssh(watcher.driver),
            lambda wanted: apply_listener_forwards(watcher, wanted),
            settings,
            self.config.forward_bind,
            seen=lambda listeners: watcher.guest_proxies_seen(proxies_listening(listeners)),
        )

    # -- queries ------------------------------------------------------------------------

    def state(self) -> State:
        return self.driver().state()

    def status(self) -> str:
        """The state `ls` shows: the VM's, or Error for a machine that failed to provision."""
        config = self.config
        if config.status == STATUS_ERROR or not config.driver:
            return State.ERROR.value
        state = self.driver().state()
        if config.status == STATUS_CREATING and state == State.RUNNING:
            return State.STARTING.value
        self.revive_watcher(state)
        return state.value

    @property
    def url(self) -> str:
        return self.config.docker_url

    def ip(self) -> str:
        """Where the machine's forwarded ports answer on this host."""
        return self.driver().docker_endpoint().host

    def inspect(self) -> dict[str, Any]:
        driver = self.driver()
        data = self.config.to_json()
        data["state"] = driver.state().value
        self.revive_watcher(data["state"])
        data["directory"] = str(self.directory)
        data["driver_details"] = driver.details()
        data["docker_context"] = context_name(self.name)
        forwards: list[Any] = []
        with contextlib.suppress(MachineError):
            if data["state"] == State.RUNNING.value:
                forwards = driver.list_forwards()
        data["forwards"] = [str(f) for f in forwards]
        data["host_memory_mb"] = self.host_memory_mb() if data["state"] == State.RUNNING.value else None
        return data

    def host_memory_mb(self) -> int | None:
        """What the VM holds of this host's memory now, where its driver can tell."""
        try:
            return self.driver().host_memory_mb()
        except MachineError:
            return None

    def docker_flags(self) -> str:
        """`pymachine config`: docker CLI flags that reach the machine."""
        certs = self.certs
        return f'--tlsverify\n--tlscacert="{certs.ca}"\n--tlscert="{certs.cert}"\n--tlskey="{certs.key}"\n-H={self.url}'

    def serial_log(self) -> Path:
        driver = self.driver()
        path = driver.serial_log() if driver.supports(Feature.SERIAL_LOG) else None
        if path is None:
            raise DriverError(f"The {self.config.driver} driver keeps no console log", f"Open the VM's console in {self.config.driver}")
        return path

    def docker_version(self) -> dict[str, Any]:
        from pymachine.guest.dockerapi import api_for

        api = api_for(self.directory, self.config.docker_port, timeout=5)
        try:
            return api.version()
        except Exception:
            raise MachineStateError(f"The Docker daemon of machine '{self.name}' does not answer", f"Run `pymachine status {self.name}`") from None
        finally:
            api.close()

    def use(self) -> None:
        """Make the machine's docker context the docker CLI's current one; refused for a
        machine whose Docker cannot answer, which would leave every docker command failing."""
        config = self.config
        state = self.state()
        if state != State.RUNNING:
            raise MachineStateError(f"Machine '{self.name}' is not running ({state.value})", f"Run `pymachine start {self.name}` first")
        if config.status != STATUS_READY or not config.docker_port:
            reason = config.error or f"status {config.status}"
            raise MachineStateError(f"Machine '{self.name}' is not ready ({reason})", f"Run `pymachine provision {self.name}`, or `pymachine rm {self.name}` and create it again")
        if not self.home.contexts.exists(self.name):
            self._save_context()
        self.home.contexts.use(self.name)


def _size_text(size_mb: int) -> str:
    """40960 -> "40G", 1536 -> "1536M": as `disk grow` takes sizes."""
    return f"{size_mb // 1024}G" if size_mb % 1024 == 0 else f"{size_mb}M"
