"""Faults on the forwarding side: a same-machine port conflict, a killed watcher, a killed
QEMU, -p [::1], reused PIDs, and taken host ports behind the fakes' rules.

The first part runs without a VM: the watcher's bookkeeping against a recording driver,
the process marks against fake processes, the keeper against the fake VirtualBox. The
live part (marked live) shares one booted QEMU machine across the module; the test that
kills QEMU runs last.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from pymachine.driver import BootMedia, PortForward, State
from pymachine.drivers.qemu import QemuDriver, QemuOptions
from pymachine.errors import PortUnavailable
from pymachine.forwarding.plan import wanted_from_inspect
from pymachine.forwarding.process import PIDFILE, STATE_FILE, WatcherProcess, check_active
from pymachine.forwarding.watcher import ForwardWatcher
from pymachine.procs import alive, carries, ps_command, read_pidfile, running_from
from pymachine.runner import Runner
from pymachine.store import Store

from ..contract import make_spec, wait_for
from ..fakes.processes import FakeVMs
from ..fakes.watcher import A_ID, B_ID, PORT, FakeDockerAPI, GuestShell, RecordingDriver, container
from ..live import free_port


def rows(watcher: ForwardWatcher) -> list[tuple[str, str, str]]:
    data = json.loads((watcher.directory / STATE_FILE).read_text())
    return [(item["container"], item["state"], item["reason"]) for item in data["forwards"]]


A = container(A_ID, "A", "127.0.0.1", 100)  # -p 127.0.0.1:8096:80: the guest's loopback, a DNAT rule
B = container(B_ID, "B", "10.0.2.15", 200)  # -p 10.0.2.15:8096:80: the same host port on the host


# -- defect 9: a same-machine port conflict -------------------------------------------------


def test_the_first_owner_keeps_the_port_and_the_loser_is_failed_and_logged(watched, caplog: pytest.LogCaptureFixture) -> None:
    watcher, driver, shell = watched
    caplog.set_level(logging.INFO, logger="pymachine.watcher")
    watcher._apply_container(A_ID, wanted_from_inspect(A))
    watcher._save()
    owned = set(driver.forwards)
    watcher._apply_container(B_ID, wanted_from_inspect(B))
    watcher._save()

    assert driver.forwards == owned == {PortForward("tcp", "127.0.0.1", PORT, PORT)}
    assert [c for c in driver.calls if c[0] == "remove"] == [], "A's forward was taken down"
    assert "--dport 8096" in shell.scripts[-1], "A's DNAT rule into the guest's loopback is gone"
    assert rows(watcher) == [("A", "active", ""), ("B", "failed", "host port 8096/tcp already forwarded for container A")]
    line = "forward 127.0.0.1:8096->8096/tcp for B failed: host port 8096/tcp already forwarded for container A"
    assert line in caplog.text
    watcher._apply_container(B_ID, wanted_from_inspect(B))  # start's own inspect, after create's
    assert caplog.text.count(line) == 1, "one failure, logged once"


def test_docker_rm_f_of_both_takes_the_forward_down_at_once(watched) -> None:
    watcher, driver, shell = watched
    watcher._apply_container(A_ID, wanted_from_inspect(A))
    watcher._apply_container(B_ID, wanted_from_inspect(B))
    # `docker rm -f A B`: kill, die, destroy of A, then of B (the events the daemon sends).
    watcher.handle({"Action": "die", "id": A_ID})
    # B still runs and wants the port: it gets it now, not at the next reconcile.
    assert watcher.owners[("tcp", PORT)].wanted.container_name == "B"
    assert "--dport 8096" not in shell.scripts[-1], "B binds the guest's own address: no DNAT rule"
    watcher.handle({"Action": "destroy", "id": A_ID})
    watcher.handle({"Action": "die", "id": B_ID})
    watcher.handle({"Action": "destroy", "id": B_ID})
    assert driver.forwards == set(), "a host forward lingers after both containers went"
    assert rows(watcher) == []


def test_the_loser_going_first_leaves_the_owner_alone(watched) -> None:
    watcher, driver, _ = watched
    watcher._apply_container(A_ID, wanted_from_inspect(A))
    watcher._apply_container(B_ID, wanted_from_inspect(B))
    watcher.handle({"Action": "die", "id": B_ID})
    assert driver.forwards == {PortForward("tcp", "127.0.0.1", PORT, PORT)}
    assert rows(watcher) == [("A", "active", "")]
    watcher.handle({"Action": "die", "id": A_ID})
    assert driver.forwards == set()


def test_reconcile_keeps_the_owner_and_a_new_watcher_gives_the_port_to_the_older_container(watched, tmp_path: Path) -> None:
    watcher, driver, _ = watched
    watcher.api = FakeDockerAPI({A_ID: A, B_ID: B})  # type: ignore[assignment]
    watcher.reconcile()
    assert rows(watcher) == [("A", "active", ""), ("B", "failed", "host port 8096/tcp already forwarded for container A")]
    calls = list(driver.calls)
    watcher.reconcile()  # the 60 s heartbeat: nothing moves
    assert driver.calls == calls
    assert rows(watcher) == [("A", "active", ""), ("B", "failed", "host port 8096/tcp already forwarded for container A")]
    # A watcher started again (after a crash) knows no owner: the older container keeps it.
    again = ForwardWatcher("dev", watcher.directory, driver, "127.0.0.1", lambda: GuestShell(), Store(tmp_path))  # type: ignore[arg-type]
    try:
        again.api = FakeDockerAPI({A_ID: A, B_ID: B})  # type: ignore[assignment]
        again.reconcile()
    finally:
        again.close()
    assert driver.calls == calls, "a new watcher moved the port"
    assert rows(again) == [("A", "active", ""), ("B", "failed", "host port 8096/tcp already forwarded for container A")]


def test_ipv6_loopback_is_forwarded_on_a_hidden_port_with_a_guest_proxy_never_on_127_0_0_1(watched) -> None:
    """-p [::1]:H:C: Docker binds the guest's ::1 only, which the hypervisor's IPv4 NAT cannot
    reach (seen live). It used to be failed; now the hypervisor forward is an unpublished
    127.0.0.1 port (the relay holds [::1]:H), the guest gets a docker-proxy to its ::1, and
    nothing answers on 127.0.0.1:H."""
    watcher, driver, shell = watched
    v6 = container(A_ID, "v6", "::1", 100)
    watcher._apply_container(A_ID, wanted_from_inspect(v6))
    watcher._save()
    [(kind, hidden)] = driver.calls
    assert kind == "add" and hidden.host_ip == "127.0.0.1" and hidden.host_port != PORT and hidden.guest_port == PORT
    assert rows(watcher) == [("v6", "active", "")]
    assert f"want tcp-{PORT}\n" in shell.scripts[-1] and f"--dport {PORT}" not in shell.scripts[-1]
    with socket.socket(socket.AF_INET) as client, pytest.raises(ConnectionRefusedError):
        client.connect(("127.0.0.1", PORT))
    watcher.handle({"Action": "die", "id": A_ID})
    assert driver.forwards == set() and "want " not in shell.scripts[-1], "the guest's proxy outlived the container"


# -- ports shows the state as of the call ---------------------------------------------------


def active_row(port: int) -> dict[str, Any]:
    return {"protocol": "tcp", "host_ip": "127.0.0.1", "host_port": port, "guest_port": port, "container": "web", "container_id": A_ID, "state": "active", "reason": ""}


def test_ports_shows_nothing_active_once_the_vm_is_gone() -> None:
    driver = RecordingDriver()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        driver.forwards = {PortForward("tcp", "127.0.0.1", port, port)}
        live = [active_row(port)]
        check_active(live, driver)  # type: ignore[arg-type]
        assert live[0]["state"] == "active"

        driver.vm_state = State.STOPPED  # QEMU killed: the driver finds no process
        stopped = [active_row(port)]
        check_active(stopped, driver)  # type: ignore[arg-type]
        assert (stopped[0]["state"], stopped[0]["reason"]) == ("inactive", "the machine is stopped")

        driver.vm_state, driver.forwards = State.RUNNING, set()
        gone = [active_row(port)]
        check_active(gone, driver)  # type: ignore[arg-type]
        assert (gone[0]["state"], gone[0]["reason"]) == ("inactive", "the stub VM has no such forward any more")
    driver.forwards = {PortForward("tcp", "127.0.0.1", port, port)}
    deaf = [active_row(port)]
    check_active(deaf, driver)  # type: ignore[arg-type]
    assert deaf[0]["state"] == "inactive" and "nothing listens on 127.0.0.1:" in deaf[0]["reason"]


# -- process recognition: reused PIDs --------------------------------------------------------


@pytest.fixture
def fake_processes(tmp_path: Path):
    fakes = FakeVMs(tmp_path / "procs")
    yield fakes
    fakes.stop_all()


def qemu_driver(root: Path, name: str) -> QemuDriver:
    spec = make_spec(root / "machines" / name, name, BootMedia(root / "boot.iso"))
    driver = QemuDriver(spec, QemuOptions(), Runner())
    driver.disk.write_bytes(b"")
    return driver


def test_a_reused_pid_of_another_machines_qemu_is_never_signalled(tmp_path: Path, fake_processes: FakeVMs) -> None:
    dev, dev2 = qemu_driver(tmp_path, "dev"), qemu_driver(tmp_path, "dev2")
    # Each QEMU as pymachine starts it: -name pymachine-NAME ... -pidfile PATH.
    pids = {d.spec.name: fake_processes.start("qemu-system-x86_64", "-name", f"pymachine-{d.spec.name}", "-pidfile", str(d.pidfile), "-daemonize") for d in (dev, dev2)}
    # The pidfiles swapped, as after PID reuse: each names the other machine's QEMU.
    dev.pidfile.write_text(f"{pids['dev2']}\n")
    dev2.pidfile.write_text(f"{pids['dev']}\n")
    assert dev.state() == State.STOPPED and dev2.state() == State.STOPPED
    dev.kill()
    dev2.kill()
    assert alive(pids["dev"]) and alive(pids["dev2"]), "a command on one machine signalled the other's QEMU"
    dev.pidfile.write_text(f"{pids['dev']}\n")
    assert dev._pid() == pids["dev"], "its own QEMU is still recognised"


def test_a_reused_pid_of_another_machines_watcher_is_never_signalled(tmp_path: Path, fake_processes: FakeVMs) -> None:
    root = tmp_path / "store"
    mine, theirs = root / "machines" / "dev", root / "machines" / "dev2"
    for folder in (mine, theirs):
        folder.mkdir(parents=True)
    other = fake_processes.start("python3", "-m", "pymachine.cli.watcher", "--storage-path", str(root), "dev2")
    (mine / PIDFILE).write_text(f"{other}\n")
    watcher = WatcherProcess(root, mine)
    assert watcher.pid() is None
    watcher.stop()
    assert alive(other), "stopping dev's watcher signalled dev2's"
    assert WatcherProcess(root, theirs).pid() is None  # no pidfile of its own yet
    (theirs / PIDFILE).write_text(f"{other}\n")
    assert WatcherProcess(root, theirs).pid() == other


def test_on_macos_the_mark_is_read_from_ps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ..fakes import macos
    from ..fakes.tools import install

    mac = macos.FakeMac(tmp_path / "mac.json").initialise()
    store = "/Users/me/Library/Application Support/pymachine"  # spaces, as macOS folders have
    mac.run(4242, "/opt/homebrew/bin/qemu-system-aarch64", "-name", "pymachine-dev2", "-pidfile", f"{store}/machines/dev2/qemu.pid")
    mac.run(4343, "/usr/bin/python3", "-m", "pymachine.cli.watcher", "--storage-path", store, "dev2")
    ps = install(tmp_path / "bin", "ps") / "ps"
    monkeypatch.setenv(macos.STATE_ENV, str(mac.path))
    qemu, watcher = ps_command(4242, ps=str(ps)), ps_command(4343, ps=str(ps))
    assert qemu and watcher and ps_command(999, ps=str(ps)) is None
    assert ["ps", "-o", "command=", "-p", "4242"] in mac.calls()
    assert carries(qemu, ["-pidfile", f"{store}/machines/dev2/qemu.pid"])
    assert not carries(qemu, ["-pidfile", f"{store}/machines/dev/qemu.pid"])
    assert carries(watcher, ["pymachine.cli.watcher", "--storage-path", store, "dev2"])
    assert not carries(watcher, ["pymachine.cli.watcher", "--storage-path", store, "dev"])
    # A Path in the mark (as QEMU's is) is found in ps's one string as well.
    assert carries(qemu, ["-pidfile", Path(f"{store}/machines/dev2/qemu.pid")])
    assert not carries(qemu, ["-pidfile", Path(f"{store}/machines/dev/qemu.pid")])


def test_a_mark_is_whole_consecutive_arguments_and_a_path_may_be_spelled_resolved(tmp_path: Path) -> None:
    real = tmp_path / "real"
    (real / "machines" / "dev").mkdir(parents=True)
    link = tmp_path / "link"
    link.symlink_to(real)
    pidfile = link / "machines" / "dev" / "qemu.pid"
    resolved = str(real / "machines" / "dev" / "qemu.pid")
    argv = ["qemu-system-x86_64", "-name", "pymachine-dev", "-pidfile", resolved, "-daemonize"]
    assert carries(argv, ["-pidfile", pidfile]), "QEMU started with the resolved path is this folder's"
    assert carries(argv[:3] + ["-pidfile", str(pidfile)], ["-pidfile", pidfile]), "and so is one started with the path as given"
    assert not carries(argv, ["-pidfile", str(pidfile)]), "a string is matched as it is, never resolved"
    through_link = argv[:3] + ["-pidfile", str(pidfile)]
    assert carries(through_link, ["-pidfile", real / "machines" / "dev" / "qemu.pid"]), "started through the link, found from the real path"
    assert not carries(through_link, ["-pidfile", real / "machines" / "devcopy" / "qemu.pid"])
    devcopy = ["qemu-system-x86_64", "-pidfile", str(real / "machines" / "devcopy" / "qemu.pid")]
    assert not carries(devcopy, ["-pidfile", real / "machines" / "dev" / "qemu.pid"]), "machines/dev is no prefix of machines/devcopy"
    assert not carries(["qemu-system-x86_64", f"-pidfile {resolved}"], ["-pidfile", pidfile]), "one argument holding a space is not two"
    assert not carries(["-pidfile", "x", resolved], ["-pidfile", pidfile]), "the words must be consecutive"
    assert not carries(argv, [])
    with pytest.raises(TypeError):
        running_from(pidfile, "-pidfile")


def test_a_watcher_is_found_however_its_store_is_reached(tmp_path: Path) -> None:
    """A store reached through a symlink is the same store: the watcher one spelling
    started is found through the other, and only for its own machine."""
    from pymachine.forwarding.process import process_mark, watcher_argv

    real = tmp_path / "real"
    for name in ("dev", "dev2"):
        (real / "machines" / name).mkdir(parents=True)
    link = tmp_path / "link"
    link.symlink_to(real)
    for started, looking in ((link, real), (real, link)):
        argv = [str(word) for word in watcher_argv(started / "machines" / "dev", keep=False)]
        assert carries(argv, process_mark(looking / "machines" / "dev", keep=False))
        assert not carries(argv, process_mark(looking / "machines" / "dev", keep=True)), "the watcher is not its keeper"
        assert not carries(argv, process_mark(looking / "machines" / "dev2", keep=False))


# -- the keeper and the watcher: only one of each per machine --


@pytest.mark.parametrize("keep", [True, False], ids=["keeper", "watcher"])
def test_a_keeper_or_watcher_that_loses_the_race_leaves_the_winners_files_alone(tmp_path: Path, keep: bool) -> None:
    from pymachine.cli.watcher import run_keeper, run_watcher
    from pymachine.forwarding.process import EXIT_BUSY, EXIT_DONE, EXIT_GIVE_UP, KEEPER_LOCKFILE, KEEPER_PIDFILE, LOCKFILE
    from pymachine.locking import FileLock, LockBusy

    from .store_tool import seed

    root = tmp_path / "store"
    directory = seed(root, "dev")
    lockfile, pidfile = (KEEPER_LOCKFILE, KEEPER_PIDFILE) if keep else (LOCKFILE, PIDFILE)
    run = (lambda: run_keeper(directory)) if keep else (lambda: run_watcher(root, "dev"))
    winner = FileLock(directory / lockfile)
    winner.acquire(timeout=0)
    (directory / pidfile).write_text("4242\n")
    # The keeper leaves quietly (another looks after the machine); the watcher tells its keeper it is busy.
    assert run() == (EXIT_DONE if keep else EXIT_BUSY)
    assert (directory / pidfile).read_text() == "4242\n", "the loser wrote or removed the winner's pidfile"
    assert winner.held
    with pytest.raises(LockBusy):
        FileLock(directory / lockfile).acquire(timeout=0)
    winner.release()
    (directory / pidfile).unlink()
    if keep:
        # A folder gone before the keeper started: nothing to keep, nothing written.
        gone = root / "machines" / "gone"
        assert run_keeper(gone) == EXIT_GIVE_UP
        assert not gone.exists()


def test_only_one_holds_the_lock_and_the_pidfile_for_its_block(tmp_path: Path) -> None:
    from pymachine.cli.watcher import only_one
    from pymachine.forwarding.process import EXIT_BUSY, EXIT_GIVE_UP, LOCKFILE
    from pymachine.locking import FileLock, LockBusy

    directory = tmp_path / "machines" / "dev"
    directory.mkdir(parents=True)
    with only_one(directory, LOCKFILE, PIDFILE, busy=EXIT_BUSY) as refused:
        assert refused is None
        assert read_pidfile(directory / PIDFILE) == os.getpid()
        with pytest.raises(LockBusy):
            FileLock(directory / LOCKFILE).acquire(timeout=0)
        with only_one(directory, LOCKFILE, PIDFILE, busy=EXIT_BUSY) as second:
            assert second == EXIT_BUSY
        assert read_pidfile(directory / PIDFILE) == os.getpid(), "the loser removed the winner's pidfile"
    assert not (directory / PIDFILE).exists(), "the pidfile outlived its process's block"
    FileLock(directory / LOCKFILE).acquire(timeout=0)  # given back
    # A pidfile that names another process by the time the block ends is left alone.
    with only_one(directory, "other.lock", "other.pid", busy=EXIT_BUSY) as refused:
        assert refused is None
        (directory / "other.pid").write_text("4242\n")
    assert (directory / "other.pid").read_text() == "4242\n"
    with only_one(tmp_path / "machines" / "gone", LOCKFILE, PIDFILE, busy=EXIT_BUSY) as refused:
        assert refused == EXIT_GIVE_UP
    assert not (tmp_path / "machines" / "gone").exists()


# -- the keeper: a killed watcher comes back with no command run (through the fake VirtualBox) --


@pytest.fixture
def vbox_world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from ..test_fake_end_to_end import _world

    yield from _world(tmp_path, monkeypatch, "amd64")


def _fake_vbox_machine_with_watcher(vbox_world):
    """A running machine on the fake VirtualBox, once its keeper has started its watcher."""
    from pymachine.machines import CreateOptions

    machines, _fake, _farm = vbox_world
    machine = machines.create("dev", CreateOptions(driver="virtualbox", cpus=1, memory_mb=512, disk_mb=2048, driver_options={"backend": "vboxmanage"}, force=True))
    watcher = machine.watcher
    assert wait_for(lambda: watcher.pid() is not None, timeout=15), "no watcher started"
    return machine, watcher


def test_a_killed_watcher_is_restarted_by_its_keeper_within_5_seconds(vbox_world) -> None:
    machine, watcher = _fake_vbox_machine_with_watcher(vbox_world)
    keeper, first = watcher.keeper_pid(), watcher.pid()
    assert keeper is not None and first is not None
    os.kill(first, signal.SIGKILL)
    killed = time.monotonic()
    assert wait_for(lambda: watcher.pid() not in (None, first), timeout=5, interval=0.05), "the watcher did not come back within 5 s"
    took = time.monotonic() - killed
    assert watcher.keeper_pid() == keeper
    log = (machine.directory / "watcher.log").read_text()
    assert "killed by signal 9" in log and "its keeper starts it again" in log
    second = watcher.pid()
    machine.remove(force=True)
    assert wait_for(lambda: not alive(keeper) and not alive(second), timeout=15), "rm left the keeper or the watcher running"
    print(f"watcher back {took:.2f}s after kill -9")


def test_a_killed_keeper_is_restarted_by_its_watcher_and_adopts_it(vbox_world) -> None:
    machine, watcher = _fake_vbox_machine_with_watcher(vbox_world)
    keeper, running = watcher.keeper_pid(), watcher.pid()
    assert keeper is not None and running is not None
    os.kill(keeper, signal.SIGKILL)
    killed = time.monotonic()
    assert wait_for(lambda: watcher.keeper_pid() not in (None, keeper), timeout=5, interval=0.05), "no new keeper within 5 s"
    took = time.monotonic() - killed
    second = watcher.keeper_pid()
    assert watcher.pid() == running, "the new keeper adopted the running watcher"
    assert "the watcher starts a new one" in (machine.directory / "watcher.log").read_text()
    # The adopted watcher is still looked after: killed, it comes back.
    os.kill(running, signal.SIGKILL)
    assert wait_for(lambda: watcher.pid() not in (None, running), timeout=10, interval=0.05), "the adopting keeper did not restart the watcher"
    third = watcher.pid()
    machine.remove(force=True)
    assert wait_for(lambda: not any(alive(p) for p in (keeper, second, running, third)), timeout=15), "rm left a keeper or a watcher running"
    print(f"keeper back {took:.2f}s after kill -9")


# -- the fakes' NAT rules: a taken host port, the host address --------------------------------


def test_fake_virtualbox_rules_honour_the_host_address_and_a_taken_port(tmp_path: Path) -> None:
    from ..fake_harnesses import virtualbox_driver

    driver, fake = virtualbox_driver(tmp_path, "vboxmanage")
    driver.create()
    driver.start()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        busy = holder.getsockname()[1]
        # Behind the driver's own probe, as a user with VBoxManage would: accepted, deaf.
        fake.add_rule_by_hand(driver.vm, {"name": "by-hand", "proto": "tcp", "host_ip": "127.0.0.1", "host_port": busy, "guest_ip": "", "guest_port": 22})
        assert not fake.forward_works(driver.vm, "tcp", busy, 22)
    with socket.socket() as holder, pytest.raises(PortUnavailable):
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        driver.add_forward(PortForward("tcp", "127.0.0.1", holder.getsockname()[1], 22))
    free = free_port()
    driver.add_forward(PortForward("tcp", "127.0.0.1", free, 22))
    assert fake.forward_works(driver.vm, "tcp", free, 22, host_ip="127.0.0.1")
    assert not fake.forward_works(driver.vm, "tcp", free, 22, host_ip="192.0.2.10"), "a loopback rule answered on another address"
    wide = free_port()
    driver.add_forward(PortForward("tcp", "0.0.0.0", wide, 22))
    assert fake.forward_works(driver.vm, "tcp", wide, 22, host_ip="192.0.2.10")
    driver.kill()
    driver.remove()


def test_fake_virtualbox_a_second_vm_on_a_port_the_first_holds_is_deaf(tmp_path: Path) -> None:
    from ..fake_harnesses import virtualbox_driver

    first, fake = virtualbox_driver(tmp_path / "one", "vboxmanage", name="one")
    second, _ = virtualbox_driver(tmp_path / "two", "vboxmanage", name="two")
    second.runner = first.runner  # one host: the second machine on the first one's fake
    for driver in (first, second):
        driver.create()
    port = free_port()
    for driver in (first, second):
        driver.add_forward(PortForward("tcp", "127.0.0.1", port, 22))  # stopped: kept in settings
    first.start()
    second.start()
    assert fake.forward_works("one", "tcp", port, 22)
    assert not fake.forward_works("two", "tcp", port, 22), "two VMs answered on one host port"
    for driver in (first, second):
        driver.kill()
        driver.remove()


def test_fake_parallels_rules_listen_everywhere_unless_the_port_is_taken(tmp_path: Path) -> None:
    from ..fake_harnesses import parallels_driver

    driver, fake = parallels_driver(tmp_path)
    driver.create()
    driver.start()
    port = free_port()
    driver.add_forward(PortForward("tcp", "127.0.0.1", port, 22))
    assert fake.forward_works(driver.vm, "tcp", port, 22, host_ip="192.0.2.10"), "a Parallels rule has no host address"
    with socket.socket() as holder:
        holder.bind(("0.0.0.0", 0))
        holder.listen(1)
        busy = holder.getsockname()[1]
        fake.add_rule_by_hand("tcp", "by-hand", busy, driver.uuid(), 22)
        assert not fake.forward_works(driver.vm, "tcp", busy, 22)
    driver.kill()
    driver.remove()


# -- live: one QEMU machine for the module -----------------------------------------------------

NAME = "faults"
IMAGE = "busybox-local"


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory, boot_image, busybox_rootfs: Path, docker_config):
    from ..live import machine_with_image

    yield from machine_with_image(tmp_path_factory, NAME, busybox_rootfs, IMAGE)


def serve(text: str, port: int = 80) -> list[str]:
    return [IMAGE, "sh", "-c", f"mkdir -p /site && echo {text} > /site/index.html && exec httpd -f -p {port} -h /site"]


def forwards_of(cli: Any, port: int) -> list[dict[str, Any]]:
    return [f for f in cli.ports(NAME)["forwards"] if f["host_port"] == port]


#: What no forwarding fault may change in the machine's folder.
KEPT = ("config.json", "ca.pem", "cert.pem", "key.pem", "server.pem", "server-key.pem", "id_ed25519", "config.iso")


def kept_hashes(directory: Path) -> dict[str, str]:
    import hashlib

    return {name: hashlib.sha256((directory / name).read_bytes()).hexdigest() for name in KEPT if (directory / name).exists()}


def host_port_free(port: int) -> bool:
    """Nothing listens on the port (connections the forward carried may linger in TIME_WAIT)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.live
