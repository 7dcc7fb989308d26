"""The boot image, booted for real under QEMU (restrict=on): SSH with the pinned host key,
the data disk across a reboot, the engine bundle running dockerd, the -cdrom path, and
a boot with neither network nor data disk.
"""

from __future__ import annotations

import dataclasses
import hashlib
import subprocess
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

from .contract import make_spec, wait_for

pytestmark = [pytest.mark.live, pytest.mark.timeout(600)]


def boot_media(image: BootImage) -> BootMedia:
    return BootMedia(image.iso, image.kernel, image.initrd, image.cmdline, image.pvh_kernel)


def target_for(spec) -> SSHTarget:
    host_key = SSHKeyPair.public_of(spec.directory / "ssh_host_ed25519_key")
    return SSHTarget(spec.name, "127.0.0.1", spec.ssh_port, "root", spec.directory / "id_ed25519", " ".join(host_key.split()[:2]))


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory, boot_image: BootImage):
    spec = make_spec(tmp_path_factory.mktemp("boot") / "m", "bootcheck", boot_media(boot_image))
    driver = QemuDriver(spec, QemuOptions(restrict_network=True), Runner())
    driver.create()
    driver.start()
    ssh = GuestSSH(target_for(spec))
    try:
        ssh.wait(120)
        yield driver, spec, ssh
    finally:
        ssh.close()
        driver.remove()


def test_key_login_with_the_pinned_host_key(guest) -> None:
    driver, spec, ssh = guest
    result = ssh.run("id -u; hostname; cat /etc/os-release")
    lines = result.stdout.splitlines()
    assert lines[0] == "0"
    assert lines[1] == "bootcheck", "the hostname comes from the config medium"
    assert 'ID=pymachine' in result.stdout


def test_a_different_host_key_is_refused(guest) -> None:
    driver, spec, ssh = guest
    impostor = SSHKeyPair.generate("impostor").public_line
    target = dataclasses.replace(target_for(spec), host_key=" ".join(impostor.split()[:2]))
    with pytest.raises(SSHError, match="host key differs"):
        GuestSSH(target).connect()


def test_password_login_is_not_offered(guest) -> None:
    import paramiko

    driver, spec, ssh = guest
    transport = paramiko.Transport(("127.0.0.1", spec.ssh_port))
    try:
        transport.start_client(timeout=10)
        with pytest.raises(paramiko.BadAuthenticationType) as refused:
            transport.auth_password("root", "root")
        assert "password" not in refused.value.allowed_types
    finally:
        transport.close()


def test_data_disk_is_labelled_and_survives_a_reboot(guest) -> None:
    driver, spec, ssh = guest
    mounts = ssh.run("grep ' /mnt/data ' /proc/mounts; findfs LABEL=pymachine-data").stdout
    assert " ext4 " in mounts, "the blank data disk was formatted ext4 and mounted"
    token = hashlib.sha256(str(time.time()).encode()).hexdigest()
    ssh.run(f"echo {token} > /var/lib/pymachine/reboot-marker && sync")
    ssh.close()
    driver.stop(timeout=60)
    driver.start()
    ssh.wait(120)
    assert ssh.run("cat /var/lib/pymachine/reboot-marker").stdout.strip() == token
    assert "formatting" not in ssh.run("cat /var/log/pymachine.log").stdout, "a disk with data is never formatted again"


def test_engine_bundle_is_complete(guest, boot_image: BootImage) -> None:
    """Unpacked in the guest, the bundle's dockerd answers /_ping on its unix socket."""
    driver, spec, ssh = guest
    assert boot_image.engine_bundle is not None
    ssh.put(boot_image.engine_bundle, "/var/lib/pymachine/bundle.tar.zst")
    ssh.run(f"/usr/libexec/pymachine/engine install /var/lib/pymachine/bundle.tar.zst {boot_image.engine_sha256}", timeout=300)
    assert ssh.run("/usr/libexec/pymachine/engine version").stdout.strip() == boot_image.engine_sha256
    ssh.write("/var/lib/pymachine/daemon.json", b'{"hosts": ["unix:///var/run/docker.sock"]}')
    ssh.run("/usr/libexec/pymachine/engine start")

    def pinged() -> bool:
        out = ssh.run("printf 'GET /_ping HTTP/1.0\\r\\n\\r\\n' | nc.openbsd -N -U /var/run/docker.sock", check=False, timeout=30).stdout
        return out.startswith("HTTP/1.0 200") and out.rstrip().endswith("OK")

    assert wait_for(pinged, timeout=120, interval=1.0), ssh.run("tail -20 /var/log/docker.log", check=False).stdout
    ssh.run("/usr/libexec/pymachine/engine stop", timeout=60)


def test_a_wrong_bundle_checksum_is_refused(guest, boot_image: BootImage) -> None:
    driver, spec, ssh = guest
    ssh.write("/var/lib/pymachine/bad.tar.zst", b"not a bundle")
    result = ssh.run(f"/usr/libexec/pymachine/engine install /var/lib/pymachine/bad.tar.zst {'0' * 64}", check=False)
    assert result.returncode != 0
    assert "checksum mismatch" in result.stderr


def test_cdrom_boot_reaches_ssh(tmp_path: Path, boot_image: BootImage) -> None:
    spec = make_spec(tmp_path / "cd", "cdboot", boot_media(boot_image))
    driver = QemuDriver(spec, QemuOptions(restrict_network=True, boot="cdrom"), Runner())
    driver.create()
    assert "-kernel" not in driver.command_line()
    driver.start()
    try:
        with GuestSSH(target_for(spec)) as ssh:
            ssh.wait(180)
            assert ssh.run("hostname").stdout.strip() == "cdboot"
    finally:
        driver.remove()


def test_boot_without_network_or_data_disk_says_what_is_missing(tmp_path: Path, boot_image: BootImage) -> None:
    spec = make_spec(tmp_path / "bare", "bare", boot_media(boot_image))
    driver = QemuDriver(spec, QemuOptions(restrict_network=True), Runner())
    driver.create()
    argv = driver.command_line()
    # The same machine with no NIC and no data disk.
    for flag, marker in (("-netdev", "user,"), ("-device", "virtio-net-pci"), ("-drive", "id=data"), ("-device", "drive=data")):
        index = next(i for i, a in enumerate(argv) if a == flag and marker in argv[i + 1])
        del argv[index : index + 2]
    subprocess.run(argv, check=True)
    log = spec.directory / "serial.log"
    try:
        assert wait_for(lambda: log.exists() and b"pymachine: ready" in log.read_bytes(), timeout=120, interval=0.5)
        text = log.read_text(errors="replace")
        assert "no network: no network card found" in text
        assert "no data disk: running from RAM" in text
    finally:
        driver.kill()
        driver.remove()
