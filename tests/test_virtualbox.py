"""The VirtualBox driver against its faithful fakes: VBoxManage and the pyvbox API.

What the real tools do that these tests hold the driver to (see docs/drivers.md):
docker-machine's create sequence, every VMState, retries of "The object is not ready",
`error:` on stderr with exit status 0, a session that is locked, duplicate and
clashing NAT rules, a missing VM, and a busy host port VirtualBox never reports.
"""

from __future__ import annotations

import dataclasses
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pymachine.driver import Mount, PortForward, State
from pymachine.drivers.virtualbox import VirtualBoxDriver, VirtualBoxOptions
from pymachine.drivers.virtualbox import driver as vbox_driver
from pymachine.drivers.virtualbox.backend import NatRule, VBoxFailure
from pymachine.drivers.virtualbox.vboxmanage import (
    VBoxManageBackend,
    parse_machinereadable,
)
from pymachine.errors import (
    DriverError,
    DriverNotAvailable,
    MachineStateError,
    PortUnavailable,
)
from pymachine.runner import Completed, Runner

from .contract import free_port
from .fake_harnesses import virtualbox_driver
from .fakes import vbox_model
from .fakes.pyvbox import FakePyvbox
from .fakes.vbox_model import FakeVirtualBox

BACKENDS = ["vboxmanage", "api"]


