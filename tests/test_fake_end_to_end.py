"""`pymachine create -d virtualbox dev` through the core, with the fakes on the runner's path.

Everything runs for real except the hypervisor and the guest: the store, keys,
certificates, the config medium, the driver's VBoxManage calls (to the fake), the
provisioning steps over a scripted guest, the wait for Docker's /_ping over TLS (a
real HTTPS server requiring the client certificate), and the forward watcher process.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pymachine.arch import host_arch
from pymachine.errors import HypervisorConflict, MachineError
from pymachine.guest.certs import CertPaths
from pymachine.guest.dockerapi import DockerAPI
from pymachine.guest.iso9660 import read_files
from pymachine.guest.provision import CONFIG_FILES, ENGINE
from pymachine.home import Home
from pymachine.image import manifest_name
from pymachine.machines import CreateOptions, Machines
from pymachine.procs import alive
from pymachine.progress import RecordingProgress
from pymachine.runner import Runner

from .contract import wait_for
from .fakes import vbox_model
from .fakes.guest import GuestFarm
from .fakes.isos import write_boot_iso
from .fakes.processes import FakeVMs
from .fakes.tools import install
from .fakes.vbox_model import FakeVirtualBox


def image_cache(folder: Path, arch: str = "amd64") -> Path:
    """A boot image cache as `pymachine image build` leaves it: ISO, engine bundle, manifest.
    The fakes boot only what the VM's firmware can start: an isolinux (BIOS) ISO for
    amd64, as pymachine's amd64 build makes, and an EFI one with BOOTAA64.EFI for arm64."""
    folder.mkdir(parents=True)
    write_boot_iso(folder / f"boot-{arch}.iso", "bios" if arch == "amd64" else "arm64")
    bundle = folder / f"pymachine-engine-20.10.24-{arch}.tar.zst"
    bundle.write_bytes(os.urandom(4096))
    manifest = {
        "version": "test",
        "arch": arch,
        "cmdline": "console=ttyS0" if arch == "amd64" else "console=ttyAMA0",
        "artifacts": {
            "iso": {"file": f"boot-{arch}.iso"},
            "engine": {"file": bundle.name, "sha256": hashlib.sha256(bundle.read_bytes()).hexdigest(), "version": "20.10.24"},
        },
    }
    (folder / manifest_name(arch)).write_text(json.dumps(manifest))
    return folder


def docker_host_port(fake: FakeVirtualBox, name: str) -> int:
    machine = fake.machine(name)
    assert machine is not None
    return next(r["host_port"] for r in machine["nics"]["1"]["rules"] if r["guest_port"] == 2376)


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Machines, FakeVirtualBox, GuestFarm]]:
    yield from _world(tmp_path, monkeypatch, "amd64")


@pytest.fixture
def apple_silicon_world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Machines, FakeVirtualBox, GuestFarm]]:
    """An Apple Silicon Mac with VirtualBox 7.1: host_arch() says arm64, the fake host is arm."""
    monkeypatch.setattr("platform.machine", lambda: "arm64")
    yield from _world(tmp_path, monkeypatch, "arm64")


def _world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, arch: str) -> Iterator[tuple[Machines, FakeVirtualBox, GuestFarm]]:
    if arch == "arm64":
        fake = FakeVirtualBox(tmp_path / "vbox.json").initialise(version="7.1.6", revision="167084", host_arch="arm")
    else:
        fake = FakeVirtualBox(tmp_path / "vbox.json").initialise()
    bin_dir = install(tmp_path / "bin", "VBoxManage")
    # The forward watcher is a process of its own that builds its runner from the
    # environment: it must find the same fakes.
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv(vbox_model.STATE_ENV, str(fake.path))
    farm = GuestFarm(fake.forward_works, lambda name: docker_host_port(fake, name))
    # Only the fakes are on the core's path: no real VBoxManage, and no docker CLI, so
    # the user's docker contexts are never touched.
    runner = Runner(path=str(bin_dir), env={vbox_model.STATE_ENV: str(fake.path)})
    home = Home(tmp_path / "home", runner=runner, progress=RecordingProgress(), cache=image_cache(tmp_path / "cache", arch), ssh_factory=farm.connect)
    machines = Machines(home)
    try:
        yield machines, fake, farm
    finally:
        for name in machines.store.names():
            machine = machines.get(name)
            watcher = machine.watcher
            # A watcher writes its pidfile a moment after it starts: wait for it, so
            # that removing the machine stops it.
            wait_for(lambda: watcher.pid() is not None or not (watcher.directory / "watcher.log").exists(), timeout=10)
            machine.remove(force=True)
        farm.stop()


