"""The per-machine object: its config read inside its lock, the lock held to the last
write, and the shared pieces every driver inherits from the contract."""

from __future__ import annotations

import fcntl
from dataclasses import dataclass
from pathlib import Path

import pytest

from pymachine.driver import DriverOptions, option
from pymachine.errors import MachineError, MachineNotFound, StoreError
from pymachine.guest.certs import CertificateAuthority
from pymachine.home import Home
from pymachine.locking import FileLock
from pymachine.machine import Machine
from pymachine.machines import Machines
from pymachine.progress import RecordingProgress
from pymachine.store import STATUS_ERROR, STATUS_READY, MachineConfig, Store


@pytest.fixture
def home(tmp_path: Path) -> Home:
    return Home(tmp_path / "home", progress=RecordingProgress(), cache=tmp_path / "cache")


def add(home: Home, name: str, **fields) -> Machine:
    with home.store.reserve(MachineConfig(name=name, driver="qemu", status=STATUS_READY, ssh_port=42022, docker_port=42376, **fields)):
        pass
    return Machine(home, name)


def lock_is_held(path: Path) -> bool:
    """True if someone holds the flock on `path` (a probe of its own, not a FileLock)."""
    with open(path, "a") as probe:
        try:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
    return False


def test_the_config_is_read_anew_inside_the_lock(home: Home) -> None:
    machine = add(home, "dev")
    assert machine.config.status == STATUS_READY  # read before another command changed it
    changed = home.store.load("dev")
    changed.status, changed.error = STATUS_ERROR, "changed by another command"
    home.store.save(changed)
    with machine.changing():
        assert lock_is_held(machine.directory / ".lock")
        assert machine.config.error == "changed by another command"
    assert not lock_is_held(machine.directory / ".lock")


def test_a_second_changing_command_waits_then_says_busy(home: Home) -> None:
    machine = add(home, "dev")
    other = FileLock(machine.directory / ".lock")
    other.acquire()
    try:
        with pytest.raises(StoreError, match="busy with another pymachine command"):
            with machine.changing(timeout=0.2):
                pass
    finally:
        other.release()


def test_rm_deletes_the_folder_while_it_holds_the_lock(home: Home, monkeypatch: pytest.MonkeyPatch) -> None:
    machine = add(home, "dev")
    seen = []
    delete = Store.remove

    def spy(store: Store, name: str) -> None:
        seen.append(lock_is_held(store.machine_dir(name) / ".lock"))
        delete(store, name)

    monkeypatch.setattr(Store, "remove", spy)
    machine.remove()
    assert seen == [True]
    assert not machine.exists()
    assert home.store.names() == []


def test_restart_takes_the_lock_once_for_both_halves(home: Home, monkeypatch: pytest.MonkeyPatch) -> None:
    machine = add(home, "dev")
    lock = machine.directory / ".lock"
    steps: list[tuple[str, bool]] = []
    taken: list[Path] = []
    acquire = FileLock.acquire

    def counting(self: FileLock, *args, **kwargs) -> None:
        taken.append(self.path)
        acquire(self, *args, **kwargs)

    monkeypatch.setattr(FileLock, "acquire", counting)
    monkeypatch.setattr(Machine, "_power_off", lambda self, verb, how: steps.append((verb, lock_is_held(lock))) or True)
    monkeypatch.setattr(Machine, "_start", lambda self, force: steps.append(("Starting", lock_is_held(lock))))
    monkeypatch.setattr(Machine, "after_ready", lambda self: steps.append(("watcher", lock_is_held(lock))))
    machine.restart()
    assert steps == [("Stopping", True), ("Starting", True), ("watcher", False)]
    assert taken.count(lock) == 1


def test_rm_of_a_removed_machine_is_machine_not_found(home: Home) -> None:
    machine = add(home, "dev")
    Machine(home, "dev").remove()
    with pytest.raises(MachineNotFound):
        machine.remove()


def test_a_machine_object_is_found_by_its_folder(home: Home) -> None:
    add(home, "dev")
    assert Machines(home).get("dev").name == "dev"
    with pytest.raises(MachineNotFound):
        Machines(home).get("ghost")


def test_the_ca_is_made_under_a_lock_of_its_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ca = CertificateAuthority(tmp_path / "certs")
    held = []
    make = CertificateAuthority._make_ca

    def spy(self: CertificateAuthority) -> None:
        held.append(lock_is_held(self.paths.directory / ".lock"))
        make(self)

    monkeypatch.setattr(CertificateAuthority, "_make_ca", spy)
    ca.ensure()
    ca.ensure()  # complete now: nothing is made, no lock needed
    assert held == [True]
    assert (tmp_path / "certs" / "ca.pem").exists()


@dataclass
class CountingOptions(DriverOptions):
    workers: int | None = option(None, "A number, or none")
    legacy: "int | None" = option(None, "The same, written as a string annotation")
    verbose: bool = option(False, "A switch")


def test_optional_int_options_are_converted_to_numbers() -> None:
    parsed = CountingOptions.parse({"workers": "5", "legacy": "7", "verbose": "yes"})
    assert parsed == CountingOptions(workers=5, legacy=7, verbose=True)
    with pytest.raises(MachineError, match="takes a number"):
        CountingOptions.parse({"workers": "five"})


def test_a_vm_that_stops_while_booting_fails_at_once_not_after_the_ssh_timeout(tmp_path: Path) -> None:
    """QEMU under -o accel=kvm on a host whose KVM cannot run the guest dies after it
    daemonized: waiting for SSH ends within about a second, naming `logs`."""
    import time

    from pymachine.driver import State
    from pymachine.errors import MachineStateError
    from pymachine.guest.provision import Provisioner

    class StoppedVM:
        def state(self) -> State:
            return State.STOPPED

    provisioner = Provisioner(MachineConfig(name="dev", driver="qemu"), tmp_path, StoppedVM(), None, None, RecordingProgress())
    booted = provisioner._still_running(lambda: False)
    assert booted() is False  # checked at most once a second
    started = time.monotonic()
    with pytest.raises(MachineStateError) as caught:
        while time.monotonic() - started < 5:
            booted()
            time.sleep(0.05)
    assert str(caught.value) == "The VM of machine 'dev' stopped while it was booting. Run `pymachine logs dev` to see how far it got"
    assert time.monotonic() - started < 1.5


def test_a_command_that_waits_for_a_machines_lock_says_for_which_command(tmp_path: Path) -> None:
    """`stop` during `create` waited seven silent seconds: now it says what it waits for,
    and a wait that runs out names the command still holding the machine."""
    creating = Home(tmp_path / "home", command="create")
    with creating.store.reserve(MachineConfig(name="dev", driver="qemu")):
        progress = RecordingProgress()
        stopping = Home(tmp_path / "home", progress=progress, command="stop")
        with pytest.raises(StoreError) as caught, stopping.store.lock("dev", timeout=0.3):
            pass
    assert ("note", "Machine 'dev' is busy: waiting for `create` to finish") in progress.events
    assert str(caught.value) == "Machine 'dev' is busy with another pymachine command (`create`). Wait for it to finish, then run `pymachine status dev`"
    # free again: taken at once, and no note
    quiet = RecordingProgress()
    with Home(tmp_path / "home", progress=quiet, command="start").store.lock("dev", timeout=0.3):
        pass
    assert quiet.events == []
