"""Automatic port forwarding on a real machine: published ports answer on the host when a
container starts and stop answering when it stops, for every kind of publishing.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from pymachine.procs import alive, read_pidfile

from .contract import wait_for
from .live import CLI, free_port, http_get, machine_with_image

pytestmark = [pytest.mark.live, pytest.mark.timeout(900)]
NAME = "fwd"
IMAGE = "busybox-local"


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory, boot_image, busybox_rootfs: Path, docker_config):
    yield from machine_with_image(tmp_path_factory, NAME, busybox_rootfs, IMAGE)


def web(cli: CLI, name: str, *publish: str, port: int = 80, extra: tuple[str, ...] = ()) -> None:
    args = ["run", "-d", "--name", name]
    for item in publish:
        args += ["-p", item]
    cli.docker(NAME, *args, *extra, IMAGE, "httpd", "-f", "-p", str(port), "-h", "/www")


def forward(cli: CLI, host_port: int, protocol: str = "tcp") -> dict | None:
    for item in cli.ports(NAME)["forwards"]:
        if item["host_port"] == host_port and item["protocol"] == protocol:
            return item
    return None


def test_published_port_answers_at_once_and_goes_with_the_container(cli: CLI) -> None:
    port = free_port()
    web(cli, "plain", f"{port}:80")
    # How fast is bench/forwards.py's business; here it must simply happen, unaided.
    assert wait_for(lambda: http_get(port) is not None, timeout=15, interval=0.02), "nothing answered after docker run"
    assert "hello" in (http_get(port) or "")
    item = forward(cli, port)
    assert item and item["state"] == "active" and item["container"] == "plain"
    assert item["host_ip"] == "127.0.0.1", "a bare -p binds the host's loopback by default"
    cli.docker(NAME, "stop", "-t", "1", "plain")
    assert wait_for(lambda: http_get(port, timeout=0.5) is None, timeout=15, interval=0.02), "still answering after docker stop"
    assert forward(cli, port) is None
    cli.docker(NAME, "start", "plain")
    assert wait_for(lambda: http_get(port) is not None, timeout=20, interval=0.05), "docker start did not bring the forward back"
    cli.docker(NAME, "rm", "-f", "plain")
    assert wait_for(lambda: http_get(port, timeout=0.5) is None, timeout=15, interval=0.02)


def test_loopback_binding_reaches_a_port_bound_to_the_guests_loopback(cli: CLI) -> None:
    port = free_port()
    web(cli, "loop", f"127.0.0.1:{port}:8080", port=8080)
    assert wait_for(lambda: http_get(port) is not None, timeout=30, interval=0.05)
    assert forward(cli, port)["host_ip"] == "127.0.0.1"
    cli.docker(NAME, "rm", "-f", "loop")


def test_all_interfaces_binding_when_asked(cli: CLI) -> None:
    port = free_port()
    web(cli, "wide", f"0.0.0.0:{port}:80")
    assert wait_for(lambda: http_get(port) is not None, timeout=20, interval=0.05)
    assert forward(cli, port)["host_ip"] == "0.0.0.0"
    cli.docker(NAME, "rm", "-f", "wide")


def test_random_host_port_with_dash_P(cli: CLI) -> None:
    cli.docker(NAME, "run", "-d", "--name", "random", "--expose", "80", "-P", IMAGE, "httpd", "-f", "-p", "80", "-h", "/www")
    mapped = cli.docker(NAME, "port", "random", "80/tcp").stdout.splitlines()[0]
    port = int(mapped.rsplit(":", 1)[1])
    assert wait_for(lambda: http_get(port) is not None, timeout=20, interval=0.05)
    cli.docker(NAME, "rm", "-f", "random")


def test_a_port_range(cli: CLI) -> None:
    base = free_port()
    while any(not _free(p) for p in range(base, base + 3)):
        base = free_port()
    ports = range(base, base + 3)
    script = " & ".join(f"httpd -p {p} -h /www" for p in ports) + " & sleep 3600"
    cli.docker(NAME, "run", "-d", "--name", "range", "-p", f"{base}-{base + 2}:{base}-{base + 2}", IMAGE, "sh", "-c", script)
    assert wait_for(lambda: all(http_get(p) is not None for p in ports), timeout=30, interval=0.1)
    cli.docker(NAME, "rm", "-f", "range")
    assert wait_for(lambda: all(forward(cli, p) is None for p in ports), timeout=20)


def test_udp(cli: CLI) -> None:
    port = free_port()
    cli.docker(NAME, "run", "-d", "--name", "udp", "-p", f"{port}:9999/udp", IMAGE, "nc.openbsd", "-u", "-l", "9999")
    assert wait_for(lambda: (forward(cli, port, "udp") or {}).get("state") == "active", timeout=20)
    payload = b"datagram-through-the-forward"

    def delivered() -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(payload + b"\n", ("127.0.0.1", port))
        time.sleep(0.3)
        return payload.decode() in cli.docker(NAME, "logs", "udp").stdout

    assert wait_for(delivered, timeout=30, interval=0.2)
    cli.docker(NAME, "rm", "-f", "udp")


def test_a_taken_host_port_is_reported_and_disturbs_nothing(cli: CLI) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    busy = holder.getsockname()[1]
    fine = free_port()
    try:
        web(cli, "clash", f"{busy}:80")
        web(cli, "bystander", f"{fine}:80")
        assert wait_for(lambda: (forward(cli, busy) or {}).get("state") == "failed", timeout=20)
        assert "in use" in forward(cli, busy)["reason"]
        assert wait_for(lambda: http_get(fine) is not None, timeout=20)
        assert cli.pm("ports", NAME).stdout.count("failed") == 1
    finally:
        holder.close()
        cli.docker(NAME, "rm", "-f", "clash", "bystander")


def test_forwards_come_back_after_the_daemon_restarts(cli: CLI) -> None:
    port = free_port()
    web(cli, "survivor", f"{port}:80", extra=("--restart", "always"))
    assert wait_for(lambda: http_get(port) is not None, timeout=20)
    cli.pm("ssh", NAME, "/usr/libexec/pymachine/engine restart")
    assert wait_for(lambda: http_get(port) is not None, timeout=120, interval=0.5), "the forward did not come back"
    assert cli.ports(NAME)["watcher"]["state"] == "watching"
    cli.docker(NAME, "rm", "-f", "survivor")


def test_a_killed_watcher_is_restored_by_the_next_command(cli: CLI) -> None:
    pidfile = cli.machine_dir(NAME) / "watcher.pid"
    pid = read_pidfile(pidfile)
    assert pid and alive(pid)
    import os
    import signal

    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: not alive(pid), timeout=20)
    cli.pm("status", NAME)  # any command on the machine notices
    assert wait_for(lambda: (read_pidfile(pidfile) or pid) != pid and alive(read_pidfile(pidfile)), timeout=30)
    port = free_port()
    web(cli, "after", f"{port}:80")
    assert wait_for(lambda: http_get(port) is not None, timeout=30, interval=0.05)
    cli.docker(NAME, "rm", "-f", "after")


def test_the_python_docker_sdk_works_through_env_and_gets_forwards(cli: CLI, monkeypatch: pytest.MonkeyPatch) -> None:
    """A test library's view (testcontainers, docker-compose 1.x use the docker SDK): even
    where REQUESTS_CA_BUNDLE is set, as many hosts set it, TLS to the machine verifies."""
    import docker

    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    for key, value in cli.docker_env(NAME).items():
        if key.startswith("DOCKER_") or key.endswith("_CA_BUNDLE"):
            monkeypatch.setenv(key, value)
    client = docker.from_env()
    port = free_port()
    container = client.containers.run(IMAGE, ["httpd", "-f", "-p", "80", "-h", "/www"], detach=True, ports={"80/tcp": ("127.0.0.1", port)})
    try:
        assert wait_for(lambda: http_get(port) is not None, timeout=20, interval=0.05)
    finally:
        container.remove(force=True)
        client.close()


# -- guest listeners (pymachine.forwarding.listeners) --------------------------------------

#: Listener latencies measured by the tests below (seconds), printed at the end of the run.
LISTENER_LATENCY: list[float] = []


def guest_background(cli: CLI, tag: str, command: str) -> None:
    """Start `command` in the guest over `pymachine ssh`, detached, its pid in /tmp/TAG.pid."""
    cli.pm("ssh", NAME, f"mkdir -p /tmp/www && echo hello-{tag} > /tmp/www/index.html && (setsid {command} </dev/null >/tmp/{tag}.log 2>&1 & echo $! > /tmp/{tag}.pid)")


def guest_kill(cli: CLI, tag: str) -> None:
    cli.pm("ssh", NAME, f"kill $(cat /tmp/{tag}.pid)")


def listener_forward(cli: CLI, port: int, protocol: str = "tcp") -> dict | None:
    item = forward(cli, port, protocol)
    return item if item and item.get("source") == "listener" else None


def answers_within(port: int, started: float, timeout: float = 10) -> float:
    """Seconds from `started` until GET / on 127.0.0.1:port answers; fails after `timeout`."""
    assert wait_for(lambda: http_get(port, timeout=0.5) is not None, timeout=timeout, interval=0.02), f"nothing answered on {port}"
    latency = time.monotonic() - started
    LISTENER_LATENCY.append(latency)
    return latency


def test_a_process_listening_on_any_address_in_the_guest_is_forwarded(cli: CLI) -> None:
    port = free_port()
    guest_background(cli, "any", f"busybox httpd -f -p 0.0.0.0:{port} -h /tmp/www")
    latency = answers_within(port, time.monotonic())
    assert "hello-any" in (http_get(port) or "")
    item = listener_forward(cli, port)
    # Started as `busybox httpd`: the guest's /proc/PID/comm says busybox.
    assert item and item["state"] == "active" and item["container"].startswith("busybox (pid "), item
    assert item["host_ip"] == "127.0.0.1", "a listener is forwarded on the machine's forward bind (loopback)"
    assert "listener busybox (pid " in cli.pm("ports", NAME).stdout
    guest_kill(cli, "any")
    gone = time.monotonic()
    assert wait_for(lambda: http_get(port, timeout=0.5) is None, timeout=10, interval=0.02), "still answering after the listener exited"
    print(f"listener 0.0.0.0: answered {latency:.2f}s after `pymachine ssh` returned; gone {time.monotonic() - gone:.2f}s after kill returned")
    assert wait_for(lambda: forward(cli, port) is None, timeout=5)


def test_a_process_listening_on_the_guests_loopback_is_forwarded(cli: CLI) -> None:
    port = free_port()
    guest_background(cli, "loop", f"busybox httpd -f -p 127.0.0.1:{port} -h /tmp/www")
    latency = answers_within(port, time.monotonic())
    assert "hello-loop" in (http_get(port) or "")
    guest_kill(cli, "loop")
    assert wait_for(lambda: http_get(port, timeout=0.5) is None, timeout=10, interval=0.02)
    print(f"listener 127.0.0.1: answered {latency:.2f}s after `pymachine ssh` returned")


def test_a_udp_listener_in_the_guest_is_forwarded(cli: CLI) -> None:
    port = free_port()
    guest_background(cli, "udp", f"nc.openbsd -u -l {port}")
    assert wait_for(lambda: (listener_forward(cli, port, "udp") or {}).get("state") == "active", timeout=10, interval=0.1)
    payload = "datagram-to-a-guest-listener"

    def delivered() -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(payload.encode() + b"\n", ("127.0.0.1", port))
        time.sleep(0.3)
        return payload in cli.pm("ssh", NAME, "cat /tmp/udp.log").stdout

    assert wait_for(delivered, timeout=20, interval=0.2)
    cli.pm("ssh", NAME, "kill $(cat /tmp/udp.pid) 2>/dev/null; true")
    assert wait_for(lambda: forward(cli, port, "udp") is None, timeout=10, interval=0.1)


def test_a_host_network_container_is_forwarded(cli: CLI) -> None:
    port = free_port()
    cli.docker(NAME, "run", "-d", "--name", "hostnet", "--network", "host", IMAGE, "httpd", "-f", "-p", str(port), "-h", "/www")
    latency = answers_within(port, time.monotonic())
    item = listener_forward(cli, port)
    assert item and "httpd" in item["container"], item
    cli.docker(NAME, "rm", "-f", "hostnet")
    assert wait_for(lambda: http_get(port, timeout=0.5) is None, timeout=10, interval=0.02)
    print(f"host-network container: answered {latency:.2f}s after `docker run -d` returned")


def test_the_guests_own_services_and_published_ports_are_never_listener_forwards(cli: CLI) -> None:
    port = free_port()
    web(cli, "published", f"{port}:80")
    assert wait_for(lambda: http_get(port) is not None, timeout=15, interval=0.02)
    time.sleep(1.5)  # several scans of the guest's listeners (docker-proxy holds the port there)
    forwards = cli.ports(NAME)["forwards"]
    mine = [f for f in forwards if f["host_port"] == port]
    assert len(mine) == 1 and mine[0]["source"] == "container" and mine[0]["state"] == "active", mine
    listeners = [f for f in forwards if f.get("source") == "listener"]
    assert not [f for f in listeners if f["guest_port"] in (22, 2376)], listeners
    assert not [f for f in forwards if f["state"] == "failed"], forwards
    cli.docker(NAME, "rm", "-f", "published")


def test_listener_forwarding_can_be_turned_off_and_ports_ignored(cli: CLI) -> None:
    port, ignored = free_port(), free_port()
    cli.pm("ports", NAME, "--listeners", "off")
    try:
        guest_background(cli, "off", f"busybox httpd -f -p {port} -h /tmp/www")
        time.sleep(2.5)
        assert http_get(port, timeout=0.5) is None, "forwarded although listener forwarding is off"
        cli.pm("ports", NAME, "--listeners", "on", "--ignore", str(ignored))
        answers_within(port, time.monotonic(), timeout=10)
        guest_background(cli, "ignored", f"busybox httpd -f -p {ignored} -h /tmp/www")
        time.sleep(2.5)
        assert http_get(ignored, timeout=0.5) is None, "an ignored port was forwarded"
        assert forward(cli, ignored) is None
    finally:
        cli.pm("ports", NAME, "--listeners", "on", "--unignore", str(ignored))
        cli.pm("ssh", NAME, "kill $(cat /tmp/off.pid) $(cat /tmp/ignored.pid) 2>/dev/null; true")
    config = (cli.machine_dir(NAME) / "config.json").read_text()
    assert '"listener_forwarding": true' in config and '"ignore_ports": []' in config
    if LISTENER_LATENCY:
        ordered = sorted(LISTENER_LATENCY)
        print(f"listener latency over {len(ordered)}: median {ordered[len(ordered) // 2]:.2f}s, max {ordered[-1]:.2f}s")


def test_both_loopbacks_answer_and_go_with_the_container(cli: CLI) -> None:
    """A bare -p answers on 127.0.0.1 and on ::1 (macOS's localhost), TCP and UDP, and both
    stop with the container; -p [::1]:H:C answers on ::1 alone (TCP and UDP), and its proxy
    in the guest goes with the container."""
    port, udp_port, v6_port = free_port(), free_port(), free_port()
    web(cli, "both", f"127.0.0.1:{port}:80")
    assert wait_for(lambda: http_get(port, host="::1") is not None, timeout=15, interval=0.02), "nothing answered on [::1]"
    assert "hello" in (http_get(port) or "") and "hello" in (http_get(port, host="::1") or "")
    cli.docker(NAME, "stop", "-t", "1", "both")
    assert wait_for(lambda: http_get(port, timeout=0.5, host="::1") is None and http_get(port, timeout=0.5) is None, timeout=15, interval=0.02)
    cli.docker(NAME, "rm", "-f", "both")

    cli.docker(NAME, "run", "-d", "--name", "udp6", "-p", f"{udp_port}:9999/udp", IMAGE, "nc.openbsd", "-u", "-l", "9999")
    assert wait_for(lambda: (forward(cli, udp_port, "udp") or {}).get("state") == "active", timeout=20)

    def delivered() -> bool:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"over-ipv6\n", ("::1", udp_port))
        time.sleep(0.3)
        return "over-ipv6" in cli.docker(NAME, "logs", "udp6").stdout

    assert wait_for(delivered, timeout=30, interval=0.2), "a datagram to [::1] did not arrive"
    cli.docker(NAME, "rm", "-f", "udp6")

    # -p [::1]: Docker binds the guest's ::1 only, which the hypervisor's IPv4 NAT cannot
    # reach; the watcher runs a docker-proxy in the guest from its own address to [::1].
    started = time.monotonic()
    cli.docker(NAME, "run", "-d", "--name", "v6", "-p", f"[::1]:{v6_port}:80", IMAGE, "httpd", "-f", "-p", "80", "-h", "/www")
    returned = time.monotonic()
    assert wait_for(lambda: "hello" in (http_get(v6_port, timeout=0.5, host="::1") or ""), timeout=30, interval=0.02), str(forward(cli, v6_port))
    took, after = time.monotonic() - started, time.monotonic() - returned
    print(f"-p [::1]: answered on [::1] {took:.2f}s after docker run began, {after:.2f}s after it returned")
    assert (forward(cli, v6_port) or {}).get("state") == "active"
    assert http_get(v6_port, timeout=0.5) is None, "a -p [::1] answers on 127.0.0.1 too"
    pidfile = f"/run/pymachine/proxy6/tcp-{v6_port}.pid"
    pid = cli.pm("ssh", NAME, f"cat {pidfile}").stdout.strip()
    assert "docker-proxy" in cli.pm("ssh", NAME, f"tr '\\000' ' ' < /proc/{pid}/cmdline").stdout
    v6_udp = free_port()
    cli.docker(NAME, "run", "-d", "--name", "v6udp", "-p", f"[::1]:{v6_udp}:9999/udp", IMAGE, "nc.openbsd", "-u", "-l", "9999")

    def delivered_v6() -> bool:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"to-v6-only\n", ("::1", v6_udp))
        time.sleep(0.3)
        return "to-v6-only" in cli.docker(NAME, "logs", "v6udp").stdout

    assert wait_for(delivered_v6, timeout=30, interval=0.2), "a datagram to a -p [::1] UDP port did not arrive"
    cli.docker(NAME, "rm", "-f", "v6", "v6udp")
    assert wait_for(lambda: http_get(v6_port, timeout=0.5, host="::1") is None, timeout=15, interval=0.05)
    # The port stops answering when the container dies; the watcher's record follows its die event.
    assert wait_for(lambda: forward(cli, v6_port) is None and forward(cli, v6_udp, "udp") is None, timeout=15, interval=0.1), str(forward(cli, v6_port))

    # The forward is recorded gone first; the guest's proxies stop in the SSH call after.
    def proxies_left() -> str:
        return cli.pm("ssh", NAME, f"ls /run/pymachine/proxy6; [ -d /proc/{pid} ] && tr '\\000' ' ' < /proc/{pid}/cmdline; true").stdout

    assert wait_for(lambda: not any(mark in proxies_left() for mark in ("docker-proxy", f"-{v6_port}", f"-{v6_udp}")), timeout=20, interval=0.5), proxies_left()


def test_a_guest_program_on_ipv6_loopback_alone_answers_on_the_host(cli: CLI) -> None:
    """A server in the guest on [::1] alone: the NAT's IPv4 reaches it through the guest
    proxy to [::1], and the host's 127.0.0.1 and ::1 both answer, as for any listener."""
    port = free_port()
    guest_background(cli, "v6only", f"busybox httpd -f -p [::1]:{port} -h /tmp/www")
    latency = answers_within(port, time.monotonic(), timeout=15)
    assert "hello-v6only" in (http_get(port) or "") and "hello-v6only" in (http_get(port, host="::1") or "")
    item = listener_forward(cli, port)
    assert item and item["state"] == "active" and item["container"].startswith("busybox (pid "), item
    print(f"listener on the guest's ::1 alone: answered {latency:.2f}s after `pymachine ssh` returned")
    guest_kill(cli, "v6only")
    assert wait_for(lambda: http_get(port, timeout=0.5) is None, timeout=10, interval=0.05), "still answering after the listener exited"
    assert wait_for(lambda: forward(cli, port) is None, timeout=10, interval=0.1)
    assert wait_for(lambda: f"tcp-{port}" not in cli.pm("ssh", NAME, "ls /run/pymachine/proxy6").stdout, timeout=10, interval=0.5)


def test_a_killed_guest_proxy_comes_back_within_seconds(cli: CLI) -> None:
    """The guest proxy of a -p [::1] port, killed in the guest, is started again when the
    listener scan sees its socket gone, not at the reconcile a minute later."""
    port = free_port()
    cli.docker(NAME, "run", "-d", "--name", "v6kill", "-p", f"[::1]:{port}:80", IMAGE, "httpd", "-f", "-p", "80", "-h", "/www")
    try:
        assert wait_for(lambda: http_get(port, timeout=0.5, host="::1") is not None, timeout=30, interval=0.05)
        pidfile = f"/run/pymachine/proxy6/tcp-{port}.pid"
        pid = cli.pm("ssh", NAME, f"cat {pidfile}").stdout.strip()
        cli.pm("ssh", NAME, f"kill -9 {pid}")
        killed = time.monotonic()
        assert wait_for(lambda: http_get(port, timeout=0.5, host="::1") is not None, timeout=20, interval=0.05), "the proxy did not come back"
        back = time.monotonic() - killed
        new_pid = cli.pm("ssh", NAME, f"cat {pidfile}").stdout.strip()
        assert new_pid and new_pid != pid
        log = (cli.machine_dir(NAME) / "watcher.log").read_text()
        assert f"the guest's proxy to [::1] for tcp/{port} is not listening; starting it again" in log
        print(f"a killed guest proxy: answering again {back:.2f}s after `kill -9` returned")
    finally:
        cli.docker(NAME, "rm", "-f", "v6kill")


def test_a_download_through_a_forward_moves_in_large_packets(cli: CLI) -> None:
    """QEMU's NAT takes large frames: the guest's NIC and Docker's networks run at 65520
    bytes, and the guest raises the MSS the NAT offers, so a container sends up to 64 KiB
    per packet (bench/forwards.py measures what that is worth)."""
    assert cli.pm("ssh", NAME, "cat /sys/class/net/eth0/mtu").stdout.strip() == "65520"
    # the default bridge, and a network made after start, as compose makes them
    cli.docker(NAME, "network", "create", "later")
    try:
        mtus = [cli.docker(NAME, "run", "--rm", *net, IMAGE, "cat", "/sys/class/net/eth0/mtu").stdout.strip() for net in ((), ("--network", "later"))]
    finally:
        cli.docker(NAME, "network", "rm", "later", check=False)
    assert mtus == ["65520", "65520"]
    port, size = free_port(), 16 << 20
    cli.docker(NAME, "run", "-d", "--name", "big", "-p", f"{port}:80", IMAGE, "sh", "-c", "dd if=/dev/zero of=/www/big bs=1M count=16 2>/dev/null && httpd -f -p 80 -h /www")
    counters = "cat /sys/class/net/eth0/statistics/tx_packets /sys/class/net/eth0/statistics/tx_bytes"
    try:
        assert wait_for(lambda: http_get(port) is not None, timeout=30, interval=0.05)
        packets_before, bytes_before = map(int, cli.pm("ssh", NAME, counters).stdout.split())
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            sock.sendall(b"GET /big HTTP/1.0\r\n\r\n")
            got = b"".join(iter(lambda: sock.recv(1 << 20), b""))
        packets_after, bytes_after = map(int, cli.pm("ssh", NAME, counters).stdout.split())
    finally:
        cli.docker(NAME, "rm", "-f", "big")
    assert got.endswith(b"\0" * 1024) and len(got) > size
    sent = bytes_after - bytes_before
    assert sent > size
    # 1460-byte segments would make it ~1500 bytes a packet; the SSH sessions' own packets count too
    assert sent / (packets_after - packets_before) > 16384


def test_stop_start_and_rm_leave_no_forward_or_process(cli: CLI) -> None:
    port = free_port()
    web(cli, "persist", f"{port}:80", extra=("--restart", "always"))
    assert wait_for(lambda: http_get(port) is not None, timeout=20)
    watcher = read_pidfile(cli.machine_dir(NAME) / "watcher.pid")
    cli.pm("stop", NAME)
    assert http_get(port, timeout=0.5) is None
    assert watcher and wait_for(lambda: not alive(watcher), timeout=20)
    cli.pm("start", NAME)
    assert wait_for(lambda: http_get(port) is not None, timeout=60, interval=0.2), "the running container's forward was not restored"
    qemu = read_pidfile(cli.machine_dir(NAME) / "qemu.pid")
    watcher = read_pidfile(cli.machine_dir(NAME) / "watcher.pid")
    cli.pm("rm", "-y", NAME)
    assert http_get(port, timeout=0.5) is None
    assert wait_for(lambda: not alive(qemu) and not alive(watcher), timeout=30)


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False
