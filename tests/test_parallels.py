"""The Parallels driver against its faithful fakes of prlctl and prlsrvctl.

What the real tools do that these tests hold the driver to (see docs/drivers.md):
docker-machine-parallels' create sequence, the statuses prlctl prints, its words for a
missing VM, NAT rules that are global to the Shared network (so names must not clash
between VMs), a duplicate rule name, a busy host port nobody reports, a guest that
ignores a graceful stop, and the license edition the CLI needs.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from pymachine.driver import Feature, PortForward, State
from pymachine.drivers.parallels import LIVE_STATUSES, VM_STATES, ParallelsDriver, ParallelsOptions
from pymachine.errors import (
    DriverError,
    DriverNotAvailable,
    MachineStateError,
    PortUnavailable,
)
from pymachine.runner import Completed, Runner

from .contract import free_port
from .fake_harnesses import parallels_driver
from .fakes.parallels_model import PROCESS_STATES, VM_STATE_WORDS, FakeParallels


@pytest.fixture
def made(tmp_path: Path) -> tuple[ParallelsDriver, FakeParallels]:
    driver, fake = parallels_driver(tmp_path, name="dev")
    driver.create()
    return driver, fake


def recorded(runner: Runner) -> list[Completed]:
    seen: list[Completed] = []
    runner.observers.append(seen.append)
    return seen


def uuid_of(fake: FakeParallels, name: str = "dev") -> str:
    vm = fake.vm(name)
    assert vm is not None
    return vm["uuid"]


def test_create_runs_the_prlctl_sequence(tmp_path: Path) -> None:
    driver, fake = parallels_driver(tmp_path, name="dev")
    driver.create()
    spec, folder = driver.spec, driver.spec.directory
    assert fake.calls() == [
        ["prlctl", "list", "dev", "--output", "status", "--no-header"],
        ["prlctl", "create", "dev", "--distribution", "linux", "--dst", str(folder / "parallels"), "--no-hdd"],
        ["prlctl", "list", "-a", "-j"],
        ["prlctl", "list", "-i", "-j", "dev"],
        ["prlctl", "set", "dev", "--cpus", "2", "--memsize", "1024", "--startup-view", "headless", "--device-bootorder", "cdrom0"],
        ["prlctl", "set", "dev", "--device-set", "cdrom0", "--image", str(spec.boot.iso), "--connect"],
        ["prlctl", "set", "dev", "--device-add", "cdrom", "--image", str(spec.config_medium), "--connect"],
        ["prlctl", "set", "dev", "--device-add", "hdd", "--size", "4096"],
        ["prlctl", "set", "dev", "--device-set", "net0", "--type", "shared", "--adapter-type", "virtio"],
        ["prlctl", "set", "dev", "--device-add", "serial", "--output", str(folder / "serial.log")],
    ]
    vm = fake.vm("dev")
    assert vm is not None
    assert set(vm["devices"]) == {"cdrom0", "cdrom1", "hdd0", "net0", "serial0"}
    assert vm["devices"]["cdrom1"]["image"] == str(spec.config_medium)
    assert (folder / "parallels.json").exists()


def test_nested_virtualization_is_an_option(tmp_path: Path) -> None:
    driver, fake = parallels_driver(tmp_path, name="dev")
    driver.options = ParallelsOptions(nested_virt=True)
    driver.create()
    assert fake.calls()[-1] == ["prlctl", "set", "dev", "--nested-virt", "on"]


@pytest.mark.parametrize("status", sorted(VM_STATE_WORDS.values()))
def test_every_word_prlctl_prints_maps(made: tuple[ParallelsDriver, FakeParallels], status: str) -> None:
    """The fake's list is prlctl's own (vmstate2str), not the driver's: each word must map."""
    driver, fake = made
    fake.set_status("dev", status)
    assert status in VM_STATES, f"prlctl prints '{status}' and the driver does not know it"
    assert driver.state() == VM_STATES[status]