@pytest.mark.timeout(600)
def test_live_same_machine_conflict_keeps_the_first_owner(cli) -> None:
    from ..live import free_port, http_get

    port = free_port()
    directory = cli.machine_dir(NAME)
    before = sorted(p.name for p in directory.iterdir())
    hashes = kept_hashes(directory)
    assert "config.json" in hashes
    cli.docker(NAME, "run", "-d", "--name", "owner", "-p", f"127.0.0.1:{port}:80", *serve("from-owner"))
    assert wait_for(lambda: "from-owner" in (http_get(port) or ""), timeout=30, interval=0.05)
    cli.docker(NAME, "run", "-d", "--name", "intruder", "-p", f"10.0.2.15:{port}:80", *serve("from-intruder"))
    assert wait_for(lambda: any(f["state"] == "failed" for f in forwards_of(cli, port)), timeout=30)
    for _ in range(5):
        assert "from-owner" in (http_get(port) or ""), "the host port is answered by the second container"
    states = {f["container"]: (f["state"], f["reason"]) for f in forwards_of(cli, port)}
    assert states["owner"] == ("active", "")
    assert states["intruder"] == ("failed", f"host port {port}/tcp already forwarded for container owner")
    assert f"for intruder failed: host port {port}/tcp already forwarded for container owner" in (directory / "watcher.log").read_text()
    cli.docker(NAME, "rm", "-f", "owner", "intruder")
    gone = time.monotonic()
    assert wait_for(lambda: host_port_free(port), timeout=5, interval=0.02), "the host listener lingers after docker rm -f"
    print(f"host port free {time.monotonic() - gone:.2f}s after docker rm -f returned")
    assert forwards_of(cli, port) == []
    assert sorted(p.name for p in directory.iterdir()) == before, "files appeared or vanished in the machine's folder"
    assert kept_hashes(directory) == hashes


