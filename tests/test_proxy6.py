"""-p [::1]:H:C in the guest: the loopback sync's docker-proxy processes (watcher.loopback_script).

The script runs here as the guest runs it: under the boot image's busybox (sh, ip, tr, sed ...),
with a docker-proxy that takes Docker's flags, says "0" or "1\\nwhy" on fd 3 as Docker's does,
and relays TCP and UDP. The guest's NIC is this host's `lo` (127.0.0.1), so the proxies are
reachable from the test; nothing leaves the loopback.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pymachine.forwarding.plan import WantedForward, wanted_from_inspect
from pymachine.forwarding.watcher import loopback_script

from .fakes.watcher import A_ID, B_ID, PORT, container
from .test_forwards import _port

#: Docker's docker-proxy, as far as the script sees it: the same flags, the same fd 3
#: protocol ("0\n" once listening; "1\n" and the error, exit 1, when not), the same error
#: text ("listen tcp4 IP:PORT: bind: address already in use"), and it relays.
FAKE_DOCKER_PROXY = r"""
import argparse, os, socket, sys, threading
p = argparse.ArgumentParser()
for flag in ("-proto", "-host-ip", "-container-ip"):
    p.add_argument(flag)
for flag in ("-host-port", "-container-port"):
    p.add_argument(flag, type=int)
a = p.parse_args()
try:
    status = os.fdopen(3, "w")
except OSError:
    sys.exit(2)
kind = socket.SOCK_STREAM if a.proto == "tcp" else socket.SOCK_DGRAM
listener = socket.socket(socket.AF_INET, kind)
try:
    listener.bind((a.host_ip, a.host_port))
    if a.proto == "tcp":
        listener.listen(16)
except OSError as exc:
    why = "address already in use" if exc.errno == 98 else exc.strerror.lower()
    status.write(f"1\nlisten {a.proto}4 {a.host_ip}:{a.host_port}: bind: {why}")
    status.close()
    sys.exit(1)
status.write("0\n")
status.close()
target = (a.container_ip, a.container_port)

def pipe(src, dst):
    while data := src.recv(65536):
        dst.sendall(data)
    dst.shutdown(socket.SHUT_WR)

if a.proto == "tcp":
    while True:
        client, _ = listener.accept()
        upstream = socket.create_connection(target)
        threading.Thread(target=pipe, args=(client, upstream), daemon=True).start()
        threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()
else:
    upstream = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    upstream.connect(target)
    while True:
        data, client = listener.recvfrom(65536)
        upstream.send(data)
        listener.sendto(upstream.recv(65536), client)
