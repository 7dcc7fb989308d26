"""Large frames through QEMU's NAT: the guest's MTU, chosen at create from the driver's
Feature.LARGE_FRAMES, reaches the config medium (the guest's NIC, and the rewrite of the
MSS the NAT offers, in rcS) and daemon.json (Docker's networks). The live side, where a
download through a forward is seen to move in large packets, is in test_live_forwards."""

from __future__ import annotations

import json

import pytest

from pymachine.driver import LARGE_FRAME_MTU, Feature, driver_names, load_driver
from pymachine.forwarding.relay import describe
from pymachine.guest.certs import SSHKeyPair
from pymachine.guest.configmedium import config_medium
from pymachine.guest.iso9660 import read_files
from pymachine.guest.provision import daemon_config, engine_flags
from pymachine.store import MachineConfig

from .fakes.guest import dockerd_validate


def test_only_qemu_declares_large_frames() -> None:
    assert {name for name in driver_names() if load_driver(name).supports(Feature.LARGE_FRAMES)} == {"qemu"}
    assert f"guest MTU {LARGE_FRAME_MTU}" in describe(load_driver("qemu"))
    assert "MTU" not in describe(load_driver("virtualbox"))


def test_the_config_medium_carries_the_mtu_only_when_there_is_one() -> None:
    host = SSHKeyPair.generate("root@dev")
    with_mtu = read_files(config_medium("dev", "ssh-ed25519 AAAA k", host.private_pem, mtu=65520))
    assert with_mtu["network"] == b"mtu 65520\n"
    assert "network" not in read_files(config_medium("dev", "ssh-ed25519 AAAA k", host.private_pem))


def validate(config: MachineConfig) -> tuple[int, str]:
    daemon = json.dumps(daemon_config(config, config.driver)).encode()
    flags = "\n".join(engine_flags(config.engine_options)).encode()
    code, out, _ = dockerd_validate(daemon, flags, "/var/lib/pymachine/daemon.json")
    return code, out


def test_docker_networks_take_the_guest_mtu() -> None:
    config = MachineConfig(name="dev", driver="qemu", guest_mtu=65520)
    daemon = daemon_config(config, "qemu")
    assert daemon["mtu"] == 65520
    # compose's networks are bridges made after start: they take it from the defaults
    assert daemon["default-network-opts"] == {"bridge": {"com.docker.network.driver.mtu": "65520"}}
    assert validate(config)[0] == 0


def test_a_machine_without_large_frames_keeps_dockers_defaults() -> None:
    daemon = daemon_config(MachineConfig(name="dev", driver="virtualbox"), "virtualbox")
    assert "mtu" not in daemon and "default-network-opts" not in daemon


@pytest.mark.parametrize(
    ("option", "left_out"),
    [("mtu=1400", "mtu"), ("--mtu=1400", "mtu"), ("default-network-opt=bridge=com.docker.network.driver.mtu=1400", "default-network-opts")],
)
def test_the_users_own_engine_option_wins_and_is_not_given_twice(option: str, left_out: str) -> None:
    config = MachineConfig(name="dev", driver="qemu", guest_mtu=65520, engine_options=[option])
    daemon = daemon_config(config, "qemu")
    assert left_out not in daemon
    assert validate(config) == (0, "configuration OK\n")
    # had it been written anyway, dockerd would refuse to start
    flag = engine_flags([option])[0]
    code, out, _ = dockerd_validate(json.dumps({**daemon, left_out: "x"}).encode(), flag.encode(), "/var/lib/pymachine/daemon.json")
    assert code == 1 and "specified both as a flag and in the configuration file" in out


def test_daemon_json_never_gives_containers_more_than_the_nics_mtu() -> None:
    config = MachineConfig(name="dev", driver="qemu", guest_mtu=65520)
    assert daemon_config(config, "qemu", nic_mtu=65520)["mtu"] == 65520
    assert daemon_config(config, "qemu", nic_mtu=0)["mtu"] == 65520  # unknown: the config's
    fell_back = daemon_config(config, "qemu", nic_mtu=1500)
    assert "mtu" not in fell_back and "default-network-opts" not in fell_back


def test_a_guest_whose_boot_fell_back_to_1500_gets_dockers_defaults_and_back(tmp_path, monkeypatch) -> None:
    """rcS puts the NIC back to 1500 when it cannot rewrite the NAT's MSS; provisioning reads
    the NIC's MTU in the same round trip as its other facts, so daemon.json follows it (and
    dockerd restarts), and follows it back up once a boot sets large frames again."""
    from .test_fake_end_to_end import _world

    for machines, _fake, farm in _world(tmp_path, monkeypatch, "amd64"):
        from pymachine.machines import CreateOptions

        machines.create("dev", CreateOptions(driver="virtualbox", cpus=1, memory_mb=512, driver_options={"backend": "vboxmanage"}, force=True))
        machine = machines.get("dev")
        machine.config.guest_mtu = 65520  # as a QEMU machine's
        machine.save()
        guest = farm.guests["dev"]

        def daemon() -> dict:
            return json.loads(guest.files["/var/lib/pymachine/daemon.json"])

        guest.nic_mtu = 65520
        machines.get("dev").provision()
        assert daemon()["mtu"] == 65520
        starts = guest.engine_starts
        guest.nic_mtu = 1500
        machines.get("dev").provision()
        assert "mtu" not in daemon() and "default-network-opts" not in daemon()
        assert guest.engine_starts == starts + 1, "dockerd kept the old MTU"
        guest.nic_mtu = 65520
        machines.get("dev").provision()
        assert daemon()["mtu"] == 65520