@pytest.mark.live
@pytest.mark.timeout(600)
def test_live_a_killed_watcher_comes_back_with_no_command_run(cli) -> None:
    from ..live import free_port, http_get, program

    env = cli.docker_env(NAME)  # the only pymachine command, before the kill
    directory = cli.machine_dir(NAME)
    hashes = kept_hashes(directory)
    pid = read_pidfile(directory / PIDFILE)
    assert pid and alive(pid)
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    assert wait_for(lambda: (read_pidfile(directory / PIDFILE) or pid) != pid, timeout=5, interval=0.05), "no new watcher within 5 s"
    restarted = time.monotonic() - killed
    assert not alive(pid)
    port = free_port()
    # docker itself, straight after the kill: no pymachine command runs from here on.
    done = subprocess.run([program("docker"), "run", "-d", "--name", "after-kill", "-p", f"{port}:80", *serve("after-kill")], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert wait_for(lambda: "after-kill" in (http_get(port) or ""), timeout=15, interval=0.05), "the new container's port never answered"
    took = time.monotonic() - killed
    back = read_pidfile(directory / PIDFILE)
    assert back and back != pid and alive(back)
    print(f"new watcher {restarted:.2f}s after its kill -9; a port published then answered {took:.2f}s after the kill")
    subprocess.run([program("docker"), "rm", "-f", "after-kill"], env=env, capture_output=True, timeout=120, check=True)
    assert kept_hashes(directory) == hashes
    assert "Traceback" not in (directory / "watcher.log").read_text()


@pytest.mark.live
@pytest.mark.timeout(600)
def test_live_ipv6_loopback_publish_answers_on_ipv6_loopback_alone(cli) -> None:
    from ..live import free_port, http_get

    port = free_port()
    cli.docker(NAME, "run", "-d", "--name", "v6", "-p", f"[::1]:{port}:80", *serve("v6"))
    assert wait_for(lambda: http_get(port, timeout=0.5, host="::1") is not None, timeout=30, interval=0.05), str(forwards_of(cli, port))
    [row] = forwards_of(cli, port)
    assert row["state"] == "active" and row["host_ip"] == "::1"
    assert http_get(port, timeout=0.5) is None, "something answers on 127.0.0.1 for a -p [::1]"
    cli.docker(NAME, "rm", "-f", "v6")
    assert wait_for(lambda: http_get(port, timeout=0.5, host="::1") is None, timeout=15)


@pytest.mark.live
@pytest.mark.timeout(600)
def test_live_after_qemu_is_killed_no_forward_is_shown_active(cli) -> None:
    """Runs last: it kills the module's VM."""
    from ..live import free_port, http_get

    port = free_port()
    cli.docker(NAME, "run", "-d", "--name", "doomed", "-p", f"{port}:80", *serve("doomed"))
    assert wait_for(lambda: http_get(port) is not None, timeout=30, interval=0.05)
    directory = cli.machine_dir(NAME)
    hashes = kept_hashes(directory)
    qemu = read_pidfile(directory / "qemu.pid")
    keeper = read_pidfile(directory / "watcher-keeper.pid")
    watcher = read_pidfile(directory / PIDFILE)
    assert qemu and keeper and watcher
    os.kill(qemu, signal.SIGKILL)
    assert wait_for(lambda: not alive(qemu), timeout=10)
    shown = cli.pm("ports", NAME, "--format", "json")
    assert "Traceback" not in shown.stderr
    report = json.loads(shown.stdout)
    assert [f for f in report["forwards"] if f["state"] == "active"] == [], "a forward of a dead VM is shown active"
    assert wait_for(lambda: not alive(keeper) and not alive(watcher), timeout=60), "the watcher or its keeper outlived its VM"
    table = cli.pm("ports", NAME)
    assert not re.search(r"\bactive\b", table.stdout) and "Traceback" not in table.stderr  # "inactive" is fine
    assert kept_hashes(directory) == hashes
    removed = cli.pm("rm", "-f", "-y", NAME)
    assert "Traceback" not in removed.stderr