@pytest.fixture(params=BACKENDS)
def made(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[VirtualBoxDriver, FakeVirtualBox]:
    """A created (powered off) VM, through each backend."""
    driver, fake = virtualbox_driver(tmp_path, request.param, name="dev")
    driver.create()
    return driver, fake


@pytest.fixture
def cli(tmp_path: Path) -> tuple[VirtualBoxDriver, FakeVirtualBox]:
    """A created VM driven through VBoxManage only."""
    driver, fake = virtualbox_driver(tmp_path, "vboxmanage", name="dev")
    driver.create()
    return driver, fake


def vbox_calls(fake: FakeVirtualBox, since: int = 0) -> list[list[str]]:
    return fake.calls()[since:]


def recorded(runner: Runner) -> list[Completed]:
    seen: list[Completed] = []
    runner.observers.append(seen.append)
    return seen


def held_port(kind: int = socket.SOCK_STREAM) -> socket.socket:
    sock = socket.socket(socket.AF_INET, kind)
    sock.bind(("127.0.0.1", 0))
    if kind == socket.SOCK_STREAM:
        sock.listen(1)
    return sock


# -- create --------------------------------------------------------------------------------


def test_create_runs_docker_machines_sequence(tmp_path: Path) -> None:
    driver, fake = virtualbox_driver(tmp_path, "vboxmanage", name="dev")
    driver.create()
    spec, folder = driver.spec, driver.spec.directory
    assert fake.calls() == [
        ["VBoxManage", "showvminfo", "dev", "--machinereadable"],
        ["VBoxManage", "createvm", "--basefolder", str(folder / "virtualbox"), "--name", "dev", "--ostype", "Linux26_64", "--register"],
        [
            "VBoxManage", "modifyvm", "dev", "--firmware", "bios", "--ostype", "Linux26_64", "--cpus", "2", "--memory", "1024",
            "--acpi", "on", "--ioapic", "on", "--rtcuseutc", "on", "--natdnsproxy1", "on", "--hwvirtex", "on", "--nestedpaging", "on",
            "--boot1", "dvd", "--biosbootmenu", "disabled",
        ],
        ["VBoxManage", "modifyvm", "dev", "--nic1", "nat", "--nictype1", "82540EM", "--cableconnected1", "on"],
        ["VBoxManage", "modifyvm", "dev", "--uart1", "0x3F8", "4", "--uartmode1", "file", str(folder / "serial.log")],
        [
            "VBoxManage", "modifyvm", "dev",
            "--natpf1", f"ssh,tcp,127.0.0.1,{spec.ssh_port},,22",
            "--natpf1", f"docker,tcp,127.0.0.1,{spec.docker_port},,2376",
        ],
        ["VBoxManage", "storagectl", "dev", "--name", "SATA", "--add", "sata", "--hostiocache", "on"],
        ["VBoxManage", "storageattach", "dev", "--storagectl", "SATA", "--port", "0", "--device", "0", "--type", "dvddrive", "--medium", str(spec.boot.iso)],
        ["VBoxManage", "createmedium", "disk", f"--filename={folder / 'data.vdi'}", "--size=4096", "--format=VDI"],
        ["VBoxManage", "storageattach", "dev", "--storagectl", "SATA", "--port", "1", "--device", "0", "--type", "hdd", "--medium", str(folder / "data.vdi")],
        ["VBoxManage", "storageattach", "dev", "--storagectl", "SATA", "--port", "2", "--device", "0", "--type", "dvddrive", "--medium", str(spec.config_medium)],
    ]  # fmt: skip
    vm = fake.machine("dev")
    assert vm is not None and vm["state"] == "poweroff"
    assert [r["name"] for r in vm["nics"]["1"]["rules"]] == ["docker", "ssh"]
    assert vm["uarts"]["1"] == {"enabled": True, "io": 0x3F8, "irq": 4, "mode": "file", "path": str(folder / "serial.log")}


def test_both_backends_build_the_same_vm(tmp_path: Path) -> None:
    cli_driver, cli_fake = virtualbox_driver(tmp_path / "cli", "vboxmanage", name="dev")
    api_driver, api_fake = virtualbox_driver(tmp_path / "api", "api", name="dev")
    cli_driver.create()
    api_driver.create()
    ignore = {"uuid", "state_changed", "settings_file"}

    def shape(fake: FakeVirtualBox, root: Path) -> dict:
        vm = fake.machine("dev")
        assert vm is not None
        text = str({k: v for k, v in vm.items() if k not in ignore}).replace(str(root), "ROOT")
        for nic in vm["nics"].values():
            text = text.replace(nic["mac"], "MAC")
        for controller in vm["controllers"].values():
            for attachment in controller["attachments"].values():
                text = text.replace(attachment["uuid"], "UUID")
        return {"vm": text}

    cli_spec, api_spec = cli_driver.spec, api_driver.spec
    cli_shape = shape(cli_fake, tmp_path / "cli")["vm"].replace(str(cli_spec.ssh_port), "SSH").replace(str(cli_spec.docker_port), "DOCKER")
    api_shape = shape(api_fake, tmp_path / "api")["vm"].replace(str(api_spec.ssh_port), "SSH").replace(str(api_spec.docker_port), "DOCKER")
    assert cli_shape == api_shape


@pytest.mark.parametrize("backend", BACKENDS)
def test_create_shares_host_folders(tmp_path: Path, backend: str) -> None:
    """`create --mount`: a permanent shared folder per mount, read-only where asked; the
    guest mounts each by its name with vboxsf."""
    driver, fake = virtualbox_driver(tmp_path, backend, name="dev")
    code, data = tmp_path / "code", tmp_path / "data"
    driver.spec = dataclasses.replace(driver.spec, mounts=(Mount(str(code), str(code)), Mount(str(data), "/data", False)))
    driver.create()
    if backend == "vboxmanage":
        assert fake.calls()[-2:] == [
            ["VBoxManage", "sharedfolder", "add", "dev", "--name", "pmshare0", "--hostpath", str(code)],
            ["VBoxManage", "sharedfolder", "add", "dev", "--name", "pmshare1", "--hostpath", str(data), "--readonly"],
        ]
    vm = fake.machine("dev")
    assert vm is not None and vm["shares"] == [
        {"name": "pmshare0", "path": str(code), "writable": True},
        {"name": "pmshare1", "path": str(data), "writable": False},
    ]
    shown = driver.runner.run(["VBoxManage", "showvminfo", "dev", "--machinereadable"]).stdout.splitlines()
    assert 'SharedFolderNameMachineMapping2="pmshare1"' in shown
    assert f'SharedFolderPathMachineMapping2="{data}"' in shown


def test_the_fake_refuses_a_second_share_of_the_same_name(cli: tuple[VirtualBoxDriver, FakeVirtualBox], tmp_path: Path) -> None:
    driver, _ = cli
    argv = ["VBoxManage", "sharedfolder", "add", "dev", "--name", "one", "--hostpath", str(tmp_path)]
    assert driver.runner.run(argv).returncode == 0
    again = driver.runner.run(argv, check=False)
    assert again.returncode == 1
    assert again.stderr.splitlines()[0] == "VBoxManage: error: Shared folder named 'one' already exists"


def test_create_refuses_an_existing_vm(cli: tuple[VirtualBoxDriver, FakeVirtualBox]) -> None:
    driver, _ = cli
    with pytest.raises(MachineStateError, match="already exists"):
        driver.create()


def test_a_half_made_vm_is_removed_and_made_again(tmp_path: Path) -> None:
    driver, fake = virtualbox_driver(tmp_path, "vboxmanage", name="dev")
    config = driver.spec.config_medium.read_bytes()
    driver.spec.config_medium.unlink()
    with pytest.raises(DriverError, match=r"Could not find file for the medium .* Run `pymachine rm -f dev`"):
        driver.create()
    assert fake.machine("dev") is not None and driver.disk.exists()
    driver.remove()
    assert fake.machine("dev") is None
    assert not driver.disk.exists() and not driver.base_folder.exists()
    driver.spec.config_medium.write_bytes(config)
    driver.create()
    assert driver.state() == State.STOPPED


def test_remove_deletes_a_disk_no_vm_holds(tmp_path: Path) -> None:
    driver, fake = virtualbox_driver(tmp_path, "vboxmanage", name="dev")
    driver.spec.directory.mkdir(parents=True, exist_ok=True)
    VBoxManageBackend(driver.runner).run("createmedium", "disk", f"--filename={driver.disk}", "--size=64", "--format=VDI")
    driver.remove()
    assert not driver.disk.exists()
    assert ["VBoxManage", "closemedium", "disk", str(driver.disk), "--delete"] in fake.calls()
    assert str(driver.disk) not in fake.read()["media"]


# -- state ----------------------------------------------------------------------------------

REFERENCE_STATES = {
    "poweroff": State.STOPPED,
    "saved": State.SAVED,
    "teleported": State.STOPPED,
    "aborted": State.STOPPED,
    "aborted-saved": State.SAVED,
    "running": State.RUNNING,
    "paused": State.PAUSED,
    "gurumeditation": State.ERROR,
    "teleporting": State.RUNNING,
    "livesnapshotting": State.RUNNING,
    "starting": State.STARTING,
    "stopping": State.STOPPING,
    "saving": State.STOPPING,
    "restoring": State.STARTING,
}


def test_every_reference_vmstate_is_mapped() -> None:
    assert set(REFERENCE_STATES) <= set(vbox_driver.VM_STATES)
    for name, state in REFERENCE_STATES.items():
        assert vbox_driver.VM_STATES[name] == state, name


def test_each_vmstate_reads_back(made: tuple[VirtualBoxDriver, FakeVirtualBox]) -> None:
    driver, fake = made
    states = sorted(vbox_driver.VM_STATES)
    if driver.backend.name == "api":
        # The 6.1 API pyvbox speaks has no AbortedSaved (VirtualBox 7 added it).
        states.remove("aborted-saved")
    seen = {}
    for vmstate in states:
        fake.set_vm_state("dev", vmstate)
        seen[vmstate] = driver.state()
    assert seen == {vmstate: vbox_driver.VM_STATES[vmstate] for vmstate in states}


def test_an_unknown_vmstate_is_an_error(cli: tuple[VirtualBoxDriver, FakeVirtualBox]) -> None:
    driver, fake = cli
    fake.set_vm_state("dev", "somethingnew")
    assert driver.state() == State.ERROR


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_missing_vm(tmp_path: Path, backend: str) -> None:
    driver, fake = virtualbox_driver(tmp_path, backend, name="ghost")
    assert driver.state() == State.NOT_FOUND
    assert driver.list_forwards() == []
    driver.remove_forward(PortForward("tcp", "127.0.0.1", 8080, 80))
    driver.stop(1)
    driver.kill()
    driver.remove()
    with pytest.raises(MachineStateError, match=r"VM 'ghost' does not exist.*pymachine rm -f ghost"):
        driver.start()
    with pytest.raises(MachineStateError, match="does not exist"):
        driver.add_forward(PortForward("tcp", "127.0.0.1", 8080, 80))


def test_the_fake_reports_a_missing_vm_as_vboxmanage_does(tmp_path: Path) -> None:
    driver, _ = virtualbox_driver(tmp_path, "vboxmanage", name="ghost")
    done = driver.runner.run(["VBoxManage", "showvminfo", "ghost", "--machinereadable"], check=False)
    assert done.returncode == 1
    assert done.stderr.splitlines()[:2] == [
        "VBoxManage: error: Could not find a registered machine named 'ghost'",
        "VBoxManage: error: Details: code VBOX_E_OBJECT_NOT_FOUND (0x80bb0001), component VirtualBoxWrap, interface IVirtualBox, callee nsISupports",
    ]
    assert done.stderr.splitlines()[2].startswith('VBoxManage: error: Context: "FindMachine(')


# -- transient refusals and errors -----------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_object_not_ready_is_retried(tmp_path: Path, backend: str) -> None:
    driver, fake = virtualbox_driver(tmp_path, backend, name="dev")
    driver.create()
    fake.set_faults(not_ready=3)
    before = len(fake.calls())
    assert driver.state() == State.STOPPED
    assert fake.read()["faults"]["not_ready"] == 0
    if backend == "vboxmanage":
        assert vbox_calls(fake, before) == [["VBoxManage", "showvminfo", "dev", "--machinereadable"]] * 4


@pytest.mark.parametrize("backend", BACKENDS)
def test_object_not_ready_for_good_is_reported(tmp_path: Path, backend: str) -> None:
    driver, fake = virtualbox_driver(tmp_path, backend, name="dev")
    driver.create()
    fake.set_faults(not_ready=50)
    with pytest.raises(DriverError, match=r"The object is not ready\. Run `pymachine status dev`"):
        driver.state()


def test_an_error_line_with_exit_status_zero_is_a_failure(tmp_path: Path) -> None:
    driver, fake = virtualbox_driver(tmp_path, "vboxmanage", name="dev")
    seen = recorded(driver.runner)
    fake.set_faults(exit_zero=1)
    assert driver.state() == State.NOT_FOUND
    assert seen[-1].returncode == 0 and "error:" in seen[-1].stderr

    # Undetected, a createmedium that failed with exit 0 would go on to attach the
    # old disk: the driver stops at the error line instead.
    driver.spec.directory.mkdir(parents=True, exist_ok=True)
    driver.disk.write_bytes(b"someone else's disk")
    fake.set_faults(exit_zero=2)  # the first goes to create's look for an existing VM
    with pytest.raises(DriverError, match="VERR_ALREADY_EXISTS"):
        driver.create()
    createmedium = next(c for c in seen if c.argv[1] == "createmedium")
    assert createmedium.returncode == 0
    assert not any(c[1] == "storageattach" and "hdd" in c for c in fake.calls())


def test_a_briefly_locked_session_is_retried(made: tuple[VirtualBoxDriver, FakeVirtualBox]) -> None:
    driver, fake = made
    port = free_port()
    fake.set_faults(locked=1)
    forward = PortForward("tcp", "127.0.0.1", port, 80)
    driver.add_forward(forward)
    assert driver.list_forwards() == [forward]


def test_a_locked_session_says_what_to_do(made: tuple[VirtualBoxDriver, FakeVirtualBox]) -> None:
    driver, fake = made
    port = free_port()
    fake.set_faults(locked=50)
    with pytest.raises(MachineStateError) as caught:
        driver.add_forward(PortForward("tcp", "127.0.0.1", port, 80))
    message = str(caught.value)
    assert "is already locked for a session" in message
    assert "Close the VM in the VirtualBox window" in message and "`pymachine status dev`" in message
    assert "\n" not in message


def test_modifying_a_running_vm_is_refused_as_virtualbox_does(made: tuple[VirtualBoxDriver, FakeVirtualBox]) -> None:
    driver, _ = made
    port = free_port()
    driver.start()
    with pytest.raises(VBoxFailure) as caught:
        driver.backend.add_rule("dev", NatRule("x", "tcp", "127.0.0.1", port, 80), running=False)
    assert caught.value.locked
    assert "The machine 'dev' is already locked for a session (or being unlocked)" in caught.value.text


def test_duplicate_and_bad_rules_carry_virtualbox_texts(made: tuple[VirtualBoxDriver, FakeVirtualBox]) -> None:
    driver, _ = made
    port1 = free_port()
    port2 = free_port()
    port3 = free_port()
    backend = driver.backend.name
    rule = NatRule("web", "tcp", "127.0.0.1", port1, 80)
    driver.backend.add_rule("dev", rule, running=False)
    with pytest.raises(VBoxFailure) as same_name:
        driver.backend.add_rule("dev", NatRule("web", "tcp", "127.0.0.1", port2, 80), running=False)
    assert same_name.value.text == "A NAT rule of this name already exists"
    assert same_name.value.code == 0x80070057
    with pytest.raises(VBoxFailure) as same_port:
        driver.backend.add_rule("dev", NatRule("web2", "tcp", "127.0.0.1", port1, 81), running=False)
    assert same_port.value.text == "A NAT rule for this host port and this host IP already exists"
    if backend == "api":
        # Only the API sees a comma in a name; VBoxManage splits the rule at it first.
        with pytest.raises(VBoxFailure) as comma:
            driver.backend.add_rule("dev", NatRule("a,b", "tcp", "127.0.0.1", port3, 80), running=False)
        assert comma.value.text == "',' - invalid character in NAT rule name"


def test_pyvbox_turns_the_fakes_errors_into_its_own(tmp_path: Path) -> None:
    fake = FakeVirtualBox(tmp_path / "vbox.json").initialise()
    vbox = FakePyvbox(fake).VirtualBox()
    lib = FakePyvbox.library
    with pytest.raises(lib.VBoxErrorObjectNotFound) as caught:
        vbox.find_machine("ghost")
    assert caught.value.msg == "Could not find a registered machine named 'ghost'"
    assert vbox.version == "6.1.50"


# -- forwards ---------------------------------------------------------------------------------


def test_a_busy_host_port_is_refused_before_virtualbox_sees_it(made: tuple[VirtualBoxDriver, FakeVirtualBox]) -> None:
    driver, fake = made
    driver.start()
    holder = held_port()
    busy = holder.getsockname()[1]
    try:
        before = len(fake.calls())
        with pytest.raises(PortUnavailable, match=rf"127\.0\.0\.1:{busy}/tcp is already in use\. Run `pymachine ports dev`"):
            driver.add_forward(PortForward("tcp", "127.0.0.1", busy, 80))
        assert not any(c[1:4] == ["controlvm", "dev", "natpf1"] for c in vbox_calls(fake, before))
        assert driver.list_forwards() == []
    finally:
        holder.close()


def test_a_busy_udp_port_is_refused(cli: tuple[VirtualBoxDriver, FakeVirtualBox]) -> None:
    driver, _ = cli
    driver.start()
    holder = held_port(socket.SOCK_DGRAM)
    try:
        with pytest.raises(PortUnavailable):
            driver.add_forward(PortForward("udp", "127.0.0.1", holder.getsockname()[1], 53))
    finally:
        holder.close()


def test_forwards_use_controlvm_when_running_and_modifyvm_when_off(cli: tuple[VirtualBoxDriver, FakeVirtualBox]) -> None:
    driver, fake = cli
    port = free_port()
    before = len(fake.calls())
    forward = PortForward("tcp", "127.0.0.1", port, 80)
    driver.add_forward(forward)
    driver.remove_forward(forward)
    driver.start()
    driver.add_forward(forward)
    driver.remove_forward(forward)
    changes = [c for c in vbox_calls(fake, before) if c[1] in ("modifyvm", "controlvm") and "natpf1" in " ".join(c)]
    assert changes == [
        ["VBoxManage", "modifyvm", "dev", "--natpf1", f"pymachine-tcp-{port},tcp,127.0.0.1,{port},,80"],
        ["VBoxManage", "modifyvm", "dev", "--natpf1", "delete", f"pymachine-tcp-{port}"],
        ["VBoxManage", "controlvm", "dev", "natpf1", f"pymachine-tcp-{port},tcp,127.0.0.1,{port},,80"],
        ["VBoxManage", "controlvm", "dev", "natpf1", "delete", f"pymachine-tcp-{port}"],
    ]


def test_list_leaves_out_ssh_docker_and_rules_made_by_hand(made: tuple[VirtualBoxDriver, FakeVirtualBox]) -> None:
    driver, fake = made
    port1 = free_port()
    port2 = free_port()
    fake.add_rule_by_hand("dev", {"name": "mine", "proto": "tcp", "host_ip": "", "host_port": port1, "guest_ip": "", "guest_port": 8000})
    forward = PortForward("udp", "0.0.0.0", port2, 53)
    driver.add_forward(forward)
    assert driver.list_forwards() == [forward]
    rules = {r["name"]: r for r in fake.machine("dev")["nics"]["1"]["rules"]}
    # VirtualBox's way to say "every interface" is an empty host address.
    assert rules[f"pymachine-udp-{port2}"]["host_ip"] == ""
    assert set(rules) == {"ssh", "docker", "mine", f"pymachine-udp-{port2}"}


def test_a_port_taken_by_another_rule_of_the_vm_is_refused(made: tuple[VirtualBoxDriver, FakeVirtualBox]) -> None:
    driver, fake = made
    port = free_port()
    fake.add_rule_by_hand("dev", {"name": "mine", "proto": "tcp", "host_ip": "127.0.0.1", "host_port": port, "guest_ip": "", "guest_port": 8000})
    with pytest.raises(PortUnavailable, match="by its rule 'mine'"):
        driver.add_forward(PortForward("tcp", "127.0.0.1", port, 80))
    with pytest.raises(PortUnavailable, match="rule 'ssh'"):
        driver.add_forward(PortForward("tcp", "127.0.0.1", driver.spec.ssh_port, 80))


def test_a_forward_to_another_guest_port_replaces_the_old_one(made: tuple[VirtualBoxDriver, FakeVirtualBox]) -> None:
    driver, _ = made
    port = free_port()
    driver.add_forward(PortForward("tcp", "127.0.0.1", port, 80))
    driver.add_forward(PortForward("tcp", "127.0.0.1", port, 81))
    assert driver.list_forwards() == [PortForward("tcp", "127.0.0.1", port, 81)]
    driver.add_forward(PortForward("tcp", "127.0.0.1", port, 81))  # the same again: nothing to do
    assert driver.list_forwards() == [PortForward("tcp", "127.0.0.1", port, 81)]


# -- lifecycle -------------------------------------------------------------------------------


def test_start_refuses_a_busy_ssh_port_so_the_core_can_move_it(made: tuple[VirtualBoxDriver, FakeVirtualBox]) -> None:
    driver, fake = made
    holder = socket.socket()
    holder.bind(("127.0.0.1", driver.spec.ssh_port))
    holder.listen(1)
    try:
        with pytest.raises(PortUnavailable, match="pymachine will pick another port"):
            driver.start()
        assert driver.state() == State.STOPPED
    finally:
        holder.close()


def test_start_moves_the_ssh_and_docker_rules_to_the_specs_ports(made: tuple[VirtualBoxDriver, FakeVirtualBox]) -> None:
    driver, fake = made
    from dataclasses import replace

    moved = replace(driver.spec, ssh_port=free_port(), docker_port=free_port())
    again = VirtualBoxDriver(moved, driver.options, driver.runner, api=driver._api)
    again.retry_pause = 0.0
    again.start()
    rules = {r["name"]: r["host_port"] for r in fake.machine("dev")["nics"]["1"]["rules"]}
    assert rules == {"ssh": moved.ssh_port, "docker": moved.docker_port}


def test_stop_presses_the_power_button_and_waits(made: tuple[VirtualBoxDriver, FakeVirtualBox]) -> None:
    driver, fake = made
    backend = driver.backend.name
    driver.start()
    fake.set_faults(acpi_delay=0.2)
    driver.stop(timeout=10)
    assert driver.state() == State.STOPPED
    if backend == "vboxmanage":
        controls = [c[3] for c in fake.calls() if c[1] == "controlvm"]
        assert controls == ["acpipowerbutton"]


def test_stop_powers_off_a_guest_that_ignores_the_button(made: tuple[VirtualBoxDriver, FakeVirtualBox]) -> None:
    driver, fake = made
    backend = driver.backend.name
    driver.start()
    fake.set_faults(acpi="ignore")
    driver.stop(timeout=0.3)
    assert driver.state() == State.STOPPED
    if backend == "vboxmanage":
        controls = [c[3] for c in fake.calls() if c[1] == "controlvm"]
        assert controls == ["acpipowerbutton", "poweroff"]


def test_kill_discards_a_saved_state(made: tuple[VirtualBoxDriver, FakeVirtualBox]) -> None:
    driver, fake = made
    fake.set_vm_state("dev", "saved")
    assert driver.state() == State.SAVED
    driver.kill()
    assert driver.state() == State.STOPPED


def test_the_serial_console_goes_to_a_file(cli: tuple[VirtualBoxDriver, FakeVirtualBox]) -> None:
    driver, _ = cli
    log = driver.serial_log()
    assert log == driver.spec.directory / "serial.log"
    driver.start()
    assert "Linux version" in log.read_text()
    driver.kill()
    driver.start()
    assert (driver.spec.directory / "serial.log.1").exists()


# -- options, precheck, backend choice ---------------------------------------------------------


def test_options_parse_and_describe() -> None:
    options = VirtualBoxOptions.parse({"backend": "vboxmanage", "nic-type": "virtio", "host-io-cache": "false"})
    assert options == VirtualBoxOptions(backend="vboxmanage", nic_type="virtio", host_io_cache=False)
    assert [row[0] for row in VirtualBoxOptions.describe()] == ["backend", "nic-type", "host-io-cache", "vboxmanage"]


@pytest.mark.parametrize("options, message", [(VirtualBoxOptions(backend="com"), "Unknown VirtualBox backend"), (VirtualBoxOptions(nic_type="e1000"), "Unknown network adapter model")])
def test_precheck_refuses_bad_options(tmp_path: Path, options: VirtualBoxOptions, message: str) -> None:
    driver, _ = virtualbox_driver(tmp_path, "vboxmanage")
    with pytest.raises(DriverError, match=message):
        VirtualBoxDriver.precheck(driver.runner, options)


def test_precheck_checks_vboxmanage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    driver, fake = virtualbox_driver(tmp_path, "vboxmanage")
    VirtualBoxDriver.precheck(driver.runner, VirtualBoxOptions(backend="vboxmanage"))
    assert fake.calls() == [["VBoxManage", "--version"]]

    fake.initialise(version="4.3.40")
    with pytest.raises(DriverNotAvailable, match=r"VirtualBox 4\.3\.40r161033 is too old: pymachine needs 5 or newer"):
        VirtualBoxDriver.precheck(driver.runner, VirtualBoxOptions(backend="vboxmanage"))

    warning = "WARNING: The vboxdrv kernel module is not loaded. Either there is no module available for the current kernel (6.1.0) or it failed to load."
    fake.initialise(version_warning=warning)
    with pytest.raises(DriverNotAvailable, match="not healthy: WARNING: The vboxdrv kernel module is not loaded"):
        VirtualBoxDriver.precheck(driver.runner, VirtualBoxOptions(backend="vboxmanage"))

    fake.initialise(version_hang=3.0)
    monkeypatch.setattr(vbox_driver, "VERSION_TIMEOUT", 0.5)
    with pytest.raises(DriverNotAvailable, match=r"did not answer within 0\.5s.*`VBoxManage list vms`"):
        VirtualBoxDriver.precheck(driver.runner, VirtualBoxOptions(backend="vboxmanage"))


def test_precheck_names_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(DriverNotAvailable, match=r"`VBoxManage` is not installed\. Install VirtualBox 5 or newer"):
        VirtualBoxDriver.precheck(Runner(path=str(tmp_path)), VirtualBoxOptions(backend="vboxmanage"))


def _vboxapi_importable() -> bool:
    try:
        import virtualbox

        virtualbox.VirtualBox()
    except Exception:
        return False
    return True


@pytest.mark.skipif(_vboxapi_importable(), reason="this host has the VirtualBox SDK: auto would use the real API")
def test_without_the_sdk_auto_falls_back_to_vboxmanage(cli: tuple[VirtualBoxDriver, FakeVirtualBox]) -> None:
    driver, _ = cli
    auto = VirtualBoxDriver(driver.spec, VirtualBoxOptions(), driver.runner)
    assert auto.state() == State.STOPPED
    details = auto.details()
    assert details["backend"] == "vboxmanage"
    assert "vboxapi does not import" in details["backend_reason"]
    with pytest.raises(DriverNotAvailable, match=r"vboxapi does not import.*-o backend=vboxmanage"):
        VirtualBoxDriver.precheck(driver.runner, VirtualBoxOptions(backend="api"))


def test_the_api_is_used_only_for_virtualbox_6(tmp_path: Path) -> None:
    driver, fake = virtualbox_driver(tmp_path, "api")
    fake.initialise(version="7.0.14", revision="161095")
    auto = VirtualBoxDriver(driver.spec, VirtualBoxOptions(), driver.runner, api=FakePyvbox(fake))
    assert auto.details()["backend"] == "vboxmanage"
    assert "VirtualBox 6.1 API, and this is VirtualBox 7.0.14" in auto.details()["backend_reason"]
    forced = VirtualBoxDriver(driver.spec, VirtualBoxOptions(backend="api"), driver.runner, api=FakePyvbox(fake))
    with pytest.raises(DriverNotAvailable, match="VirtualBox 7.0.14"):
        forced.state()


def test_details_say_which_backend(made: tuple[VirtualBoxDriver, FakeVirtualBox]) -> None:
    driver, _ = made
    details = driver.details()
    assert details["backend"] in BACKENDS
    assert details["serial_log"].endswith("serial.log") and details["vm"] == "dev"


def test_importing_the_driver_does_not_import_pyvbox() -> None:
    code = "import sys, drivers.virtualbox; print('virtualbox' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path(__file__).parent.parent)
    assert out.stdout.strip() == "False"


def test_host_report(tmp_path: Path) -> None:
    driver, _ = virtualbox_driver(tmp_path, "vboxmanage")
    report = VirtualBoxDriver.host_report(driver.runner)
    assert report.installed and report.version == "6.1.50r161033"
    assert "backend" in report.detail
    missing = VirtualBoxDriver.host_report(Runner(path=str(tmp_path / "nothing")))
    assert not missing.installed and "virtualbox.org" in missing.detail


def test_parse_machinereadable_keeps_quotes_and_rules() -> None:
    text = '\n'.join([
        'name="a \\"quoted\\" name"',
        'VMState="running"',
        'CfgFile="/x/dev.vbox"',
        'Forwarding(0)="docker,tcp,127.0.0.1,50001,,2376"',
        'Forwarding(1)="pymachine-udp-53,udp,,5353,,53"',
        '"SATA-0-0"="/x/boot.iso"',
    ])  # fmt: skip
    info = parse_machinereadable(text)
    assert info.state == "running" and info.settings_file == "/x/dev.vbox"
    assert info.rules == [NatRule("docker", "tcp", "127.0.0.1", 50001, 2376), NatRule("pymachine-udp-53", "udp", "", 5353, 53)]


def test_fake_state_env_name_is_what_the_harness_passes() -> None:
    assert vbox_model.STATE_ENV == "PYMACHINE_FAKE_VBOX"
