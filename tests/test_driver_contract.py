"""One contract, every driver: QEMU for real, the others through faithful fakes.

Each harness in HARNESSES builds a driver on a fresh folder. The lifecycle test walks
create, start, state, forwards (running and, where declared, stopped), stop, kill and
remove, checking every step against what the contract in machine/driver.py promises.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Callable

import pytest

from pymachine.driver import Feature, PortForward, State
from pymachine.drivers.qemu import QemuDriver, QemuOptions
from pymachine.errors import MachineStateError, PortUnavailable
from pymachine.image import BootImage
from pymachine.runner import Runner

from .contract import Harness, free_port, make_spec, read_banner, wait_for


def qemu_harness(tmp_path: Path, request: pytest.FixtureRequest) -> Harness:
    image: BootImage = request.getfixturevalue("boot_image")
    from pymachine.driver import BootMedia

    boot = BootMedia(image.iso, image.kernel, image.initrd, image.cmdline, image.pvh_kernel)
    spec = make_spec(tmp_path / "qemu-m", "contract", boot)
    driver = QemuDriver(spec, QemuOptions(restrict_network=True), Runner())

    def booted() -> None:
        assert wait_for(lambda: read_banner(spec.ssh_port, 2).startswith(b"SSH-"), timeout=120, interval=0.5), "the guest never answered SSH"

    def probe(host_port: int, guest_port: int) -> bool:
        return read_banner(host_port, 3).startswith(b"SSH-")

    def from_network(host_port: int, guest_port: int) -> bool:
        # QEMU binds exactly the address it is given; the test's network namespace has no other.
        return any(f.host_port == host_port and f.host_ip == "0.0.0.0" for f in driver.list_forwards())

    return Harness("qemu", driver, probe, booted, guest_service_port=22, probe_from_network=from_network)


#: name -> factory(tmp_path, request) -> Harness. The VirtualBox and Parallels drivers
#: add theirs (through their fakes, on an Intel host and on Apple Silicon) in fake_harnesses.py.
HARNESSES: dict[str, Callable[[Path, pytest.FixtureRequest], Harness]] = {"qemu": qemu_harness}
LIVE = {"qemu"}


def _params() -> list:
    # A plain import: if the fakes cannot be imported, collection must fail loudly rather
    # than the VirtualBox and Parallels cases quietly disappearing.
    from . import fake_harnesses

    HARNESSES.update(fake_harnesses.HARNESSES)
    return [pytest.param(name, marks=[pytest.mark.live] if name in LIVE else []) for name in sorted(HARNESSES)]


@pytest.fixture(params=_params())
def harness(request: pytest.FixtureRequest, tmp_path: Path):
    made = HARNESSES[request.param](tmp_path, request)
    yield made
    try:
        made.driver.remove()
    except Exception:
        pass


def _occupied_port() -> tuple[socket.socket, int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    return sock, sock.getsockname()[1]


def test_lifecycle(harness: Harness) -> None:
    driver = harness.driver
    assert driver.state() == State.NOT_FOUND, "before create, the VM must not exist"

    driver.create()
    assert driver.state() == State.STOPPED, "create leaves the VM stopped"
    assert driver.list_forwards() == [] or Feature.STOPPED_FORWARDS in driver.features

    driver.start()
    assert driver.state() == State.RUNNING
    harness.wait_booted()
    with pytest.raises(MachineStateError):
        driver.start()

    ssh = driver.ssh_endpoint()
    docker = driver.docker_endpoint()
    assert (ssh.host, ssh.port) == ("127.0.0.1", driver.spec.ssh_port)
    assert (docker.host, docker.port) == ("127.0.0.1", driver.spec.docker_port)

    # A forward carries traffic, shows in the list (without the machine's own two), and goes.
    port = free_port()
    forward = PortForward("tcp", "127.0.0.1", port, harness.guest_service_port)
    driver.add_forward(forward)
    assert forward in driver.list_forwards()
    assert all(f.host_port not in (ssh.port, docker.port) for f in driver.list_forwards())
    assert harness.probe_forward(port, harness.guest_service_port), "the forward does not reach the guest"
    driver.remove_forward(forward)
    assert forward not in driver.list_forwards()
    assert not harness.probe_forward(port, harness.guest_service_port), "a removed forward still answers"
    driver.remove_forward(forward)  # already gone: not an error

    if Feature.UDP_FORWARDS in driver.features:
        udp = PortForward("udp", "127.0.0.1", free_port(), 53)
        driver.add_forward(udp)
        assert udp in driver.list_forwards()
        driver.remove_forward(udp)
        assert udp not in driver.list_forwards()

    # A host port that is taken is refused, loudly, and nothing else is disturbed.
    holder, busy = _occupied_port()
    try:
        keep = PortForward("tcp", "127.0.0.1", free_port(), harness.guest_service_port)
        driver.add_forward(keep)
        with pytest.raises(PortUnavailable):
            driver.add_forward(PortForward("tcp", "127.0.0.1", busy, harness.guest_service_port))
        assert [f for f in driver.list_forwards() if f.host_port == busy] == []
        assert keep in driver.list_forwards()
        driver.remove_forward(keep)
    finally:
        holder.close()

    driver.stop(timeout=60)
    assert driver.state() == State.STOPPED, "stop ends with the VM stopped"

    stopped_forward = PortForward("tcp", "127.0.0.1", free_port(), 80)
    if Feature.STOPPED_FORWARDS in driver.features:
        driver.add_forward(stopped_forward)
        assert stopped_forward in driver.list_forwards()
        driver.remove_forward(stopped_forward)
        assert stopped_forward not in driver.list_forwards()
    else:
        with pytest.raises(MachineStateError):
            driver.add_forward(stopped_forward)

    driver.start()
    assert driver.state() == State.RUNNING
    driver.kill()
    assert driver.state() == State.STOPPED, "kill powers the VM off"

    driver.remove()
    assert driver.state() == State.NOT_FOUND, "remove deletes the VM"
    driver.remove()  # twice: still fine (rm of a half-made machine relies on it)


def test_a_loopback_forward_answers_on_both_loopbacks_and_never_on_the_network(harness: Harness) -> None:
    """What the watcher makes of a bare -p (through forwarding/relay.py), on every driver:
    the published port is held on 127.0.0.1 and ::1, by the hypervisor or by pymachine's
    relay, and no hypervisor listener on every interface carries it. Parallels' rules
    listen on every interface (its fake models that), so its rule gets a port that is
    never published and the relay holds loopback."""
    from pymachine.forwarding.relay import RelayingDriver

    driver = harness.driver
    driver.create()
    driver.start()
    harness.wait_booted()
    relaying = RelayingDriver(driver, ipv6=True)
    port, guest = free_port(), harness.guest_service_port
    forward = PortForward("tcp", "127.0.0.1", port, guest)
    try:
        relaying.add_forward(forward)
        assert relaying.list_forwards() == [forward]
        hypervisor = relaying.made[forward.key].hypervisor
        assert harness.probe_forward(hypervisor.host_port, guest), "the hypervisor's side does not reach the guest"
        assert harness.probe_from_network is not None
        assert not harness.probe_from_network(port, guest), "the published port answers from the network"
        held = relaying.listening(forward)
        assert f"[::1]:{port}" in held
        if Feature.LOOPBACK_FORWARDS in driver.features:
            assert hypervisor == forward, "a driver that binds loopback itself gets the forward as asked"
        else:
            assert hypervisor.host_port != port and f"127.0.0.1:{port}" in held
        # The relay reaches the hypervisor's side: a real connection through it where the
        # hypervisor really listens (QEMU), the port held by the relay otherwise.
        if harness.name == "qemu":
            assert read_banner(port, 3).startswith(b"SSH-")
        with socket.socket(socket.AF_INET6) as probe, pytest.raises(OSError):
            probe.bind(("::1", port))
        relaying.remove_forward(forward)
        assert relaying.list_forwards() == [] and driver.list_forwards() == []
        assert not harness.probe_forward(hypervisor.host_port, guest)
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", port))  # free again
    finally:
        relaying.stop_relays()
    driver.kill()


def test_the_fake_harnesses_are_in_the_suite() -> None:
    # Intel and Apple Silicon, for both drivers that run through fakes.
    assert {"virtualbox-cli", "virtualbox-api", "virtualbox-arm", "parallels", "parallels-arm"} <= set(HARNESSES)


def test_a_broken_fake_harness_fails_collection_loudly() -> None:
    """If the fakes cannot be imported, the VirtualBox and Parallels cases must not vanish
    quietly: collecting this suite fails, naming the import."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    code = (
        "import sys, pytest; sys.modules['tests.fake_harnesses'] = None; "
        "sys.exit(pytest.main(['--collect-only', '-q', '-p', 'no:cacheprovider', 'tests/test_driver_contract.py']))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode != 0, done.stdout
    assert "error during collection" in done.stdout and "fake_harnesses" in done.stdout, done.stdout
