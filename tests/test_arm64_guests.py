"""arm64 guests on Apple Silicon, and the refusals of what a hypervisor cannot run.

VirtualBox 7.1+ makes an ARM platform VM through VBoxManage; Parallels makes a VM of the
Mac's own architecture and the driver checks what it made. Each test holds the driver to
what the fakes model of the real tools (see fake_harnesses.py and docs/drivers.md).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from pymachine.arch import AMD64, ARM64
from pymachine.driver import NATIVE, BootMedia, PortForward, State
from pymachine.drivers.parallels import ParallelsDriver, ParallelsOptions
from pymachine.drivers.virtualbox import VirtualBoxDriver, VirtualBoxOptions
from pymachine.drivers.virtualbox.driver import choose_backend
from pymachine.drivers.virtualbox.vboxmanage import VBoxManageBackend
from pymachine.errors import DriverError, DriverNotAvailable

from .contract import free_port
from .fake_harnesses import as_host, parallels_driver, virtualbox_driver
from .fakes import vbox_model
from .fakes.isos import write_boot_iso
from .fakes.parallels import NO_BOOT_EFI as PARALLELS_NO_BOOT_EFI
from .fakes.parallels import NOT_RUNNABLE_ON_ARM


@pytest.fixture
def apple_silicon(request: pytest.FixtureRequest) -> None:
    """pymachine.arch.host_arch() reports arm64 for the test."""
    as_host(request, ARM64)


@pytest.fixture
def intel(request: pytest.FixtureRequest) -> None:
    as_host(request, AMD64)


def one_line(error: Exception) -> str:
    text = str(error)
    assert "\n" not in text, f"not one line: {text!r}"
    return text


def with_iso(driver, tmp_path: Path, kind: str):  # noqa: ANN001, ANN201 - either driver
    """The driver's spec with a boot ISO of another kind."""
    iso = write_boot_iso(tmp_path / f"{kind}.iso", kind)
    driver.spec = dataclasses.replace(driver.spec, boot=BootMedia(iso))
    return driver


# -- VirtualBox ---------------------------------------------------------------------------


def test_virtualbox_arm_create_runs_the_arm_platform_sequence(tmp_path: Path, apple_silicon: None) -> None:
    driver, fake = virtualbox_driver(tmp_path, "auto", name="dev", arch=ARM64)
    driver.create()
    spec, folder = driver.spec, driver.spec.directory
    assert fake.calls() == [
        ["VBoxManage", "showvminfo", "dev", "--machinereadable"],
        ["VBoxManage", "createvm", "--name", "dev", "--basefolder", str(folder / "virtualbox"), "--platform-architecture=arm", "--register"],
        [
            "VBoxManage", "modifyvm", "dev", "--ostype=Debian12_arm64", "--chipset=armv8virtual", "--firmware=efi",
            "--cpus=2", "--memory=1024", "--rtcuseutc=on",
            "--graphicscontroller=qemuramfb", "--usb-xhci=on", "--mouse=usb", "--keyboard=usb",
        ],
        ["VBoxManage", "modifyvm", "dev", "--nic1=nat", "--nictype1=virtio", "--cableconnected1=on", "--natdnsproxy1=on", "--nat-localhostreachable1=on"],
        ["VBoxManage", "modifyvm", "dev", "--uart1", "0x3F8", "4", "--uartmode1", "file", str(folder / "serial.log")],
        [
            "VBoxManage", "modifyvm", "dev",
            "--natpf1", f"ssh,tcp,127.0.0.1,{spec.ssh_port},,22",
            "--natpf1", f"docker,tcp,127.0.0.1,{spec.docker_port},,2376",
        ],
        ["VBoxManage", "storagectl", "dev", "--name", "VirtIO", "--add", "virtio-scsi", "--hostiocache", "on"],
        ["VBoxManage", "storageattach", "dev", "--storagectl", "VirtIO", "--port", "0", "--device", "0", "--type", "dvddrive", "--medium", str(spec.boot.iso)],
        ["VBoxManage", "createmedium", "disk", f"--filename={folder / 'data.vdi'}", "--size=4096", "--format=VDI"],
        ["VBoxManage", "storageattach", "dev", "--storagectl", "VirtIO", "--port", "1", "--device", "0", "--type", "hdd", "--medium", str(folder / "data.vdi")],
        ["VBoxManage", "storageattach", "dev", "--storagectl", "VirtIO", "--port", "2", "--device", "0", "--type", "dvddrive", "--medium", str(spec.config_medium)],
    ]  # fmt: skip
    vm = fake.machine("dev")
    assert vm is not None
    assert (vm["platform"], vm["chipset"], vm["firmware"], vm["graphics"]) == ("arm", "armv8virtual", "EFI", "qemuramfb")
    assert vm["nics"]["1"]["type"] == "virtio" and vm["nics"]["1"]["localhostreachable"] == "on"
    assert vm["controllers"]["VirtIO"]["type"] == "VirtioSCSI"
    assert (vm["usb"]["xhci"], vm["mouse"], vm["keyboard"]) == ("on", "usbmouse", "usbkbd")
    # No x86-only setting was even tried.
    assert not any(arg.startswith(("--hwvirtex", "--nestedpaging", "--ioapic", "--biosbootmenu", "--boot1")) for call in fake.calls() for arg in call)