def test_create_runs_the_whole_flow_against_the_fakes(world: tuple[Machines, FakeVirtualBox, GuestFarm]) -> None:
    machines, fake, farm = world
    options = CreateOptions(driver="virtualbox", cpus=1, memory_mb=512, disk_mb=2048, driver_options={"backend": "vboxmanage"}, force=True)
    machine = machines.create("dev", options)
    config = machine.config

    folder = machine.directory
    expected = [
        ["VBoxManage", "--version"],
        ["VBoxManage", "showvminfo", "dev", "--machinereadable"],
        ["VBoxManage", "createvm", "--basefolder", str(folder / "virtualbox"), "--name", "dev", "--ostype", "Linux26_64", "--register"],
        [
            "VBoxManage", "modifyvm", "dev", "--firmware", "bios", "--ostype", "Linux26_64", "--cpus", "1", "--memory", "512",
            "--acpi", "on", "--ioapic", "on", "--rtcuseutc", "on", "--natdnsproxy1", "on", "--hwvirtex", "on", "--nestedpaging", "on",
            "--boot1", "dvd", "--biosbootmenu", "disabled",
        ],
        ["VBoxManage", "modifyvm", "dev", "--nic1", "nat", "--nictype1", "82540EM", "--cableconnected1", "on"],
        ["VBoxManage", "modifyvm", "dev", "--uart1", "0x3F8", "4", "--uartmode1", "file", str(folder / "serial.log")],
        [
            "VBoxManage", "modifyvm", "dev",
            "--natpf1", f"ssh,tcp,127.0.0.1,{config.ssh_port},,22",
            "--natpf1", f"docker,tcp,127.0.0.1,{config.docker_port},,2376",
        ],
        ["VBoxManage", "storagectl", "dev", "--name", "SATA", "--add", "sata", "--hostiocache", "on"],
        ["VBoxManage", "storageattach", "dev", "--storagectl", "SATA", "--port", "0", "--device", "0", "--type", "dvddrive", "--medium", str(folder / "boot" / "boot.iso")],
        ["VBoxManage", "createmedium", "disk", f"--filename={folder / 'data.vdi'}", "--size=2048", "--format=VDI"],
        ["VBoxManage", "storageattach", "dev", "--storagectl", "SATA", "--port", "1", "--device", "0", "--type", "hdd", "--medium", str(folder / "data.vdi")],
        ["VBoxManage", "storageattach", "dev", "--storagectl", "SATA", "--port", "2", "--device", "0", "--type", "dvddrive", "--medium", str(folder / "config.iso")],
        ["VBoxManage", "showvminfo", "dev", "--machinereadable"],
        ["VBoxManage", "startvm", "dev", "--type", "headless"],
    ]  # fmt: skip
    calls = fake.calls()
    assert calls[: len(expected)] == expected
    # After create returns, only the forward watcher asks, and only for the state.
    assert all(call == ["VBoxManage", "showvminfo", "dev", "--machinereadable"] for call in calls[len(expected) :])

    assert config.status == "ready"
    assert machine.status() == "Running"
    guest = farm.guests["dev"]
    assert guest.engine_running and guest.engine_sha256
    assert set(CONFIG_FILES) <= set(guest.files)
    assert f"{ENGINE} start" in guest.commands
    daemon = json.loads(guest.files["/var/lib/pymachine/daemon.json"])
    assert "provider=virtualbox" in daemon["labels"]
    # VirtualBox's NAT keeps Ethernet's frames: no MTU for the guest's NIC or Docker's networks
    assert config.guest_mtu == 0 and "mtu" not in daemon
    assert "network" not in read_files((folder / "config.iso").read_bytes())

    api = DockerAPI("127.0.0.1", config.docker_port, CertPaths(folder), timeout=5)
    try:
        assert api.ping()
    finally:
        api.close()
    assert "Linux version" in (folder / "serial.log").read_text()

    watcher = machine.watcher
    assert wait_for(lambda: watcher.pid() is not None, timeout=10), "the forward watcher did not start"
    pid = watcher.pid()
    assert pid is not None
    machine.remove()
    assert not alive(pid), "removing the machine must stop its watcher"
    assert fake.machine("dev") is None
    assert ["VBoxManage", "unregistervm", "dev", "--delete"] in fake.calls()


