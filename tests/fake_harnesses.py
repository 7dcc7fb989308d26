"""Contract harnesses for the drivers that cannot boot a VM here: through faithful fakes.

test_driver_contract.py adds HARNESSES to its own. Each factory builds a driver on a
fresh folder, with the fake tools first on the Runner's path and their state file
named through the Runner's environment. probe_forward asks the fake's state whether a
running VM has that rule with those ports: what the real tool would report.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from pymachine.driver import BootMedia
from pymachine.drivers.parallels import ParallelsDriver, ParallelsOptions
from pymachine.drivers.virtualbox import VirtualBoxDriver, VirtualBoxOptions
from pymachine.runner import Runner

from .contract import Harness, make_spec
from .fakes import parallels_model, vbox_model
from .fakes.parallels_model import FakeParallels
from .fakes.pyvbox import FakePyvbox
from .fakes.tools import install
from .fakes.vbox_model import FakeVirtualBox


@dataclass
class FakeHost:
    """Where a harness's fakes live: the bin folder, the runner, the boot ISO."""

    bin_dir: Path
    runner: Runner
    iso: Path


def fake_host(tmp_path: Path, programs: tuple[str, ...], state_env: str, state: Path) -> FakeHost:
    bin_dir = install(tmp_path / "bin", *programs)
    iso = tmp_path / "boot.iso"
    # The drivers only hand the ISO to the hypervisor; the fakes check that it exists.
    iso.write_bytes(b"\0" * 32768)
    return FakeHost(bin_dir, Runner(path=str(bin_dir), env={state_env: str(state)}), iso)


def virtualbox_driver(tmp_path: Path, backend: str, name: str = "contract") -> tuple[VirtualBoxDriver, FakeVirtualBox]:
    """A VirtualBox driver on a fresh fake host: VBoxManage, or the API through fake pyvbox."""
    fake = FakeVirtualBox(tmp_path / "vbox.json").initialise()
    host = fake_host(tmp_path, ("VBoxManage",), vbox_model.STATE_ENV, fake.path)
    spec = make_spec(tmp_path / "machine", name, BootMedia(host.iso))
    api = FakePyvbox(fake) if backend == "api" else None
    driver = VirtualBoxDriver(spec, VirtualBoxOptions(backend=backend), host.runner, api=api)
    driver.retry_pause = 0.0
    driver.poll_interval = 0.05
    return driver, fake


def parallels_driver(tmp_path: Path, name: str = "contract") -> tuple[ParallelsDriver, FakeParallels]:
    """A Parallels driver on a fresh fake host (prlctl and prlsrvctl)."""
    fake = FakeParallels(tmp_path / "parallels.json").initialise()
    host = fake_host(tmp_path, ("prlctl", "prlsrvctl"), parallels_model.STATE_ENV, fake.path)
    spec = make_spec(tmp_path / "machine", name, BootMedia(host.iso))
    driver = ParallelsDriver(spec, ParallelsOptions(), host.runner)
    driver.poll_interval = 0.05
    driver.retry_pause = 0.0
    return driver, fake


def _virtualbox(name: str, backend: str) -> Callable[[Path, pytest.FixtureRequest], Harness]:
    def factory(tmp_path: Path, request: pytest.FixtureRequest) -> Harness:
        driver, fake = virtualbox_driver(tmp_path, backend)

        def probe(host_port: int, guest_port: int) -> bool:
            return fake.forward_works(driver.vm, "tcp", host_port, guest_port)

        return Harness(name, driver, probe, guest_service_port=22, extra={"fake": fake})

    return factory


def _parallels(tmp_path: Path, request: pytest.FixtureRequest) -> Harness:
    driver, fake = parallels_driver(tmp_path)

    def probe(host_port: int, guest_port: int) -> bool:
        return fake.forward_works(driver.vm, "tcp", host_port, guest_port)

    return Harness("parallels", driver, probe, guest_service_port=22, extra={"fake": fake})


HARNESSES: dict[str, Callable[[Path, pytest.FixtureRequest], Harness]] = {
    "virtualbox-cli": _virtualbox("virtualbox-cli", "vboxmanage"),
    "virtualbox-api": _virtualbox("virtualbox-api", "api"),
    "parallels": _parallels,
}
