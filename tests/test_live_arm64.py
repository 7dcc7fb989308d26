"""The arm64 guest (Apple Silicon's architecture), for real, under qemu-system-aarch64 TCG.

- The arm64 image boots through UEFI from its ISO (AAVMF, systemd-boot) to SSH with
  the pinned host key.
- One machine made with `pymachine create --arch arm64` (direct kernel boot) serves the
  rest of the module: its Docker reports linux/arm64, a published port answers on this
  host through the automatic forward, `docker run --platform linux/amd64` runs x86-64
  code through the image's QEMU user-mode emulator, and the machine stops cleanly and
  comes back.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest

from pymachine.driver import BootMedia
from pymachine.drivers.qemu import QemuDriver, QemuOptions
from pymachine.errors import SSHError
from pymachine.guest.certs import SSHKeyPair
from pymachine.guest.ssh import GuestSSH, SSHTarget
from pymachine.image import BootImage
from pymachine.runner import Runner

from .conftest import image_cache, make_rootfs
from .contract import make_spec, wait_for
from .live import CLI, free_port, http_get

pytestmark = [pytest.mark.live, pytest.mark.timeout(900)]
NAME = "a64"


def ssh_target(spec) -> SSHTarget:
    host_key = SSHKeyPair.public_of(spec.directory / "ssh_host_ed25519_key")
    return SSHTarget(spec.name, "127.0.0.1", spec.ssh_port, "root", spec.directory / "id_ed25519", " ".join(host_key.split()[:2]))


def test_the_arm64_iso_boots_by_uefi_to_ssh_with_the_pinned_host_key(tmp_path: Path, boot_image_arm64: BootImage) -> None:
    image = boot_image_arm64
    spec = dataclasses.replace(make_spec(tmp_path / "m", "uefi64", BootMedia(image.iso, image.kernel, image.initrd, image.cmdline)), arch="arm64")
    driver = QemuDriver(spec, QemuOptions(restrict_network=True, boot="cdrom"), Runner())
    assert "-kernel" not in driver.command_line() and any("pflash" in a for a in driver.command_line())
    driver.create()
    driver.start()
    ssh = GuestSSH(ssh_target(spec))
    try:
        ssh.wait(180)
        out = ssh.run("uname -m; hostname; cat /proc/cmdline").stdout.splitlines()
        assert out[0] == "aarch64"
        assert out[1] == "uefi64", "the hostname comes from the config medium"
        assert out[2].startswith("initrd=\\initrd "), "systemd-boot started the kernel"
        assert "mitigations=off" in out[2] and "norandmaps" in out[2], "the emulation words reached a CD boot"
        impostor = SSHKeyPair.generate("impostor").public_line
        with pytest.raises(SSHError, match="host key differs"):
            GuestSSH(dataclasses.replace(ssh_target(spec), host_key=" ".join(impostor.split()[:2]))).connect()
    finally:
        ssh.close()
        driver.remove()


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory, boot_image_arm64: BootImage, docker_config):
    cli = CLI(tmp_path_factory.mktemp("store"), image_cache())
    folder = tmp_path_factory.mktemp("rootfs")
    cli.rootfs = {arch: make_rootfs(arch, folder) for arch in ("arm64", "amd64")}
    yield cli
    cli.pm("rm", "-f", "-y", NAME, check=False)


def test_create_arm64_gives_a_docker_that_reports_linux_arm64(cli: CLI) -> None:
    started = time.monotonic()
    created = cli.pm("create", NAME, "--arch", "arm64", "-o", "restrict-network=true", "--no-mounts")
    print(f"arm64 create to Docker ready: {time.monotonic() - started:.1f}s")
    assert "emulated" in created.stderr, "an arm64 guest on this x86-64 host says it is emulated, in one line"
    server = json.loads(cli.docker(NAME, "version", "--format", "{{json .Server}}").stdout)
    assert (server["Os"], server["Arch"]) == ("linux", "arm64")
    rows = json.loads(cli.pm("ls", "--format", "json").stdout)
    assert [(r["Name"], r["Arch"], r["State"]) for r in rows] == [(NAME, "arm64", "Running")]
    assert json.loads(cli.pm("inspect", NAME).stdout)["arch"] == "arm64"


def test_a_published_port_answers_on_the_host(cli: CLI) -> None:
    cli.docker(NAME, "import", str(cli.rootfs["arm64"]), "busybox-arm64:latest")
    port = free_port()
    cli.docker(NAME, "run", "-d", "--name", "web", "-p", f"{port}:80", "busybox-arm64", "httpd", "-f", "-p", "80", "-h", "/www")
    try:
        assert wait_for(lambda: http_get(port) is not None, timeout=10), "the published port never answered on the host"
        assert "hello from a container" in (http_get(port) or "")
        # large frames through QEMU's NAT, as on amd64: the NIC's MTU and the MSS rewrite
        guest = cli.pm("ssh", NAME, "cat /sys/class/net/eth0/mtu; /sbin/tc filter show dev eth0 ingress").stdout
        assert guest.splitlines()[0] == "65520" and "pedit" in guest
        assert cli.docker(NAME, "exec", "web", "cat", "/sys/class/net/eth0/mtu").stdout.strip() == "65520"
    finally:
        cli.docker(NAME, "rm", "-f", "web")
    assert wait_for(lambda: http_get(port, timeout=0.5) is None, timeout=5), "the forward outlived its container"


def test_amd64_containers_run_through_the_emulator(cli: CLI) -> None:
    cli.docker(NAME, "import", "--platform", "linux/amd64", str(cli.rootfs["amd64"]), "busybox-amd64:latest")
    image = json.loads(cli.docker(NAME, "image", "inspect", "busybox-amd64").stdout)[0]
    assert image["Architecture"] == "amd64"
    out = cli.docker(NAME, "run", "--rm", "--platform", "linux/amd64", "busybox-amd64", "uname", "-m").stdout
    assert out.strip() == "x86_64"
    native = cli.docker(NAME, "run", "--rm", "busybox-arm64", "uname", "-m").stdout
    assert native.strip() == "aarch64"


def test_stop_is_clean_and_start_brings_docker_back(cli: CLI) -> None:
    """The virt board's power button (a GPIO line under direct kernel boot) reaches the
    guest, which shuts down by itself; with a long timeout, a guest that ignored it would
    only stop when forced, and its console would not say it shut down."""
    cli.pm("stop", NAME, "--timeout", "300")
    assert cli.pm("status", NAME).stdout.strip() == "Stopped"
    console = (cli.machine_dir(NAME) / "serial.log").read_text(errors="replace")
    assert "pymachine: shutting down" in console, "the guest never heard the power button"
    cli.pm("start", NAME)
    out = cli.docker(NAME, "run", "--rm", "--platform", "linux/amd64", "busybox-amd64", "uname", "-m").stdout
    assert out.strip() == "x86_64", "the emulator is registered again after a reboot"