def test_the_words_beyond_the_everyday_five() -> None:
    # What each SDK state means (the Parallels SDK; libvirt's vz driver maps them alike).
    assert {s: VM_STATES[s] for s in ("snapshoting", "migrating", "reconnecting", "compacting", "mounted", "del_snapshot", "syncing", "unknown")} == {
        "snapshoting": State.RUNNING,
        "migrating": State.RUNNING,
        "reconnecting": State.RUNNING,
        "compacting": State.STOPPED,
        "mounted": State.STOPPED,
        "del_snapshot": State.SAVED,
        "syncing": State.STOPPING,
        "unknown": State.ERROR,
    }
    assert {"snapshoting", "migrating", "reconnecting"} <= LIVE_STATUSES
    assert not {"compacting", "mounted", "del_snapshot", "syncing", "suspended", "invalid", "unknown"} & LIVE_STATUSES
    # The driver acts on a VM exactly when prlctl has a process to act on (the fake's model).
    assert set(LIVE_STATUSES) == PROCESS_STATES


@pytest.mark.parametrize(("status", "killed"), [("snapshoting", True), ("migrating", True), ("mounted", False), ("compacting", False)])
def test_kill_acts_only_on_a_vm_with_a_process(made: tuple[ParallelsDriver, FakeParallels], status: str, killed: bool) -> None:
    driver, fake = made
    fake.set_status("dev", status)
    driver.kill()
    assert (["prlctl", "stop", "dev", "--kill"] in fake.calls()) == killed


def test_the_reference_statuses() -> None:
    assert {s: VM_STATES[s] for s in ("running", "paused", "suspended", "stopping", "stopped")} == {
        "running": State.RUNNING,
        "paused": State.PAUSED,
        "suspended": State.SAVED,
        "stopping": State.STOPPING,
        "stopped": State.STOPPED,
    }


def test_a_missing_vm(tmp_path: Path) -> None:
    driver, fake = parallels_driver(tmp_path, name="ghost")
    seen = recorded(driver.runner)
    assert driver.state() == State.NOT_FOUND
    assert seen[-1].returncode == 255
    assert seen[-1].stderr.startswith("Failed to get VM config: The virtual machine could not be found.")
    assert driver.list_forwards() == []
    driver.remove_forward(PortForward("tcp", "127.0.0.1", 8080, 80))
    driver.stop(1)
    driver.kill()
    driver.remove()
    with pytest.raises(MachineStateError, match=r"Parallels VM 'ghost' does not exist.*pymachine rm -f ghost"):
        driver.start()
    with pytest.raises(MachineStateError, match="does not exist"):
        driver.add_forward(PortForward("tcp", "127.0.0.1", 8080, 80))


def test_an_unreachable_parallels_service_is_retried(made: tuple[ParallelsDriver, FakeParallels]) -> None:
    driver, fake = made
    fake.set_faults(login_failed=2)
    assert driver.state() == State.STOPPED
    fake.set_faults(login_failed=10)
    with pytest.raises(DriverError, match=r"Login failed:.*Run `pymachine status dev`"):
        driver.state()


def test_ssh_and_docker_rules_live_while_the_vm_runs(made: tuple[ParallelsDriver, FakeParallels]) -> None:
    driver, fake = made
    uuid = uuid_of(fake)
    short = uuid.strip("{}")[:8]
    assert fake.rules()["tcp"] == {}
    driver.start()
    assert fake.rules()["tcp"] == {
        f"pm-dev-{short}-ssh": {"source port": driver.spec.ssh_port, "destination IP/VM id": uuid, "destination port": 22},
        f"pm-dev-{short}-docker": {"source port": driver.spec.docker_port, "destination IP/VM id": uuid, "destination port": 2376},
    }
    assert fake.forward_works("dev", "tcp", driver.spec.ssh_port, 22)
    assert driver.list_forwards() == []
    driver.stop(timeout=5)
    assert fake.rules()["tcp"] == {}