def test_virtualbox_arm_vm_boots_the_arm64_iso_and_carries_forwards(tmp_path: Path, apple_silicon: None) -> None:
    driver, fake = virtualbox_driver(tmp_path, "auto", name="dev", arch=ARM64)
    driver.create()
    driver.start()
    assert driver.state() == State.RUNNING
    assert "pymachine: ready" in fake.console("dev")
    assert fake.forward_works("dev", "tcp", driver.spec.ssh_port, 22)
    port = free_port()
    driver.add_forward(PortForward("tcp", "127.0.0.1", port, 80))
    assert ["VBoxManage", "controlvm", "dev", "natpf1", f"pymachine-tcp-{port},tcp,127.0.0.1,{port},,80"] in fake.calls()
    assert fake.forward_works("dev", "tcp", port, 80)


def test_an_amd64_iso_boots_nothing_on_an_arm_vm(tmp_path: Path, apple_silicon: None) -> None:
    driver, fake = virtualbox_driver(tmp_path, "auto", name="dev", arch=ARM64)
    with_iso(driver, tmp_path, "amd64-hybrid")  # isolinux and BOOTX64.EFI, no BOOTAA64.EFI
    driver.create()
    driver.start()
    # VirtualBox runs the VM; its firmware finds nothing to start, and nothing answers.
    assert driver.state() == State.RUNNING
    assert fake.console("dev").strip() == vbox_model.NO_BOOT_EFI
    assert not fake.forward_works("dev", "tcp", driver.spec.ssh_port, 22)


def test_an_arm64_iso_boots_nothing_on_an_x86_vm(tmp_path: Path, intel: None) -> None:
    driver, fake = virtualbox_driver(tmp_path, "vboxmanage", name="dev")
    with_iso(driver, tmp_path, "arm64")
    driver.create()
    driver.start()
    assert fake.console("dev").strip() == vbox_model.NO_BOOT_BIOS
    assert not fake.forward_works("dev", "tcp", driver.spec.ssh_port, 22)


def test_the_fake_refuses_x86_only_settings_on_an_arm_vm(tmp_path: Path, apple_silicon: None) -> None:
    driver, fake = virtualbox_driver(tmp_path, "auto", name="dev", arch=ARM64)
    driver.create()
    for option in ("--hwvirtex", "--nestedpaging", "--pae", "--x2apic"):
        done = driver.runner.run(["VBoxManage", "modifyvm", "dev", option, "on"], check=False)
        assert done.returncode == 1, option
        assert done.stderr.strip().startswith("VBoxManage: error: Invalid option case "), done.stderr
    # The x86 platform takes them.
    x86, _ = virtualbox_driver(tmp_path / "x86", "vboxmanage", name="dev")
    x86.create()
    assert x86.runner.run(["VBoxManage", "modifyvm", "dev", "--hwvirtex", "on"], check=False).returncode == 0


