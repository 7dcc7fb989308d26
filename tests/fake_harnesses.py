"""Contract harnesses for the drivers that cannot boot a VM here: through faithful fakes.

test_driver_contract.py adds HARNESSES to its own. Each factory builds a driver on a
fresh folder, with the fake tools first on the Runner's path and their state file
named through the Runner's environment. probe_forward asks the fake's state whether a
running VM whose guest booted has that rule with those ports: what the real tool (and
a connection through it) would show.

The "-arm" harnesses play an Apple Silicon Mac: the fake host is arm, the machine's
guest is arm64, its boot ISO is an EFI one holding \\EFI\\BOOT\\BOOTAA64.EFI, and
pymachine.arch.host_arch() sees arm64 (platform.machine is patched for the test; the
other harnesses see x86_64 the same way, wherever the tests run).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from pymachine.arch import AMD64, ARM64
from pymachine.driver import BootMedia
from pymachine.drivers.parallels import ParallelsDriver, ParallelsOptions
from pymachine.drivers.virtualbox import VirtualBoxDriver, VirtualBoxOptions
from pymachine.runner import Runner

from .contract import Harness, make_spec
from .fakes import parallels_model, vbox_model
from .fakes.isos import write_boot_iso
from .fakes.parallels_model import FakeParallels
from .fakes.pyvbox import FakePyvbox
from .fakes.tools import install
from .fakes.vbox_model import FakeVirtualBox

#: The fake hosts' architecture names for each guest architecture.
VBOX_PLATFORMS = {AMD64: "x86", ARM64: "arm"}
#: What `platform.machine()` says on such a host (macOS on Apple Silicon: arm64).
MACHINE_NAMES = {AMD64: "x86_64", ARM64: "arm64"}
#: The boot ISO each guest architecture boots: pymachine's isolinux (BIOS) image for
#: amd64, an EFI image with BOOTAA64.EFI for arm64.
ISO_KINDS = {AMD64: "bios", ARM64: "arm64"}
#: VirtualBox on Apple Silicon: 7.1 is the first release with the ARM platform.
VBOX_ARM_VERSION = ("7.1.6", "167084")


@dataclass
class FakeHost:
    """Where a harness's fakes live: the bin folder, the runner, the boot ISO."""

    bin_dir: Path
    runner: Runner
    iso: Path


def fake_host(tmp_path: Path, programs: tuple[str, ...], state_env: str, state: Path, arch: str = AMD64) -> FakeHost:
    bin_dir = install(tmp_path / "bin", *programs)
    # The fakes boot a VM only from an ISO its firmware can start, as the real ones do.
    iso = write_boot_iso(tmp_path / "boot.iso", ISO_KINDS[arch])
    return FakeHost(bin_dir, Runner(path=str(bin_dir), env={state_env: str(state)}), iso)


def virtualbox_driver(tmp_path: Path, backend: str, name: str = "contract", arch: str = AMD64) -> tuple[VirtualBoxDriver, FakeVirtualBox]:
    """A VirtualBox driver on a fresh fake host of `arch`: VBoxManage, or the API through fake pyvbox."""
    fake = FakeVirtualBox(tmp_path / "vbox.json")
    if arch == ARM64:
        version, revision = VBOX_ARM_VERSION
        fake.initialise(version=version, revision=revision, host_arch="arm")
    else:
        fake.initialise()
    host = fake_host(tmp_path, ("VBoxManage",), vbox_model.STATE_ENV, fake.path, arch)
    spec = dataclasses.replace(make_spec(tmp_path / "machine", name, BootMedia(host.iso)), arch=arch)
    api = FakePyvbox(fake) if backend == "api" else None
    driver = VirtualBoxDriver(spec, VirtualBoxOptions(backend=backend), host.runner, api=api)
    driver.retry_pause = 0.0
    driver.poll_interval = 0.05
    return driver, fake


def parallels_driver(tmp_path: Path, name: str = "contract", arch: str = AMD64) -> tuple[ParallelsDriver, FakeParallels]:
    """A Parallels driver on a fresh fake host (prlctl and prlsrvctl): an Intel Mac for
    amd64, an Apple Silicon Mac for arm64."""
    fake = FakeParallels(tmp_path / "parallels.json").initialise(host_arch=VBOX_PLATFORMS[arch])
    host = fake_host(tmp_path, ("prlctl", "prlsrvctl", "prl_disk_tool"), parallels_model.STATE_ENV, fake.path, arch)
    spec = dataclasses.replace(make_spec(tmp_path / "machine", name, BootMedia(host.iso)), arch=arch)
    driver = ParallelsDriver(spec, ParallelsOptions(), host.runner)
    driver.poll_interval = 0.05
    driver.retry_pause = 0.0
    return driver, fake


def as_host(request: pytest.FixtureRequest, arch: str) -> None:
    """Make pymachine.arch.host_arch() report `arch` for the rest of this test."""
    monkeypatch: pytest.MonkeyPatch = request.getfixturevalue("monkeypatch")
    monkeypatch.setattr("platform.machine", lambda: MACHINE_NAMES[arch])


def _virtualbox(name: str, backend: str, arch: str = AMD64) -> Callable[[Path, pytest.FixtureRequest], Harness]:
    def factory(tmp_path: Path, request: pytest.FixtureRequest) -> Harness:
        as_host(request, arch)
        driver, fake = virtualbox_driver(tmp_path, backend, arch=arch)

        def probe(host_port: int, guest_port: int) -> bool:
            return fake.forward_works(driver.vm, "tcp", host_port, guest_port)

        def from_network(host_port: int, guest_port: int) -> bool:
            return fake.forward_works(driver.vm, "tcp", host_port, guest_port, host_ip="192.0.2.10")

        return Harness(name, driver, probe, guest_service_port=22, probe_from_network=from_network, extra={"fake": fake})

    return factory


def _parallels(name: str, arch: str = AMD64) -> Callable[[Path, pytest.FixtureRequest], Harness]:
    def factory(tmp_path: Path, request: pytest.FixtureRequest) -> Harness:
        as_host(request, arch)
        driver, fake = parallels_driver(tmp_path, arch=arch)

        def probe(host_port: int, guest_port: int) -> bool:
            return fake.forward_works(driver.vm, "tcp", host_port, guest_port)

        def from_network(host_port: int, guest_port: int) -> bool:
            return fake.forward_works(driver.vm, "tcp", host_port, guest_port, host_ip="192.0.2.10")

        return Harness(name, driver, probe, guest_service_port=22, probe_from_network=from_network, extra={"fake": fake})

    return factory


HARNESSES: dict[str, Callable[[Path, pytest.FixtureRequest], Harness]] = {
    "virtualbox-cli": _virtualbox("virtualbox-cli", "vboxmanage"),
    "virtualbox-api": _virtualbox("virtualbox-api", "api"),
    "virtualbox-arm": _virtualbox("virtualbox-arm", "auto", ARM64),
    "parallels": _parallels("parallels"),
    "parallels-arm": _parallels("parallels-arm", ARM64),
}