def test_rule_names_do_not_clash_between_vms(tmp_path: Path) -> None:
    first, fake = parallels_driver(tmp_path / "a", name="dev")
    port1 = free_port()
    port2 = free_port()
    second, _ = parallels_driver(tmp_path / "b", name="web")
    # One host: the second driver uses the first's fake tools and state.
    second.runner = first.runner
    first.create()
    second.create()
    first.add_forward(PortForward("tcp", "127.0.0.1", port1, 80))
    second.add_forward(PortForward("tcp", "127.0.0.1", port2, 80))
    names = set(fake.rules()["tcp"])
    assert len(names) == 2 and all(name.startswith(("pm-dev-", "pm-web-")) for name in names)
    assert first.list_forwards() == [PortForward("tcp", "127.0.0.1", port1, 80)]
    assert second.list_forwards() == [PortForward("tcp", "127.0.0.1", port2, 80)]
    with pytest.raises(PortUnavailable, match=rf"{port2}/tcp is already forwarded by Parallels NAT rule 'pm-web-"):
        first.add_forward(PortForward("tcp", "127.0.0.1", port2, 80))
    first.remove()
    assert list(fake.rules()["tcp"]) == [n for n in names if n.startswith("pm-web-")]


def test_a_duplicate_rule_name_is_refused_as_prlsrvctl_does(made: tuple[ParallelsDriver, FakeParallels]) -> None:
    driver, fake = made
    port = free_port()
    argv = ["prlsrvctl", "net", "set", "Shared", "--nat-tcp-add", f"web,{port},{{x}},80"]
    driver.runner.run(argv)
    again = driver.runner.run(argv, check=False)
    assert again.returncode != 0
    assert again.stderr.strip() == "The rule with 'web' name already exists!"
    assert fake.rules()["tcp"]["web"]["source port"] == port


def test_a_rule_made_by_hand_on_the_port_is_refused(made: tuple[ParallelsDriver, FakeParallels]) -> None:
    driver, fake = made
    port = free_port()
    fake.add_rule_by_hand("tcp", "by-hand", port, "10.211.55.9", 80)
    with pytest.raises(PortUnavailable, match="rule 'by-hand'"):
        driver.add_forward(PortForward("tcp", "127.0.0.1", port, 80))
    assert driver.list_forwards() == []


def test_a_busy_host_port_is_refused(made: tuple[ParallelsDriver, FakeParallels]) -> None:
    driver, fake = made
    driver.start()
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    busy = holder.getsockname()[1]
    try:
        before = len(fake.calls())
        with pytest.raises(PortUnavailable, match=rf"Host port {busy}/tcp is already in use\. Run `pymachine ports dev`"):
            driver.add_forward(PortForward("tcp", "127.0.0.1", busy, 80))
        assert not any("--nat-tcp-add" in call for call in fake.calls()[before:])
    finally:
        holder.close()


def test_start_refuses_a_busy_ssh_port(made: tuple[ParallelsDriver, FakeParallels]) -> None:
    driver, fake = made
    holder = socket.socket()
    holder.bind(("127.0.0.1", driver.spec.ssh_port))
    holder.listen(1)
    try:
        with pytest.raises(PortUnavailable, match="pymachine will pick another port"):
            driver.start()
    finally:
        holder.close()
    assert driver.state() == State.STOPPED
    assert fake.rules()["tcp"] == {}


def test_stop_kills_a_guest_that_ignores_it(made: tuple[ParallelsDriver, FakeParallels]) -> None:
    driver, fake = made
    driver.start()
    fake.set_faults(stop="ignore", stop_hang=30)
    driver.stop(timeout=1)
    assert driver.state() == State.STOPPED
    stops = [c for c in fake.calls() if c[1] == "stop"]
    assert stops == [["prlctl", "stop", "dev"], ["prlctl", "stop", "dev", "--kill"]]


def test_kill_is_stop_kill(made: tuple[ParallelsDriver, FakeParallels]) -> None:
    driver, fake = made
    driver.start()
    driver.kill()
    assert driver.state() == State.STOPPED
    assert [c for c in fake.calls() if c[1] == "stop"] == [["prlctl", "stop", "dev", "--kill"]]


def test_forwards_keep_the_address_asked_for(made: tuple[ParallelsDriver, FakeParallels]) -> None:
    driver, fake = made
    port1 = free_port()
    port2 = free_port()
    every = PortForward("udp", "0.0.0.0", port1, 53)
    loopback = PortForward("tcp", "127.0.0.1", port2, 80)
    driver.add_forward(every)
    driver.add_forward(loopback)
    assert driver.list_forwards() == sorted([every, loopback])
    assert any(name.endswith(f"-udp-{port1}-any") for name in fake.rules()["udp"])
    # The same port asked for another address: one rule, replaced.
    driver.add_forward(PortForward("udp", "127.0.0.1", port1, 53))
    assert driver.list_forwards() == sorted([PortForward("udp", "127.0.0.1", port1, 53), loopback])
    driver.remove_forward(PortForward("udp", "0.0.0.0", port1, 53))
    assert driver.list_forwards() == [loopback]