def test_create_refuses_to_start_beside_another_hypervisor(world: tuple[Machines, FakeVirtualBox, GuestFarm], tmp_path: Path) -> None:
    machines, fake, _ = world
    other = FakeVMs(tmp_path / "procs")
    pid = 0
    try:
        pid = other.start("prl_vm_app", "--openvm", str(tmp_path / "Parallels" / "win11.pvm"))
        options = CreateOptions(driver="virtualbox", cpus=1, memory_mb=512, disk_mb=2048, driver_options={"backend": "vboxmanage"})
        with pytest.raises(HypervisorConflict) as caught:
            machines.create("dev", options)
    finally:
        other.stop_all()
    assert f"Parallels VM 'win11' (pid {pid}; stop it with `prlctl stop 'win11'`)" in str(caught.value)
    assert not any(call[1] == "createvm" for call in fake.calls())
    assert not machines.store.exists("dev"), "a refused create leaves nothing to clean up"



def test_create_refuses_an_architecture_the_driver_cannot_run_here(world: tuple[Machines, FakeVirtualBox, GuestFarm]) -> None:
    machines, fake, _ = world
    other = "arm64" if host_arch() == "amd64" else "amd64"
    options = CreateOptions(driver="virtualbox", cpus=1, memory_mb=512, disk_mb=2048, driver_options={"backend": "vboxmanage"}, arch=other)
    with pytest.raises(MachineError) as caught:
        machines.create("dev", options)
    assert str(caught.value) == (
        f"The virtualbox driver cannot run {other} guests on this {host_arch()} host (it runs {host_arch()} here). "
        f"Run `pymachine create --arch {host_arch()}`, or use -d qemu, which emulates {other}"
    )
    assert not any(call[1] == "createvm" for call in fake.calls())
    assert not machines.store.exists("dev")


def test_create_on_apple_silicon_makes_an_arm_vm_that_boots_and_provisions(apple_silicon_world: tuple[Machines, FakeVirtualBox, GuestFarm]) -> None:
    machines, fake, farm = apple_silicon_world
    options = CreateOptions(driver="virtualbox", cpus=1, memory_mb=512, disk_mb=2048, force=True)
    machine = machines.create("dev", options)
    assert machine.config.arch == "arm64" and machine.config.status == "ready"
    calls = fake.calls()
    assert ["VBoxManage", "createvm", "--name", "dev", "--basefolder", str(machine.directory / "virtualbox"), "--platform-architecture=arm", "--register"] in calls
    vm = fake.machine("dev")
    assert vm is not None and (vm["platform"], vm["firmware"], vm["chipset"]) == ("arm", "EFI", "armv8virtual")
    assert "pymachine: ready" in fake.console("dev")
    assert farm.guests["dev"].engine_running
    assert machine.inspect()["driver_details"]["backend_reason"].startswith("VBoxManage, because pyvbox speaks the VirtualBox 6.1 API")


def test_create_on_apple_silicon_refuses_an_amd64_guest(apple_silicon_world: tuple[Machines, FakeVirtualBox, GuestFarm]) -> None:
    machines, fake, _ = apple_silicon_world
    options = CreateOptions(driver="virtualbox", cpus=1, memory_mb=512, disk_mb=2048, arch="amd64", force=True)
    with pytest.raises(MachineError) as caught:
        machines.create("dev", options)
    assert str(caught.value) == (
        "The virtualbox driver cannot run amd64 guests on this arm64 host (it runs arm64 here). "
        "Run `pymachine create --arch arm64`, or use -d qemu, which emulates amd64"
    )
    assert not any(call[1] == "createvm" for call in fake.calls())