def test_the_fake_refuses_arm_only_settings_on_an_x86_vm(tmp_path: Path, intel: None) -> None:
    driver, fake = virtualbox_driver(tmp_path, "vboxmanage", name="dev")
    driver.create()
    for argv in (["--chipset=armv8virtual"], ["--graphicscontroller", "qemuramfb"]):
        done = driver.runner.run(["VBoxManage", "modifyvm", "dev", *argv], check=False)
        assert done.returncode == 1 and "not supported by this VM's platform" in done.stderr, argv
    vm = fake.machine("dev")
    assert vm is not None and (vm["chipset"], vm["graphics"]) == ("piix3", "vboxvga")


def test_the_fake_createvm_takes_the_hosts_platform_unless_told(tmp_path: Path, apple_silicon: None) -> None:
    driver, fake = virtualbox_driver(tmp_path, "auto", name="dev", arch=ARM64)
    run = driver.runner.run
    run(["VBoxManage", "createvm", "--name", "plain", "--basefolder", str(tmp_path / "vms"), "--register"])
    run(["VBoxManage", "createvm", "--name", "typed", "--basefolder", str(tmp_path / "vms"), "--ostype", "Linux26_64", "--register"])
    run(["VBoxManage", "createvm", "--name", "asked", "--basefolder", str(tmp_path / "vms"), "--platform-arch=x86", "--register"])
    assert [(m["name"], m["platform"]) for m in fake.read()["machines"]] == [("plain", "arm"), ("typed", "x86"), ("asked", "x86")]
    bad = run(["VBoxManage", "createvm", "--name", "odd", "--platform-architecture=riscv", "--register"], check=False)
    assert bad.returncode == 1 and bad.stderr.strip() == "VBoxManage: error: Invalid --platform-architecture argument 'riscv'"


def test_an_arm_host_refuses_an_amd64_machine_in_virtualboxs_words(tmp_path: Path, apple_silicon: None) -> None:
    # An arm64 VirtualBox host, asked for an amd64 guest (e.g. a Python under Rosetta that
    # reports x86_64): VirtualBox makes the x86 VM and refuses to start it.
    driver, fake = virtualbox_driver(tmp_path, "vboxmanage", name="dev", arch=ARM64)
    driver.spec = dataclasses.replace(driver.spec, arch=AMD64)
    with_iso(driver, tmp_path, "bios")
    driver.create()
    with pytest.raises(DriverError) as caught:
        driver.start()
    assert one_line(caught.value) == (
        "VirtualBox on this host cannot start VM 'dev', an amd64 machine: Cannot run the machine because its platform "
        "architecture x86 is not supported on ARM. Run `pymachine rm -f dev`, then `pymachine create --arch arm64`"
    )
    assert driver.state() == State.STOPPED


def test_an_x86_host_refuses_an_arm64_machine(tmp_path: Path, intel: None) -> None:
    driver, fake = virtualbox_driver(tmp_path, "vboxmanage", name="dev")
    fake.initialise(version="7.1.6", revision="167084", host_arch="x86")
    driver.spec = dataclasses.replace(driver.spec, arch=ARM64)
    with pytest.raises(DriverError) as caught:
        driver.create()
    assert one_line(caught.value) == (
        "VirtualBox on this host cannot create VM 'dev', an arm64 machine: Platform 'ARM' not supported. "
        "Run `pymachine rm -f dev`, then `pymachine create --arch amd64`"
    )


def test_backend_api_is_refused_for_arm64_and_auto_says_why_it_uses_vboxmanage(tmp_path: Path, apple_silicon: None) -> None:
    driver, _ = virtualbox_driver(tmp_path, "api", name="dev", arch=ARM64)
    with pytest.raises(DriverError) as caught:
        driver.create()
    assert one_line(caught.value) == (
        "The VirtualBox API backend cannot make arm64 VMs: pyvbox speaks the VirtualBox 6.1 API, which has no ARM platform. "
        "Pass -o backend=vboxmanage"
    )
    backend, reason = choose_backend(VirtualBoxOptions(backend="auto"), driver.runner, None, 0.0, ARM64)
    assert isinstance(backend, VBoxManageBackend)
    assert reason == "VBoxManage, because pyvbox speaks the VirtualBox 6.1 API, which has no ARM platform for this arm64 guest"


