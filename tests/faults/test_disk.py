"""Fault: a full data disk, and growing it (issue 11, defect 3); certificates that stay put
while docker0 comes and goes (defect 11); Parallels' passing states.

Through the fakes here (VirtualBox, Parallels, a scripted guest) and the real qemu-img;
test_live_disk.py fills the disk of a real QEMU machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pymachine import machine as machine_module
from pymachine.driver import BootMedia, Feature, State
from pymachine.drivers.parallels import TRANSITIONAL_STATUSES, VM_STATES, ParallelsDriver
from pymachine.drivers.qemu import QemuDriver, QemuOptions
from pymachine.errors import DataDiskFull, DriverError, MachineError, MachineStateError
from pymachine.guest.provision import FACTS_SCRIPT, FULL_BELOW_KB, GuestFacts, full_disk_error, nic_addresses
from pymachine.machines import CreateOptions, Machines
from pymachine.procs import alive, read_pidfile
from pymachine.runner import Runner
from pymachine.store import STATUS_ERROR, STATUS_READY

from ..conftest import image_cache
from ..contract import make_spec, wait_for
from ..fake_harnesses import parallels_driver, virtualbox_driver
from ..fakes.guest import GuestFarm
from ..fakes.parallels_model import VM_STATE_WORDS, FakeParallels
from ..fakes.vbox_model import FakeVirtualBox
from ..live import CLI
from ..test_fake_end_to_end import _world

MB = 1024

# -- defect 11: the server certificate names the configured NIC only --------------------

#: `ip -4 -o addr show scope global | awk '{print $2, $4}'` in a guest running containers
#: (busybox's ip and iproute2 print the same columns).
ADDRESSES = """eth0 10.0.2.15/24
docker0 172.17.0.1/16
br-5f2a9c1e3b7d 172.18.0.1/16
"""


def test_only_the_configured_nic_names_the_server() -> None:
    assert nic_addresses("eth0", ADDRESSES) == ["10.0.2.15"]
    assert nic_addresses("enp0s3", "enp0s3 10.0.2.15/24\ndocker0 172.17.0.1/16\n") == ["10.0.2.15"]


def test_an_image_that_does_not_name_its_nic_leaves_the_engines_out() -> None:
    assert nic_addresses("", ADDRESSES + "veth1a2b 169.254.3.1/16\n") == ["10.0.2.15"]


def test_the_facts_script_asks_for_the_nic_and_the_room() -> None:
    # The guest's boot writes the NIC it configured here (iso/rootfs/etc/init.d/rcS).
    rcs = (Path(__file__).resolve().parents[2] / "iso" / "rootfs" / "etc" / "init.d" / "rcS").read_text()
    assert 'echo "$nic" > /run/pymachine/nic' in rcs
    assert "cat /run/pymachine/nic" in FACTS_SCRIPT and "df -kP /mnt/data" in FACTS_SCRIPT


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Machines, FakeVirtualBox, GuestFarm]]:
    """pymachine on a fake VirtualBox host; the guests' data disks are the fake's VDIs."""
    monkeypatch.setattr(machine_module, "ENGINE_BOOT_TIMEOUT", 2.0)
    for made in _world(tmp_path, monkeypatch, "amd64"):
        machines, fake, farm = made
        farm.disk_mb = lambda name, fake=fake, machines=machines: vdi_size(fake, machines, name)
        farm.boot_id = lambda name, fake=fake: fake.machine(name)["state_changed"]
        yield made


def vdi_size(fake: FakeVirtualBox, machines: Machines, name: str) -> int:
    disk = str(machines.get(name).directory / "data.vdi")
    return int(fake.read()["media"][disk]["size_mb"])


def create(machines: Machines, name: str = "dev", disk_mb: int = 2 * MB) -> None:
    machines.create(name, CreateOptions(driver="virtualbox", cpus=1, memory_mb=512, disk_mb=disk_mb, driver_options={"backend": "vboxmanage"}, force=True))


def digest(*paths: Path) -> str:
    value = hashlib.sha256()
    for path in paths:
        value.update(path.read_bytes())
    return value.hexdigest()


def test_provision_after_create_restarts_nothing(world: tuple[Machines, FakeVirtualBox, GuestFarm]) -> None:
    machines, _fake, farm = world
    create(machines)
    guest = farm.guests["dev"]
    assert guest.engine_ran and guest.engine_starts == 1
    machine = machines.get("dev")
    certificate = digest(machine.directory / "server.pem", machine.directory / "server-key.pem")
    machine.provision()
    assert guest.engine_starts == 1, "dockerd was restarted though nothing changed"
    assert not [c for c in guest.commands if c.endswith("engine restart")]
    assert digest(machine.directory / "server.pem", machine.directory / "server-key.pem") == certificate


# -- defect 3: a full data disk ------------------------------------------------------------


def fill(farm: GuestFarm, name: str = "dev", leave_kb: int = 512) -> None:
    size, _ = farm.space(name)
    farm.guests[name].used_kb = size - leave_kb


def test_the_message_names_the_fix_the_engine_allows() -> None:
    running = GuestFacts(["10.0.2.15"], "", True, True, {}, data_kb=2 * MB * MB, free_kb=100)
    stopped = GuestFacts(["10.0.2.15"], "", False, True, {}, data_kb=2 * MB * MB, free_kb=100)
    for facts in (running, stopped):
        assert facts.data_disk_full
        text = str(full_disk_error("dev", facts))
        assert "\n" not in text and "is full (0 MB free of 2.0 GB)" in text and "the VM is left running" in text
        assert "`pymachine disk grow dev 4G`" in text
    assert "`docker --context pymachine-dev system prune -a`" in str(full_disk_error("dev", running))
    assert "`pymachine ssh dev`" in str(full_disk_error("dev", stopped))
    room = GuestFacts([], "", True, True, {}, data_kb=2 * MB * MB, free_kb=FULL_BELOW_KB)
    assert not room.data_disk_full


def test_a_full_disk_is_said_and_the_machine_stays_reachable(world: tuple[Machines, FakeVirtualBox, GuestFarm]) -> None:
    machines, fake, farm = world
    create(machines)
    machine = machines.get("dev")
    keys = digest(machine.directory / "id_ed25519", machine.directory / "ca.pem", machine.directory / "server.pem")
    fill(farm)
    calls = len(fake.calls())

    with pytest.raises(DataDiskFull) as provision:
        machine.provision()
    said = str(provision.value)
    assert "\n" not in said and "The data disk of machine 'dev' is full" in said and "`pymachine disk grow dev 4G`" in said
    # Nothing was written into the full guest, nothing was powered off.
    assert not [c for c in fake.calls()[calls:] if c[:2] == ["VBoxManage", "controlvm"]]
    assert fake.machine("dev")["state"] == "running"
    config = machines.get("dev").config
    assert (config.status, config.error.startswith("The data disk of machine 'dev' is full")) == (STATUS_ERROR, True)

    # stop and start: dockerd cannot come up; the VM stays up, in state Error, with the reason.
    machine.stop()
    with pytest.raises(DataDiskFull):
        machine.start()
    assert fake.machine("dev")["state"] == "running", "start powered the VM off: `pymachine ssh` could not get in"
    assert machines.get("dev").status() == State.ERROR.value
    # Another start tries again (the VM runs, its machine is in Error) and says the same.
    with pytest.raises(DataDiskFull):
        machines.get("dev").start()

    # VirtualBox grows a disk only while the VM is off: refused in one line, naming the way.
    with pytest.raises(MachineStateError, match=r"Run `pymachine stop dev` first, or `pymachine disk grow --restart dev 4G`"):
        machines.get("dev").grow_disk(4 * MB)
    with pytest.raises(MachineError, match=r"can grow, never shrink to 1G"):
        machines.get("dev").grow_disk(1 * MB)
    assert vdi_size(fake, machines, "dev") == 2 * MB

    before, after = machines.get("dev").grow_disk(4 * MB, restart=True)
    assert (before, after) == (2 * MB, 4 * MB)
    assert ["VBoxManage", "modifymedium", "disk", str(machine.directory / "data.vdi"), "--resize", "4096"] in fake.calls()
    config = machines.get("dev").config
    assert (config.status, config.error, config.disk_mb) == (STATUS_READY, "", 4 * MB)
    assert fake.machine("dev")["state"] == "running" and farm.guests["dev"].engine_running
    assert digest(machine.directory / "id_ed25519", machine.directory / "ca.pem", machine.directory / "server.pem") == keys


def test_space_freed_by_hand_is_recovered_by_start(world: tuple[Machines, FakeVirtualBox, GuestFarm]) -> None:
    machines, _fake, farm = world
    create(machines)
    fill(farm)
    with pytest.raises(DataDiskFull):
        machines.get("dev").provision()
    farm.guests["dev"].used_kb = MB * MB  # `pymachine ssh dev rm ...`
    machines.get("dev").start()
    assert machines.get("dev").config.status == STATUS_READY


# -- disk grow on every driver -------------------------------------------------------------


@pytest.fixture(params=["virtualbox-cli", "virtualbox-api", "parallels", "parallels-arm"])
def stopped_vm(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    name = request.param
    if name.endswith("-arm"):
        monkeypatch.setattr("platform.machine", lambda: "arm64")
    if name.startswith("virtualbox"):
        driver, fake = virtualbox_driver(tmp_path, "api" if name.endswith("api") else "vboxmanage", name="dev")
    else:
        driver, fake = parallels_driver(tmp_path, name="dev", arch="arm64" if name.endswith("-arm") else "amd64")
    driver.create()
    yield driver, fake
    driver.remove()


def test_every_driver_grows_a_stopped_disk_and_never_shrinks_it(stopped_vm) -> None:
    driver, _fake = stopped_vm
    assert driver.supports(Feature.DISK_GROW) and not driver.supports(Feature.ONLINE_DISK_GROW)
    assert driver.disk_size_mb() == driver.spec.disk_mb == 4096
    driver.start()
    with pytest.raises(MachineStateError, match=r"only while it is (powered off|stopped).*Run `pymachine stop dev` first"):
        driver.grow_disk(6144)
    driver.stop(timeout=5)
    driver.grow_disk(6144)
    assert driver.disk_size_mb() == 6144
    # The tools themselves refuse to shrink (pymachine refuses before ever asking them).
    with pytest.raises(DriverError, match=r"[Ss]hrink|smaller"):
        driver.grow_disk(2048)
    assert driver.disk_size_mb() == 6144
    driver.start()
    assert driver.state() == State.RUNNING


def test_prl_disk_tool_is_called_as_documented(tmp_path: Path) -> None:
    driver, fake = parallels_driver(tmp_path, name="dev")
    driver.create()
    driver.grow_disk(8192)
    image = fake.vm("dev")["devices"]["hdd0"]["image"]
    assert ["prl_disk_tool", "resize", "--hdd", image, "--size", "8192M"] in fake.calls()


def test_qemu_img_grows_a_stopped_qcow2(tmp_path: Path) -> None:
    """The real qemu-img, on a real (empty) data disk: no VM needed."""
    spec = make_spec(tmp_path / "m", "dev", BootMedia(tmp_path / "boot.iso"))
    driver = QemuDriver(spec, QemuOptions(accel="tcg"), Runner())
    driver.create()
    assert driver.disk_size_mb() == 4096
    driver.grow_disk(6144)
    assert driver.disk_size_mb() == 6144


# -- Parallels: every word prlctl prints, and the ones it passes through ---------------------


def parallels_vm_in(tmp_path: Path, status: str, settle_timeout: float) -> tuple[ParallelsDriver, FakeParallels]:
    """Parallels VM 'dev', made on the fake host, then put in `status` as prlctl would show
    it; its driver waits `settle_timeout` seconds for a passing status to end. (driver, fake)"""
    driver, fake = parallels_driver(tmp_path, name="dev")
    driver.settle_timeout = settle_timeout
    driver.create()
    fake.set_status("dev", status)
    return driver, fake


@pytest.mark.parametrize("status", sorted(VM_STATE_WORDS.values()))
def test_start_from_every_status_starts_or_says_what_to_run(tmp_path: Path, status: str) -> None:
    driver, fake = parallels_vm_in(tmp_path, status, settle_timeout=0.3)
    assert status in VM_STATES
    try:
        driver.start()
    except MachineStateError as exc:
        text = str(exc)
        assert "\n" not in text and re.search(r"[Rr]un (`(pymachine|prlctl) [^`]+`|the command again)", text), text
        assert status != "stopped"
    else:
        assert status in ("stopped", "suspended")
        assert fake.vm("dev")["status"] == "running"


@pytest.mark.parametrize("status", ["compacting", "stopping", "syncing", "del_snapshot"])
def test_start_waits_for_parallels_to_finish(tmp_path: Path, status: str) -> None:
    driver, fake = parallels_vm_in(tmp_path, status, settle_timeout=20.0)
    assert status in TRANSITIONAL_STATUSES
    timer = threading.Timer(0.5, fake.set_status, ("dev", "stopped"))
    timer.start()
    started = time.monotonic()
    try:
        driver.start()
    finally:
        timer.join()
    assert time.monotonic() - started >= 0.5
    assert fake.vm("dev")["status"] == "running"


def test_the_fakes_state_words_are_not_the_drivers() -> None:
    """The fake's words come from prlctl (vmstate2str), not from the driver's tables."""
    import inspect

    from ..fakes import parallels_model

    assert "pymachine.drivers" not in inspect.getsource(parallels_model)
    assert set(VM_STATE_WORDS.values()) <= set(VM_STATES)


# -- live: a real QEMU machine whose data disk fills up -------------------------------------

LIVE_NAME = "full"


def one_line_error(done: subprocess.CompletedProcess, *needles: str) -> str:
    """The command failed with exit 1 and one `Error:` line (its last), no traceback."""
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr and "Unexpected" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and done.stderr.rstrip().endswith(errors[0]), done.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def guest(cli: CLI, script: str, timeout: float = 300) -> str:
    return cli.pm("ssh", LIVE_NAME, script, timeout=timeout).stdout


def keys_digest(cli: CLI) -> str:
    folder = cli.machine_dir(LIVE_NAME)
    return digest(*(folder / name for name in ("id_ed25519", "ssh_host_ed25519_key", "ca.pem", "cert.pem", "key.pem", "known_hosts", "config.iso")))


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, boot_image, busybox_rootfs: Path, docker_config) -> Iterator[CLI]:
    """One real machine for the whole module, with a small (1.5 GB) data disk."""
    cli = CLI(tmp_path_factory.mktemp("store"), image_cache())
    cli.pm("create", LIVE_NAME, "-o", "restrict-network=true", "--memory", "1536", "--disk-size", "1536M", "--no-mounts", timeout=900)
    cli.docker(LIVE_NAME, "import", str(busybox_rootfs), "busybox-local:latest")
    pidfile = cli.machine_dir(LIVE_NAME) / "qemu.pid"
    yield cli
    qemu = read_pidfile(pidfile)
    cli.pm("rm", "-f", "-y", LIVE_NAME, check=False)
    assert qemu is None or wait_for(lambda: not alive(qemu), timeout=30), "QEMU outlived `rm -f`"


def dockerd_pid(cli: CLI) -> str:
    return guest(cli, "cat /run/pymachine/dockerd.pid").strip()


@pytest.mark.live
@pytest.mark.timeout(1800)
def test_live_provision_after_create_leaves_dockerd_and_containers_alone(live: CLI) -> None:
    cli = live
    cli.docker(LIVE_NAME, "run", "-d", "--name", "sleeper", "busybox-local", "sleep", "86400")
    started = cli.docker(LIVE_NAME, "inspect", "-f", "{{.State.StartedAt}}", "sleeper").stdout.strip()
    pid = dockerd_pid(cli)
    # docker0 now exists in the guest; the certificate must not name it.
    assert "172.17.0.1" in guest(cli, "ip -4 -o addr show dev docker0")
    server = digest(cli.machine_dir(LIVE_NAME) / "server.pem")
    done = cli.pm("provision", LIVE_NAME)
    assert "Traceback" not in done.stderr
    assert dockerd_pid(cli) == pid, "provision restarted dockerd though nothing changed"
    assert digest(cli.machine_dir(LIVE_NAME) / "server.pem") == server, "the server certificate was reissued"
    state = cli.docker(LIVE_NAME, "inspect", "-f", "{{.State.Running}} {{.State.StartedAt}}", "sleeper").stdout.split()
    assert state == ["true", started], "the container without a restart policy was stopped"


@pytest.mark.live
@pytest.mark.timeout(1800)
def test_live_a_full_data_disk_stays_reachable_and_grows_online(live: CLI) -> None:
    cli = live
    keys = keys_digest(cli)
    # Fill the data disk to the last block, as images and logs would.
    guest(cli, "fallocate -l $(df -kP /mnt/data | awk 'NR == 2 {print $4}')k /var/lib/docker/filler; sync; df -kP /mnt/data")
    assert guest(cli, "df -kP /mnt/data | awk 'NR == 2 {print $4}'").strip() == "0"

    # provision: one line that names the disk and the fix; the VM keeps running.
    said = one_line_error(cli.pm("provision", LIVE_NAME, check=False), f"The data disk of machine '{LIVE_NAME}' is full", f"`pymachine disk grow {LIVE_NAME} 3G`")
    assert "left running" in said
    assert cli.pm("status", LIVE_NAME).stdout.strip() == "Error"
    assert guest(cli, "echo in").strip() == "in"

    # stop, then start: dockerd cannot start on the full disk; start says so, at once
    # (the console said it at boot), and leaves the VM up for `pymachine ssh`.
    cli.pm("stop", LIVE_NAME)
    began = time.monotonic()
    one_line_error(cli.pm("start", LIVE_NAME, check=False, timeout=900), "is full", f"`pymachine disk grow {LIVE_NAME} 3G`")
    took = time.monotonic() - began
    assert "the data disk /dev/" in cli.pm("logs", LIVE_NAME).stdout
    assert cli.pm("status", LIVE_NAME).stdout.strip() == "Error"
    assert guest(cli, "echo still reachable").strip() == "still reachable"
    rows = json.loads(cli.pm("ls", "--format", "json").stdout)
    assert rows[0]["State"] == "Error" and "is full" in rows[0]["Error"]

    # A disk cannot shrink, and says so in one line.
    one_line_error(cli.pm("disk", "grow", LIVE_NAME, "1G", check=False), "never shrink")

    # Grown online: QMP block_resize, resize2fs in the guest, Docker back.
    grown = cli.pm("disk", "grow", LIVE_NAME, "3G", timeout=900)
    assert "now 3072 MB (was 1536 MB)" in grown.stderr
    size_kb = int(guest(cli, "df -kP /mnt/data | awk 'NR == 2 {print $2}'").strip())
    assert size_kb > 2_900_000, size_kb
    assert cli.pm("status", LIVE_NAME).stdout.strip() == "Running"
    out = cli.docker(LIVE_NAME, "run", "--rm", "busybox-local", "echo", "docker works again").stdout
    assert out.strip() == "docker works again"
    # Nothing lost: the filler the user made, the container, the keys and certificates.
    assert guest(cli, "ls /var/lib/docker/filler").strip() == "/var/lib/docker/filler"
    assert "sleeper" in cli.docker(LIVE_NAME, "ps", "-a", "--format", "{{.Names}}").stdout
    assert keys_digest(cli) == keys
    assert json.loads(cli.pm("inspect", LIVE_NAME).stdout)["disk_mb"] == 3072
    print(f"start on the full disk failed after {took:.0f}s")


@pytest.mark.live
@pytest.mark.timeout(1800)
def test_live_a_stopped_disk_grows_with_qemu_img_and_the_guest_follows_at_boot(live: CLI) -> None:
    cli = live
    cli.pm("stop", LIVE_NAME)
    cli.pm("disk", "grow", LIVE_NAME, "4G")
    cli.pm("start", LIVE_NAME, timeout=900)
    size_kb = int(guest(cli, "df -kP /mnt/data | awk 'NR == 2 {print $2}'").strip())
    assert size_kb > 3_900_000, size_kb
    assert "grew the data disk's filesystem" in cli.pm("logs", LIVE_NAME).stdout
    assert cli.docker(LIVE_NAME, "run", "--rm", "busybox-local", "true").returncode == 0


# -- the command line ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["disk", "grow", "ghost", "4G"], ["Machine 'ghost' does not exist", "`pymachine ls`"]),
        (["disk", "grow", "dev", "lots"], ["SIZE 'lots' is not a size", "`pymachine disk grow --help`"]),
        (["disk", "grow", "dev", "1G"], ["is 4G; it can grow, never shrink to 1G", "`pymachine disk grow dev SIZE`"]),
    ],
)
def test_disk_grow_refusals_are_one_line(tmp_path: Path, args: list[str], needles: list[str]) -> None:
    """A stopped qemu machine with a real 4 GB qcow2: nothing changes on a refusal."""
    from pymachine.store import MachineConfig, Store

    root = tmp_path / "home"
    store = Store(root)
    with store.reserve(MachineConfig(name="dev", driver="qemu", status=STATUS_READY, disk_mb=4096)):
        pass
    disk = store.machine_dir("dev") / "data.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "4096M"], check=True)
    before = digest(disk, store.machine_dir("dev") / "config.json")
    env = {**os.environ, "PYMACHINE_STORAGE_PATH": str(root)}
    done = subprocess.run([str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "pymachine"), *args], env=env, capture_output=True, text=True, timeout=120, check=False)
    one_line_error(done, *needles)
    assert digest(disk, store.machine_dir("dev") / "config.json") == before