def test_the_binding_limit_is_declared_honestly(made: tuple[ParallelsDriver, FakeParallels]) -> None:
    driver, _ = made
    assert "every host interface" in driver.details()["forwards_listen_on"]
    assert "every host interface" in (ParallelsDriver.__doc__ or "")
    assert Feature.ANY_HOST_ADDRESS in ParallelsDriver.features
    # So a loopback forward's rule gets an unpublished port, behind the watcher's relay.
    assert Feature.LOOPBACK_FORWARDS not in ParallelsDriver.features


def test_remove_cleans_the_rules_of_a_vm_deleted_by_hand(made: tuple[ParallelsDriver, FakeParallels]) -> None:
    driver, fake = made
    port = free_port()
    driver.add_forward(PortForward("tcp", "127.0.0.1", port, 80))
    driver.runner.run(["prlctl", "delete", "dev"])
    assert fake.rules()["tcp"] != {}
    fresh = ParallelsDriver(driver.spec, driver.options, driver.runner)
    assert fresh.state() == State.NOT_FOUND
    fresh.remove()
    assert fake.rules()["tcp"] == {}
    assert not (driver.spec.directory / "parallels").exists()


def test_the_serial_console_goes_to_a_file(made: tuple[ParallelsDriver, FakeParallels]) -> None:
    driver, _ = made
    driver.start()
    log = driver.serial_log()
    assert log is not None and "Linux version" in log.read_text()


def test_precheck(tmp_path: Path) -> None:
    driver, fake = parallels_driver(tmp_path)
    ParallelsDriver.precheck(driver.runner, ParallelsOptions())
    assert fake.calls() == [["prlctl", "--version"], ["prlsrvctl", "info", "--license"]]

    fake.initialise(version="10.4.0 (29337)")
    with pytest.raises(DriverNotAvailable, match=r"Parallels Desktop 10\.4\.0 is too old: pymachine needs 11 or newer"):
        ParallelsDriver.precheck(driver.runner, ParallelsOptions())

    fake.initialise(edition="standard")
    with pytest.raises(DriverNotAvailable, match=r"standard edition cannot be driven from the command line.*Pro or Business"):
        ParallelsDriver.precheck(driver.runner, ParallelsOptions())

    fake.initialise(edition="business")
    ParallelsDriver.precheck(driver.runner, ParallelsOptions())

    with pytest.raises(DriverError, match="Unknown network adapter model"):
        ParallelsDriver.precheck(driver.runner, ParallelsOptions(adapter_type="ne2000"))
    with pytest.raises(DriverNotAvailable, match=r"`prlctl` is not installed\. Install Parallels Desktop Pro or Business"):
        ParallelsDriver.precheck(Runner(path=str(tmp_path / "nothing")), ParallelsOptions())


def test_host_report(tmp_path: Path) -> None:
    driver, _ = parallels_driver(tmp_path)
    report = ParallelsDriver.host_report(driver.runner)
    assert report.installed and report.version == "18.1.1"
    assert "pro edition" in report.detail and "every host interface" in report.detail
    assert not ParallelsDriver.host_report(Runner(path=str(tmp_path / "nothing"))).installed


def test_prlctl_list_json_has_the_reference_shape(made: tuple[ParallelsDriver, FakeParallels]) -> None:
    driver, _ = made
    import json

    out = driver.runner.run(["prlctl", "list", "-a", "-j"]).stdout
    listing = json.loads(out)
    assert list(listing[0]) == ["uuid", "status", "ip_configured", "name"]
    assert listing[0]["uuid"].startswith("{") and listing[0]["status"] == "stopped"
    assert driver.runner.run(["prlctl", "list", "dev", "--output", "status", "--no-header"]).stdout == "stopped\n"