def test_virtualbox_guest_arches_follow_the_host(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    driver, fake = virtualbox_driver(tmp_path, "vboxmanage", name="dev")
    options = VirtualBoxOptions()
    as_host(request, AMD64)
    assert VirtualBoxDriver.guest_arches(driver.runner, options) == {AMD64: NATIVE}
    as_host(request, ARM64)
    fake.initialise(version="7.1.6", revision="167084", host_arch="arm")
    assert VirtualBoxDriver.guest_arches(driver.runner, options) == {ARM64: NATIVE}
    VirtualBoxDriver.precheck(driver.runner, options)
    # Before 7.1 VirtualBox had no ARM platform: nothing runs, and precheck says why.
    fake.initialise(version="7.0.20", revision="163906", host_arch="arm")
    assert VirtualBoxDriver.guest_arches(driver.runner, options) == {}
    with pytest.raises(DriverNotAvailable) as caught:
        VirtualBoxDriver.precheck(driver.runner, options)
    assert one_line(caught.value) == (
        "VirtualBox 7.0.20r163906 cannot run VMs on this arm64 host: the ARM platform came with VirtualBox 7.1. "
        "Install VirtualBox 7.1 or newer for Apple Silicon, or use `pymachine create -d qemu`"
    )


def test_nic_type_auto_picks_per_platform_and_pcnet_is_refused_on_arm(tmp_path: Path, apple_silicon: None) -> None:
    driver, fake = virtualbox_driver(tmp_path, "auto", name="dev", arch=ARM64)
    driver.options = VirtualBoxOptions(nic_type="Am79C973")
    with pytest.raises(DriverError) as caught:
        driver.create()
    assert one_line(caught.value) == (
        "VirtualBox's ARM platform has no Am79C973 network adapter (it has virtio, 82540EM, 82543GC, 82545EM). "
        "Use -o nic-type=virtio, or leave -o nic-type out"
    )
    assert fake.machine("dev") is None
    driver.options = VirtualBoxOptions(nic_type="82540EM")  # the e1000 family exists on ARM
    driver.create()
    vm = fake.machine("dev")
    assert vm is not None and vm["nics"]["1"]["type"] == "82540EM"
    x86, x86_fake = virtualbox_driver(tmp_path / "x86", "vboxmanage", name="dev")
    x86.create()
    assert ["VBoxManage", "modifyvm", "dev", "--nic1", "nat", "--nictype1", "82540EM", "--cableconnected1", "on"] in x86_fake.calls()


def test_the_fake_arm_platform_refuses_a_pcnet_adapter_at_start(tmp_path: Path, apple_silicon: None) -> None:
    driver, fake = virtualbox_driver(tmp_path, "auto", name="dev", arch=ARM64)
    driver.create()
    driver.runner.run(["VBoxManage", "modifyvm", "dev", "--nictype1", "Am79C973"])
    done = driver.runner.run(["VBoxManage", "startvm", "dev", "--type", "headless"], check=False)
    assert done.returncode == 1
    assert "VBoxManage: error: Invalid/Unsupported network adapter type '2' for slot '0' (VERR_INVALID_PARAMETER)" in done.stderr


# -- Parallels ----------------------------------------------------------------------------


def test_parallels_arm_create_runs_the_prlctl_sequence(tmp_path: Path, apple_silicon: None) -> None:
    driver, fake = parallels_driver(tmp_path, name="dev", arch=ARM64)
    driver.create()
    spec, folder = driver.spec, driver.spec.directory
    assert fake.calls() == [
        ["prlctl", "list", "dev", "--output", "status", "--no-header"],
        ["prlctl", "create", "dev", "--distribution", "debian", "--dst", str(folder / "parallels"), "--no-hdd"],
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
    assert vm is not None and vm["cpu_type"] == "arm" and vm["distribution"] == "debian"
    info = driver.runner.run(["prlctl", "list", "-i", "-j", "dev"]).stdout
    assert '"BIOS type": "efi-arm64"' in info and '"type": "arm"' in info


def test_parallels_arm_vm_boots_the_arm64_iso(tmp_path: Path, apple_silicon: None) -> None:
    driver, fake = parallels_driver(tmp_path, name="dev", arch=ARM64)
    driver.create()
    driver.start()
    assert "pymachine: ready" in fake.console("dev")
    assert fake.forward_works("dev", "tcp", driver.spec.ssh_port, 22)


def test_an_amd64_iso_boots_nothing_on_apple_silicon_parallels(tmp_path: Path, apple_silicon: None) -> None:
    driver, fake = parallels_driver(tmp_path, name="dev", arch=ARM64)
    with_iso(driver, tmp_path, "bios")
    driver.create()
    driver.start()
    assert driver.state() == State.RUNNING
    assert fake.console("dev").strip() == PARALLELS_NO_BOOT_EFI
    assert not fake.forward_works("dev", "tcp", driver.spec.ssh_port, 22)


def test_parallels_refuses_amd64_on_apple_silicon_and_names_the_fix(tmp_path: Path, apple_silicon: None) -> None:
    # Asked for an amd64 guest on Apple Silicon (a Python under Rosetta says x86_64):
    # Parallels makes an ARM VM, says so, and the driver refuses and deletes it.
    driver, fake = parallels_driver(tmp_path, name="dev", arch=ARM64)
    driver.spec = dataclasses.replace(driver.spec, arch=AMD64)
    with pytest.raises(DriverError) as caught:
        driver.create()
    assert one_line(caught.value) == (
        "Parallels on this Mac makes arm64 VMs (prlctl list -i: cpu type 'arm'), and machine 'dev' is amd64. "
        "Run `pymachine rm -f dev`, then `pymachine create --arch arm64`"
    )
    assert fake.vm("dev") is None
    driver.remove()
    assert not (driver.spec.directory / "parallels").exists()


def test_parallels_start_of_an_intel_vm_on_apple_silicon_surfaces_prlctls_refusal(tmp_path: Path, apple_silicon: None) -> None:
    driver, fake = parallels_driver(tmp_path, name="dev", arch=ARM64)
    driver.create()
    fake.set_cpu_type("dev", "x86")  # as if its bundle had been made on an Intel Mac
    driver.spec = dataclasses.replace(driver.spec, arch=AMD64)
    with pytest.raises(DriverError) as caught:
        driver.start()
    assert one_line(caught.value) == (
        "Parallels on this Mac cannot run machine 'dev', an amd64 VM: "
        + NOT_RUNNABLE_ON_ARM.format(name="dev")
        + " Run `pymachine rm -f dev`, then `pymachine create --arch arm64`"
    )
    assert fake.rules()["tcp"] == {}, "a refused start holds no host port"


def test_an_intel_mac_refuses_an_arm64_machine(tmp_path: Path, intel: None) -> None:
    driver, fake = parallels_driver(tmp_path, name="dev")
    driver.spec = dataclasses.replace(driver.spec, arch=ARM64)
    with pytest.raises(DriverError) as caught:
        driver.create()
    assert one_line(caught.value) == (
        "Parallels on this Mac makes amd64 VMs (prlctl list -i: cpu type 'x86'), and machine 'dev' is arm64. "
        "Run `pymachine rm -f dev`, then `pymachine create --arch amd64`"
    )


def test_parallels_guest_arches_follow_the_mac(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    driver, _ = parallels_driver(tmp_path)
    as_host(request, ARM64)
    assert ParallelsDriver.guest_arches(driver.runner, ParallelsOptions()) == {ARM64: NATIVE}
    as_host(request, AMD64)
    assert ParallelsDriver.guest_arches(driver.runner, ParallelsOptions()) == {AMD64: NATIVE}


def test_virtualbox_shares_no_folders_with_arm64_guests() -> None:
    """VirtualBox mounts shared folders with vboxsf, which Debian's arm64 kernel lacks."""
    from pymachine.driver import Feature

    assert VirtualBoxDriver.supports(Feature.SHARED_FOLDERS, "amd64")
    assert not VirtualBoxDriver.supports(Feature.SHARED_FOLDERS, "arm64")