"""


class Guest:
    """A guest for the script: busybox, a run folder, a NIC (lo), iptables that records."""

    def __init__(self, tmp_path: Path) -> None:
        busybox = _guest_busybox()
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        for applet in ("sh", "cat", "mkdir", "rm", "sed", "head", "tail", "tr", "sleep", "ip"):
            (self.bin / applet).symlink_to(busybox)
        self.iptables_log = tmp_path / "iptables.log"
        (self.bin / "iptables").write_text(f'#!{busybox} sh\necho "$*" >> {self.iptables_log}\n')
        (self.bin / "iptables").chmod(0o755)
        self.proxy = tmp_path / "engine" / "docker-proxy"
        self.proxy.parent.mkdir()
        self.proxy.write_text(f"#!{sys.executable}\n{FAKE_DOCKER_PROXY}")
        self.proxy.chmod(0o755)
        self.run_dir = tmp_path / "run"
        self.run_dir.mkdir()
        (self.run_dir / "nic").write_text("lo\n")

    def sync(self, dnat: set[tuple[str, int]], proxies: set[tuple[str, int]]) -> str:
        script = loopback_script(dnat, proxies, run_dir=str(self.run_dir), docker_proxy=str(self.proxy))
        done = subprocess.run([str(self.bin / "sh"), "-c", script], env={"PATH": str(self.bin)}, capture_output=True, text=True, timeout=30, check=False)
        assert done.returncode == 0 and done.stderr == "", done.stderr
        return done.stdout

    def pids(self) -> dict[str, int]:
        return {f.name.removesuffix(".pid"): int(f.read_text()) for f in (self.run_dir / "proxy6").glob("*.pid")}

    def stop_all(self) -> None:
        for pid in self.pids().values():
            _kill(pid)


def _guest_busybox() -> Path:
    from .conftest import image_cache

    busybox = image_cache() / "image-work" / "amd64" / "tree" / "busybox-static" / "usr" / "bin" / "busybox"
    if not busybox.exists() or os.uname().machine != "x86_64":
        pytest.skip(f"the boot image's busybox is not unpacked in {image_cache()} (`pymachine image build`)")
    return busybox


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _running(pid: int) -> bool:
    try:
        return b"docker-proxy" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    return not _running(pid)


class _V6Service:
    """What Docker's own proxy is in the guest: something on [::1]:port alone."""

    def __init__(self, protocol: str, port: int) -> None:
        kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
        self.sock = socket.socket(socket.AF_INET6, kind)
        self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        self.sock.bind(("::1", port))
        if protocol == "tcp":
            self.sock.listen(8)
        self.thread = threading.Thread(target=self._tcp if protocol == "tcp" else self._udp, daemon=True)
        self.thread.start()

    def _tcp(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"from-v6:" + conn.recv(100))

    def _udp(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(100)
            except OSError:
                return
            self.sock.sendto(b"from-v6:" + data, peer)

    def close(self) -> None:
        self.sock.close()


def _tcp_ask(port: int, payload: bytes = b"hi") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(payload)
        return conn.recv(100)


def _udp_ask(port: int, payload: bytes = b"hi") -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(payload, ("127.0.0.1", port))
        return sock.recv(100)


@pytest.fixture
def guest(tmp_path: Path):
    made = Guest(tmp_path)
    yield made
    made.stop_all()


def test_a_proxy_per_port_reaches_ipv6_loopback_only_services_tcp_and_udp(guest: Guest) -> None:
    tcp, udp = _port("tcp"), _port("udp")
    services = [_V6Service("tcp", tcp), _V6Service("udp", udp)]
    try:
        assert guest.sync(set(), {("tcp", tcp), ("udp", udp)}) == ""
        assert set(guest.pids()) == {f"tcp-{tcp}", f"udp-{udp}"}
        assert _tcp_ask(tcp) == b"from-v6:hi"
        assert _udp_ask(udp) == b"from-v6:hi"
        for pid in guest.pids().values():
            assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[2:-1] == [
                b"-proto",
                b"tcp" if pid == guest.pids()[f"tcp-{tcp}"] else b"udp",
                b"-host-ip",
                b"127.0.0.1",
                b"-host-port",
                str(tcp if pid == guest.pids()[f"tcp-{tcp}"] else udp).encode(),
                b"-container-ip",
                b"::1",
                b"-container-port",
                str(tcp if pid == guest.pids()[f"tcp-{tcp}"] else udp).encode(),
            ]
    finally:
        for service in services:
            service.close()


def test_the_sync_is_idempotent_restarts_dead_proxies_and_stops_unwanted_ones(guest: Guest) -> None:
    one, two = _port("tcp"), _port("tcp")
    services = [_V6Service("tcp", one), _V6Service("tcp", two)]
    try:
        guest.sync(set(), {("tcp", one), ("tcp", two)})
        first = guest.pids()
        guest.sync(set(), {("tcp", one), ("tcp", two)})
        assert guest.pids() == first, "a second sync with the same ports restarted a proxy"
        # One dies (killed, or the guest's OOM killer): the next sync starts it again.
        _kill(first[f"tcp-{one}"])
        assert _gone(first[f"tcp-{one}"])
        guest.sync(set(), {("tcp", one), ("tcp", two)})
        again = guest.pids()
        assert again[f"tcp-{two}"] == first[f"tcp-{two}"] and again[f"tcp-{one}"] != first[f"tcp-{one}"]
        assert _tcp_ask(one) == b"from-v6:hi"
        # The forward goes (the container stopped): its proxy goes, the other stays.
        guest.sync(set(), {("tcp", two)})
        assert _gone(again[f"tcp-{one}"]) and set(guest.pids()) == {f"tcp-{two}"}
        with pytest.raises(ConnectionRefusedError):
            _tcp_ask(one)
        assert _tcp_ask(two) == b"from-v6:hi"
        # A new watcher whose containers are all gone: its first sync stops what the old one left.
        guest.sync(set(), set())
        assert _gone(again[f"tcp-{two}"]) and guest.pids() == {}
    finally:
        for service in services:
            service.close()


def test_a_pidfile_whose_pid_is_another_program_now_is_not_killed_and_the_proxy_starts(guest: Guest) -> None:
    port = _port("tcp")
    service = _V6Service("tcp", port)
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (guest.run_dir / "proxy6").mkdir()
        (guest.run_dir / "proxy6" / f"tcp-{port}.pid").write_text(f"{bystander.pid}\n")
        (guest.run_dir / "proxy6" / "tcp-1.pid").write_text(f"{bystander.pid}\n")
        guest.sync(set(), {("tcp", port)})
        assert bystander.poll() is None, "the script killed a process that is not its proxy"
        assert set(guest.pids()) == {f"tcp-{port}"} and guest.pids()[f"tcp-{port}"] != bystander.pid
        assert _tcp_ask(port) == b"from-v6:hi"
    finally:
        bystander.kill()
        bystander.wait()
        service.close()


def test_a_port_the_proxy_cannot_take_is_one_line_with_dockers_reason_and_is_tried_again(guest: Guest) -> None:
    port = _port("tcp")
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen(1)
        said = guest.sync(set(), {("tcp", port)})
    assert said == f"proxy6 tcp-{port}: listen tcp4 127.0.0.1:{port}: bind: address already in use\n"
    assert guest.pids() == {}, "a failed proxy keeps no pidfile, so the next sync tries again"
    service = _V6Service("tcp", port)
    try:
        assert guest.sync(set(), {("tcp", port)}) == ""
        assert _tcp_ask(port) == b"from-v6:hi"
    finally:
        service.close()


def test_dnat_rules_and_proxies_share_one_script_one_line_a_port(guest: Guest) -> None:
    script = loopback_script({("tcp", 8081)}, {("tcp", 8080), ("udp", 5353)})
    assert script.count("--dport 8081 -j DNAT --to-destination 127.0.0.1:8081") == 1
    assert "want tcp-8080\n" in script and "want udp-5353\n" in script
    assert "--dport 8080" not in script, "DNAT to 127.0.0.1 cannot reach a port bound to ::1"
    assert "/var/lib/pymachine/engine/current/bin/docker-proxy" in script and "/run/pymachine/proxy6" in script
    guest.sync({("tcp", 8081)}, set())
    assert "-t nat -A PYMACHINE -i lo -p tcp --dport 8081 -j DNAT --to-destination 127.0.0.1:8081" in guest.iptables_log.read_text()


# -- the watcher: which forwards get a proxy ------------------------------------------------


def test_the_watcher_makes_a_v6_forward_active_with_a_proxy_not_a_dnat_rule(watched) -> None:
    watcher, _, shell = watched
    v6 = container(A_ID, "v6", "::1", 100)
    [item] = wanted_from_inspect(v6)
    assert isinstance(item, WantedForward) and item.guest_ipv6_only
    watcher._apply_container(A_ID, [item])
    assert watcher.owners[item.forward.key].state == "active"
    assert f"want tcp-{PORT}\n" in shell.scripts[-1] and f"--dport {PORT}" not in shell.scripts[-1]
    v4 = container(B_ID, "v4", "127.0.0.1", 200)
    watcher._remove_container(A_ID)
    assert "want " not in shell.scripts[-1], "the proxy outlived its container"
    watcher._apply_container(B_ID, wanted_from_inspect(v4))
    assert f"--dport {PORT} -j DNAT" in shell.scripts[-1] and "want " not in shell.scripts[-1]


def test_a_new_watcher_syncs_once_even_with_nothing_wanted(watched) -> None:
    """The watcher before it may have left proxies running: the first reconcile clears them."""
    from .faults.test_forwarding import FakeDockerAPI

    watcher, _, shell = watched
    watcher.api = FakeDockerAPI({})
    watcher.reconcile()
    assert len(shell.scripts) == 1 and "want " not in shell.scripts[0]
    watcher.reconcile()
    assert len(shell.scripts) == 1, "nothing wanted and nothing changed: no second sync"


def test_the_watcher_logs_a_proxy_that_did_not_start(watched, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from pymachine.guest.ssh import Result

    watcher, _, shell = watched
    why = f"proxy6 tcp-{PORT}: listen tcp4 10.0.2.15:{PORT}: bind: address already in use\n"
    shell.run = lambda script, timeout=30: Result(script, 0, why, "")  # type: ignore[method-assign]
    caplog.set_level(logging.WARNING, logger="pymachine.watcher")
    watcher._apply_container(A_ID, wanted_from_inspect(container(A_ID, "v6", "::1", 100)))
    assert f"the guest's proxy to [::1] did not start: tcp-{PORT}: listen tcp4 10.0.2.15:{PORT}: bind: address already in use" in caplog.text


def test_a_removed_forward_is_recorded_gone_before_the_guests_proxy_is_stopped(watched) -> None:
    """Seen live: `docker rm -f` of a -p [::1] container, the port stopped answering, and
    `pymachine ports` still listed it while the watcher waited on the guest."""
    import json

    from pymachine.forwarding.process import STATE_FILE

    watcher, _, shell = watched
    watcher._apply_container(A_ID, wanted_from_inspect(container(A_ID, "v6", "::1", 100)))
    watcher._save()
    seen: list[list[int]] = []

    def run(script: str, timeout: float = 30) -> None:
        data = json.loads((watcher.directory / STATE_FILE).read_text())
        seen.append([item["host_port"] for item in data["forwards"]])
        shell.scripts.append(script)

    shell.run = run  # type: ignore[method-assign]
    watcher.handle({"Action": "die", "id": A_ID})
    assert seen == [[]], "the forward was still recorded while the guest's proxy was being stopped"
    assert "want " not in shell.scripts[-1]


# -- guest listeners on ::1 alone, failed proxies in `ports`, dead proxies started again ------


def _state(watcher) -> list[tuple[int, str, str]]:
    import json

    from pymachine.forwarding.process import STATE_FILE

    data = json.loads((watcher.directory / STATE_FILE).read_text())
    return [(f["host_port"], f["state"], f["reason"]) for f in data["forwards"]]


def test_a_guest_program_on_ipv6_loopback_alone_is_reached_through_a_proxy(watched) -> None:
    from pymachine.forwarding.listeners import ListenerSettings, apply_listener_forwards, parse_snapshot, wanted_from_listeners

    watcher, driver, shell = watched
    snapshot = parse_snapshot([f"tcp6 00000000000000000000000001000000:{PORT:04X} 9 920 node"])
    apply_listener_forwards(watcher, wanted_from_listeners(snapshot, "127.0.0.1", ListenerSettings()))
    # The host side is the machine's forward bind, as for every listener (the host's relay
    # adds ::1); the guest side is a proxy from its IPv4 address to [::1], not a DNAT rule.
    assert [f.host_ip for f in driver.forwards] == ["127.0.0.1"]
    assert f"want tcp-{PORT}\n" in shell.scripts[-1] and f"--dport {PORT}" not in shell.scripts[-1]
    assert _state(watcher) == [(PORT, "active", "")]
    apply_listener_forwards(watcher, [])
    assert "want " not in shell.scripts[-1] and driver.forwards == set()


def test_a_proxy_that_did_not_start_shows_failed_in_ports_until_one_does(watched) -> None:
    from pymachine.guest.ssh import Result

    watcher, _, shell = watched
    answers = [f"proxy6 tcp-{PORT}: listen tcp4 10.0.2.15:{PORT}: bind: address already in use\n", ""]

    def run(script: str, timeout: float = 30) -> Result:
        shell.scripts.append(script)
        return Result(script, 0, answers.pop(0), "")

    shell.run = run  # type: ignore[method-assign]
    watcher._apply_container(A_ID, wanted_from_inspect(container(A_ID, "v6", "::1", 100)))
    watcher._save()
    [(port, state, reason)] = _state(watcher)
    assert (port, state) == (PORT, "failed")
    assert reason == f"the guest's proxy to [::1] did not start: listen tcp4 10.0.2.15:{PORT}: bind: address already in use"
    watcher._sync_loopback(force=True)  # tried again (as at a reconcile), and it starts
    assert _state(watcher) == [(PORT, "active", "")]


def test_a_proxy_the_listener_scan_does_not_see_is_started_again_at_once(watched) -> None:
    watcher, _, shell = watched
    watcher._apply_container(A_ID, wanted_from_inspect(container(A_ID, "v6", "::1", 100)))
    syncs = len(shell.scripts)
    watcher.guest_proxies_seen({("tcp", PORT)})
    assert len(shell.scripts) == syncs, "its proxy listens: no sync"
    watcher.guest_proxies_seen({("udp", PORT)})  # the tcp one is gone (killed, say)
    assert len(shell.scripts) == syncs + 1 and f"want tcp-{PORT}\n" in shell.scripts[-1]
    watcher._remove_container(A_ID)
    syncs = len(shell.scripts)
    watcher.guest_proxies_seen(set())
    assert len(shell.scripts) == syncs, "no proxy is wanted any more: no sync"


def test_the_scan_finds_the_watchers_proxies_among_the_listeners() -> None:
    from pymachine.forwarding.listeners import parse_snapshot, proxies_listening

    snapshot = parse_snapshot(
        [
            f"tcp 0F02000A:{PORT:04X} 1 700 docker-proxy",  # ours: on the guest's own address
            "udp 0F02000A:14E9 2 701 docker-proxy",
            "tcp 00000000:1F90 3 702 docker-proxy",  # Docker's, for a published port
            "tcp 0F02000A:1F91 4 703 python3",  # not a proxy
        ]
    )
    assert proxies_listening(snapshot) == {("tcp", PORT), ("udp", 5353)}
