"""From `docker inspect` data to host forwards, and the plan that reconciles them.

The inspect data below has the shapes Docker 20.10 (the daemon in the boot image) gives:
HostConfig.PortBindings is what the user asked for (known from `create` on), and
NetworkSettings.Ports what Docker really bound (filled in at `start`; a bare `-p H:C`
shows there twice, for 0.0.0.0 and ::).
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from pymachine.driver import Feature, PortForward
from pymachine.forwarding.listeners import (
    GUEST_SCRIPT,
    ListenerScanner,
    ListenerSettings,
    apply_listener_forwards,
    parse_snapshot,
    wanted_from_listeners,
)
from pymachine.forwarding.plan import Plan, WantedForward, plan, wanted_from_inspect
from pymachine.forwarding.process import STATE_FILE
from pymachine.forwarding.watcher import ForwardWatcher
from pymachine.store import MachineConfig, Store

from .fakes.watcher import FakeDockerAPI, GuestShell, RecordingDriver, container

CONTAINER_ID = "4f1c2e9d8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e"


def inspect(bindings: dict[str, Any] | None, ports: dict[str, Any] | None, *, running: bool = True, name: str = "/web", publish_all: bool = False) -> dict[str, Any]:
    """A container's inspect JSON, trimmed to what Docker sends around the port fields."""
    return {
        "Id": CONTAINER_ID,
        "Created": "2026-11-27T21:40:01.123456789Z",
        "Name": name,
        "State": {"Status": "running" if running else "created", "Running": running, "Pid": 4242 if running else 0},
        "Config": {"Image": "busybox", "ExposedPorts": {k: {} for k in (bindings or ports or {})}},
        "HostConfig": {"NetworkMode": "default", "PortBindings": bindings, "PublishAllPorts": publish_all, "AutoRemove": False},
        "NetworkSettings": {
            "Bridge": "",
            "SandboxKey": "/var/run/docker/netns/0a1b2c3d4e5f" if running else "",
            "Ports": ports,
            "IPAddress": "172.17.0.2" if running else "",
        },
    }


def both_families(port: str) -> list[dict[str, str]]:
    return [{"HostIp": "0.0.0.0", "HostPort": port}, {"HostIp": "::", "HostPort": port}]


def forwards(data: dict[str, Any], forward_bind: str = "127.0.0.1") -> list[tuple[str, str, int, int, bool]]:
    return [(w.forward.protocol, w.forward.host_ip, w.forward.host_port, w.forward.guest_port, w.guest_loopback) for w in wanted_from_inspect(data, forward_bind)]


# -p 3001:80
BARE = inspect({"80/tcp": [{"HostIp": "", "HostPort": "3001"}]}, {"80/tcp": both_families("3001")})


def test_bare_publish_is_one_forward_on_loopback_by_default() -> None:
    wanted = wanted_from_inspect(BARE)
    assert len(wanted) == 1  # 0.0.0.0 and :: for one port: one host forward
    assert wanted[0].forward == PortForward("tcp", "127.0.0.1", 3001, 3001)
    assert wanted[0].guest_loopback is False
    assert wanted[0].container_id == CONTAINER_ID
    assert wanted[0].container_name == "web"


def test_bare_publish_follows_the_machines_forward_bind() -> None:
    assert forwards(BARE, forward_bind="0.0.0.0") == [("tcp", "0.0.0.0", 3001, 3001, False)]


def test_explicit_loopback_publish_binds_loopback_and_needs_the_guest_rule() -> None:
    data = inspect({"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": "3102"}]}, {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": "3102"}]})
    expected = [("tcp", "127.0.0.1", 3102, 3102, True)]
    assert forwards(data) == expected
    # The user asked for loopback: a machine that forwards bare ports widely does not widen it.
    assert forwards(data, forward_bind="0.0.0.0") == expected


def test_ipv6_loopback_publish_is_kept_as_asked() -> None:
    """-p [::1]:H:C used to become a forward on 127.0.0.1 that reset every connection: it stays
    ::1 (the relay on the host, a docker-proxy in the guest)."""
    data = inspect({"80/tcp": [{"HostIp": "::1", "HostPort": "3106"}]}, {"80/tcp": [{"HostIp": "::1", "HostPort": "3106"}]})
    assert forwards(data, forward_bind="0.0.0.0") == [("tcp", "::1", 3106, 3106, True)]


def test_ipv4_and_ipv6_loopback_for_one_port_is_the_ipv4_forward() -> None:
    both = [{"HostIp": "127.0.0.1", "HostPort": "3107"}, {"HostIp": "::1", "HostPort": "3107"}]
    assert forwards(inspect({"80/tcp": both}, {"80/tcp": both})) == [("tcp", "127.0.0.1", 3107, 3107, True)]
    backwards = list(reversed(both))
    assert forwards(inspect({"80/tcp": backwards}, {"80/tcp": backwards})) == [("tcp", "127.0.0.1", 3107, 3107, True)]


def test_explicit_any_address_publish_binds_every_interface() -> None:
    data = inspect({"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "3103"}]}, {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "3103"}]})
    assert forwards(data) == [("tcp", "0.0.0.0", 3103, 3103, False)]
    v6 = inspect({"80/tcp": [{"HostIp": "::", "HostPort": "3105"}]}, {"80/tcp": [{"HostIp": "::", "HostPort": "3105"}]})
    assert forwards(v6) == [("tcp", "0.0.0.0", 3105, 3105, False)]


def test_publish_all_gets_random_ports_only_after_start() -> None:
    created = inspect({}, {}, running=False, publish_all=True)
    created["Config"]["ExposedPorts"] = {"80/tcp": {}, "443/tcp": {}}
    assert forwards(created) == []
    running = inspect({}, {"443/tcp": both_families("49154"), "80/tcp": both_families("49153")}, publish_all=True)
    assert forwards(running) == [("tcp", "127.0.0.1", 49153, 49153, False), ("tcp", "127.0.0.1", 49154, 49154, False)]
    assert forwards(running, forward_bind="0.0.0.0")[0][1] == "0.0.0.0"


def test_container_port_only_gets_a_random_port_after_start() -> None:
    bindings = {"80/tcp": [{"HostIp": "", "HostPort": ""}]}
    assert forwards(inspect(bindings, {}, running=False)) == []
    assert forwards(inspect(bindings, None, running=False)) == []
    assert forwards(inspect(bindings, {"80/tcp": both_families("49155")})) == [("tcp", "127.0.0.1", 49155, 49155, False)]


def test_port_range_publish_is_one_forward_per_port() -> None:
    bindings = {f"{p}/tcp": [{"HostIp": "", "HostPort": str(p)}] for p in (8000, 8001, 8002)}
    expected = [("tcp", "127.0.0.1", p, p, False) for p in (8000, 8001, 8002)]
    # Fixed host ports are known at create, before start.
    assert forwards(inspect(bindings, {}, running=False)) == expected
    running = inspect(bindings, {f"{p}/tcp": both_families(str(p)) for p in (8000, 8001, 8002)})
    assert forwards(running) == expected


def test_host_range_to_one_port_is_known_after_start() -> None:
    bindings = {"80/tcp": [{"HostIp": "", "HostPort": "8000-8010"}]}
    assert forwards(inspect(bindings, {}, running=False)) == []  # Docker picks from the range at start
    assert forwards(inspect(bindings, {"80/tcp": both_families("8004")})) == [("tcp", "127.0.0.1", 8004, 8004, False)]
    loopback = {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8000-8010"}]}
    assert forwards(inspect(loopback, {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8000"}]}), forward_bind="0.0.0.0") == [("tcp", "127.0.0.1", 8000, 8000, True)]


def test_udp_and_tcp_on_one_host_port_are_two_forwards() -> None:
    bindings = {"53/udp": [{"HostIp": "", "HostPort": "5353"}], "53/tcp": [{"HostIp": "", "HostPort": "5353"}]}
    data = inspect(bindings, {"53/udp": both_families("5353"), "53/tcp": both_families("5353")})
    assert forwards(data) == [("tcp", "127.0.0.1", 5353, 5353, False), ("udp", "127.0.0.1", 5353, 5353, False)]


def test_sctp_is_not_forwarded() -> None:
    data = inspect({"9000/sctp": [{"HostIp": "", "HostPort": "9000"}]}, {"9000/sctp": both_families("9000")})
    assert forwards(data) == []


def test_created_but_not_started_gets_only_fixed_ports() -> None:
    bindings = {
        "80/tcp": [{"HostIp": "", "HostPort": "3001"}],
        "81/tcp": [{"HostIp": "", "HostPort": ""}],
        "8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": "3102"}],
        "82/tcp": [{"HostIp": "", "HostPort": "9000-9010"}],
    }
    assert forwards(inspect(bindings, {}, running=False)) == [("tcp", "127.0.0.1", 3001, 3001, False), ("tcp", "127.0.0.1", 3102, 3102, True)]


def test_no_ports() -> None:
    assert forwards(inspect({}, {})) == []
    assert forwards(inspect(None, None)) == []
    # Exposed but not published: Docker lists the port with no bindings.
    assert forwards(inspect({}, {"80/tcp": None})) == []
    assert wanted_from_inspect({"Id": CONTAINER_ID}) == []


def test_several_publishes_of_one_container() -> None:
    bindings = {"80/tcp": [{"HostIp": "", "HostPort": "3001"}], "8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": "3102"}], "443/tcp": [{"HostIp": "0.0.0.0", "HostPort": "3443"}]}
    ports = {"80/tcp": both_families("3001"), "8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": "3102"}], "443/tcp": [{"HostIp": "0.0.0.0", "HostPort": "3443"}]}
    assert forwards(inspect(bindings, ports)) == [
        ("tcp", "127.0.0.1", 3001, 3001, False),
        ("tcp", "127.0.0.1", 3102, 3102, True),
        ("tcp", "0.0.0.0", 3443, 3443, False),
    ]


def test_random_port_on_an_address_does_not_change_a_bare_publish() -> None:
    """`-p 0.0.0.0::80 -p 3001:80`: 3001 was asked for bare, so it stays on loopback."""
    bindings = {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": ""}, {"HostIp": "", "HostPort": "3001"}]}
    ports = {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "49153"}, *both_families("3001")]}
    assert forwards(inspect(bindings, ports)) == [("tcp", "127.0.0.1", 3001, 3001, False), ("tcp", "0.0.0.0", 49153, 49153, False)]


def test_random_ports_bare_and_on_loopback() -> None:
    """`-p 80 -p 127.0.0.1::80` on a machine that forwards bare ports on every interface."""
    bindings = {"80/tcp": [{"HostIp": "", "HostPort": ""}, {"HostIp": "127.0.0.1", "HostPort": ""}]}
    ports = {"80/tcp": [*both_families("49153"), {"HostIp": "127.0.0.1", "HostPort": "49154"}]}
    assert forwards(inspect(bindings, ports), forward_bind="0.0.0.0") == [("tcp", "0.0.0.0", 49153, 49153, False), ("tcp", "127.0.0.1", 49154, 49154, True)]


def test_random_port_on_loopback_alone() -> None:
    bindings = {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]}
    assert forwards(inspect(bindings, {}, running=False)) == []
    ports = {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "49160"}]}
    assert forwards(inspect(bindings, ports), forward_bind="0.0.0.0") == [("tcp", "127.0.0.1", 49160, 49160, True)]


def test_container_name_falls_back_to_the_short_id() -> None:
    data = inspect({"80/tcp": [{"HostIp": "", "HostPort": "3001"}]}, {"80/tcp": both_families("3001")}, name="")
    assert wanted_from_inspect(data)[0].container_name == CONTAINER_ID[:12]


# -- plan ----------------------------------------------------------------------------


def want(host_ip: str, host_port: int, guest_port: int, protocol: str = "tcp", container: str = "c1") -> WantedForward:
    return WantedForward(PortForward(protocol, host_ip, host_port, guest_port), container, container)


def test_plan_adds_what_is_missing() -> None:
    new = want("127.0.0.1", 3001, 3001)
    assert plan([new], []) == Plan(add=[new], remove=[])


def test_plan_removes_what_no_container_wants() -> None:
    stale = PortForward("tcp", "127.0.0.1", 3001, 3001)
    assert plan([], [stale]) == Plan(add=[], remove=[stale])


def test_plan_keeps_what_is_already_right() -> None:
    keep = want("127.0.0.1", 3001, 3001)
    udp = want("0.0.0.0", 5353, 5353, "udp")
    assert plan([keep, udp], [udp.forward, keep.forward]) == Plan(add=[], remove=[])


@pytest.mark.parametrize(
    "old",
    [PortForward("tcp", "127.0.0.1", 3001, 9999), PortForward("tcp", "0.0.0.0", 3001, 3001)],
    ids=["other guest port", "other host address"],
)
def test_plan_replaces_a_forward_whose_target_or_address_changed(old: PortForward) -> None:
    new = want("127.0.0.1", 3001, 3001)
    assert plan([new], [old]) == Plan(add=[new], remove=[old])


def test_plan_same_port_other_protocol_is_separate() -> None:
    tcp = PortForward("tcp", "127.0.0.1", 5353, 5353)
    udp = want("127.0.0.1", 5353, 5353, "udp")
    assert plan([udp], [tcp]) == Plan(add=[udp], remove=[tcp])


def test_plan_first_claim_on_a_host_port_wins() -> None:
    first = want("127.0.0.1", 3001, 3001, container="first")
    second = want("127.0.0.1", 3001, 3001, container="second")
    result = plan([first, second], [])
    assert result.add == [first]
    assert plan([first, second], [first.forward]) == Plan(add=[], remove=[])


def test_plan_output_is_sorted_and_complete() -> None:
    wanted = [want("127.0.0.1", p, p) for p in (3003, 3001, 3002)]
    actual = [PortForward("tcp", "127.0.0.1", p, p) for p in (4002, 3002, 4001)]
    result = plan(wanted, actual)
    assert [w.forward.host_port for w in result.add] == [3001, 3003]
    assert [f.host_port for f in result.remove] == [4001, 4002]


def test_plan_from_inspect_end_to_end() -> None:
    """A container moved from -p 3001:80 to -p 0.0.0.0:3001:80 and also publishes 53/udp."""
    before = [w.forward for w in wanted_from_inspect(BARE)]
    after = inspect(
        {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "3001"}], "53/udp": [{"HostIp": "", "HostPort": "5353"}]},
        {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "3001"}], "53/udp": both_families("5353")},
    )
    result = plan(wanted_from_inspect(after), before)
    assert result.remove == [PortForward("tcp", "127.0.0.1", 3001, 3001)]
    assert [w.forward for w in result.add] == [PortForward("tcp", "0.0.0.0", 3001, 3001), PortForward("udp", "127.0.0.1", 5353, 5353)]


class _NoUDPLoopbackOnly:
    """The watcher's view of a driver that declares neither UDP nor any-host-address."""

    name = "stub"
    features = frozenset({Feature.LOOPBACK_FORWARDS})

    def __init__(self) -> None:
        self.added: list[PortForward] = []

    def supports(self, feature: object) -> bool:
        return feature in self.features

    def docker_endpoint(self) -> object:
        from pymachine.driver import Endpoint

        return Endpoint("127.0.0.1", 2376)

    def add_forward(self, forward: PortForward) -> None:
        self.added.append(forward)


def test_the_watcher_refuses_what_the_driver_does_not_declare(tmp_path) -> None:
    from pymachine.forwarding.watcher import ForwardWatcher
    from pymachine.store import Store

    driver = _NoUDPLoopbackOnly()
    watcher = ForwardWatcher("dev", tmp_path, driver, "127.0.0.1", lambda: None, Store(tmp_path / "home"))  # type: ignore[arg-type]
    try:
        udp = WantedForward(PortForward("udp", "127.0.0.1", 5353, 53), "c1", "dns")
        wide = WantedForward(PortForward("tcp", "0.0.0.0", 8080, 8080), "c2", "web")
        fine = WantedForward(PortForward("tcp", "127.0.0.1", 8081, 8081), "c3", "api")
        for item in (udp, wide, fine):
            watcher._add(item)
    finally:
        watcher.close()
    assert driver.added == [fine.forward]
    assert watcher.failures[(udp.forward.key, "c1")].reason == "the stub driver cannot forward UDP"
    assert watcher.failures[(wide.forward.key, "c2")].reason == "the stub driver forwards on 127.0.0.1 only, not on every interface"
    assert watcher.owners[fine.forward.key].state == "active"


# -- guest listeners (pymachine.forwarding.listeners) -------------------------------------

# One snapshot as the guest script prints it: "PROTO ADDR:PORT INODE PID COMM". The
# addresses are /proc/net's, little-endian hex: 0100007F is 127.0.0.1.
SNAPSHOT = """\
tcp 00000000:0016 3101 512 dropbear
tcp6 00000000000000000000000000000000:0948 4210 640 dockerd
tcp 0100007F:8B3D 4388 655 containerd
tcp 00000000:1F90 9001 901 httpd
tcp6 00000000000000000000000000000000:1F90 9002 901 httpd
tcp 0100007F:1F91 9010 910 python3
tcp6 00000000000000000000000001000000:1F92 9020 920 node
tcp6 0000000000000000FFFF00000100007F:1F93 9030 930 java
tcp 0F02000A:1F94 9040 940 nc.openbsd
udp 00000000:0044 3200 300 udhcpc
udp 00000000:14E9 9050 950 nc.openbsd
tcp 00000000:2328 9060 - ?
tcp 00000000:1F98 9070 960 docker-proxy
""".splitlines()


def test_a_snapshot_parses_into_listeners() -> None:
    listeners = parse_snapshot(SNAPSHOT)
    by_port = {(item.protocol, item.port, item.address) for item in listeners}
    assert ("tcp", 8080, "any") in by_port
    assert ("tcp", 8081, "loopback") in by_port
    assert ("tcp", 8082, "loopback6") in by_port
    assert ("tcp", 8083, "loopback") in by_port  # ::ffff:127.0.0.1 is the IPv4 loopback
    assert ("tcp", 8084, "other") in by_port  # 10.0.2.15 only
    assert ("udp", 5353, "any") in by_port
    http = next(item for item in listeners if item.port == 8080)
    assert (http.pid, http.process) == (901, "httpd")
    orphan = next(item for item in listeners if item.port == 9000)
    assert (orphan.pid, orphan.process) == (None, "?")


def test_listeners_want_forwards_on_the_machines_forward_bind_and_never_the_guests_own() -> None:
    wanted = {w.forward.key: w for w in wanted_from_listeners(parse_snapshot(SNAPSHOT), "127.0.0.1", ListenerSettings())}
    # dropbear's 22, dockerd's 2376, containerd, udhcpc, docker-proxy (a published port): none;
    # nor 9000, which no process holds any more (a docker-proxy exiting as its container stops);
    # nor 8084, bound to one specific address of the guest's.
    assert sorted(wanted) == [("tcp", 8080), ("tcp", 8081), ("tcp", 8082), ("tcp", 8083), ("udp", 5353)]
    assert wanted[("tcp", 8080)].forward == PortForward("tcp", "127.0.0.1", 8080, 8080)
    assert wanted[("tcp", 8080)].guest_loopback is False
    assert wanted[("tcp", 8080)].container_name == "httpd (pid 901)"
    assert wanted[("tcp", 8080)].source == "listener"
    # Bound to the guest's 127.0.0.1 only: it needs the DNAT rule to 127.0.0.1.
    assert wanted[("tcp", 8081)].guest_loopback is True
    assert wanted[("tcp", 8083)].guest_loopback is True
    assert not wanted[("tcp", 8081)].guest_ipv6_only
    # Bound to the guest's ::1 only: the guest's proxy to [::1] reaches it, as for -p [::1].
    assert wanted[("tcp", 8082)].guest_ipv6_only and wanted[("tcp", 8082)].forward == PortForward("tcp", "127.0.0.1", 8082, 8082)
    assert wanted[("tcp", 8082)].container_name == "node (pid 920)"
    wide = wanted_from_listeners(parse_snapshot(SNAPSHOT), "0.0.0.0", ListenerSettings())
    assert {w.forward.host_ip for w in wide} == {"0.0.0.0"}


def test_the_guests_service_ports_are_never_listener_forwards_whoever_holds_them() -> None:
    lines = ["tcp 00000000:0016 1 77 sshd", "tcp 00000000:0948 2 78 socat", "udp 00000000:0044 3 79 dhclient"]
    assert wanted_from_listeners(parse_snapshot(lines), "127.0.0.1", ListenerSettings()) == []


def test_listener_forwarding_off_and_ignored_ports() -> None:
    listeners = parse_snapshot(SNAPSHOT)
    assert wanted_from_listeners(listeners, "127.0.0.1", ListenerSettings(enabled=False)) == []
    settings = ListenerSettings.from_config(True, ["8080", "5353/udp", "8081/udp", "not-a-port"])
    keys = {w.forward.key for w in wanted_from_listeners(listeners, "127.0.0.1", settings)}
    assert ("tcp", 8080) not in keys and ("udp", 5353) not in keys
    assert ("tcp", 8081) in keys  # only its udp side was ignored


def listener_world(tmp_path: Path, driver=None):
    directory = tmp_path / "machines" / "dev"
    directory.mkdir(parents=True)
    driver, shell = driver or RecordingDriver(), GuestShell()
    watcher = ForwardWatcher("dev", directory, driver, "127.0.0.1", lambda: shell, Store(tmp_path))  # type: ignore[arg-type]
    return watcher, driver, shell


def recorded(watcher: ForwardWatcher) -> list[tuple[str, int, str, str, str]]:
    data = json.loads((watcher.directory / STATE_FILE).read_text())
    return [(f["protocol"], f["host_port"], f["source"], f["container"], f["state"]) for f in data["forwards"]]


def test_a_listener_gets_its_forward_and_loses_it_when_it_goes(tmp_path: Path) -> None:
    watcher, driver, shell = listener_world(tmp_path)
    try:
        up = parse_snapshot(["tcp 00000000:1F90 1 901 httpd", "tcp 0100007F:1F91 2 910 python3"])
        apply_listener_forwards(watcher, wanted_from_listeners(up, "127.0.0.1", ListenerSettings()))
        assert set(driver.forwards) == {PortForward("tcp", "127.0.0.1", 8080, 8080), PortForward("tcp", "127.0.0.1", 8081, 8081)}
        assert recorded(watcher) == [("tcp", 8080, "listener", "httpd (pid 901)", "active"), ("tcp", 8081, "listener", "python3 (pid 910)", "active")]
        # The loopback-only one is reached through the DNAT rule; the other needs none.
        assert "--dport 8081 -j DNAT --to-destination 127.0.0.1:8081" in shell.scripts[-1]
        assert "--dport 8080 " not in shell.scripts[-1]
        apply_listener_forwards(watcher, wanted_from_listeners(up[:1], "127.0.0.1", ListenerSettings()))
        assert set(driver.forwards) == {PortForward("tcp", "127.0.0.1", 8080, 8080)}
        assert "8081" not in shell.scripts[-1]
        apply_listener_forwards(watcher, [])
        assert driver.forwards == set()
        assert recorded(watcher) == []
    finally:
        watcher.close()


def test_a_published_port_wins_over_a_listener_and_the_listener_comes_back_after(tmp_path: Path) -> None:
    from .fakes.watcher import PORT

    watcher, driver, _ = listener_world(tmp_path)
    try:
        listener = wanted_from_listeners(parse_snapshot([f"tcp 00000000:{PORT:04X} 1 901 httpd"]), "127.0.0.1", ListenerSettings())
        apply_listener_forwards(watcher, listener)
        assert recorded(watcher) == [("tcp", PORT, "listener", "httpd (pid 901)", "active")]
        web = container("a" * 64, "web", "", 100)
        watcher.api = FakeDockerAPI({"a" * 64: web})  # type: ignore[assignment]
        watcher._apply_container("a" * 64, wanted_from_inspect(web))
        watcher._save()
        assert recorded(watcher) == [("tcp", PORT, "container", "web", "active")]
        # The scan keeps reporting the listener: the published port stays the owner, no failure.
        apply_listener_forwards(watcher, listener)
        assert recorded(watcher) == [("tcp", PORT, "container", "web", "active")]
        watcher.reconcile()
        assert recorded(watcher) == [("tcp", PORT, "container", "web", "active")]
        watcher._remove_container("a" * 64)
        watcher._save()
        assert recorded(watcher) == [("tcp", PORT, "listener", "httpd (pid 901)", "active")]
        assert driver.list_forwards() == [PortForward("tcp", "127.0.0.1", PORT, PORT)]
    finally:
        watcher.close()


def test_reconcile_keeps_the_listeners_forwards(tmp_path: Path) -> None:
    watcher, driver, _ = listener_world(tmp_path)
    try:
        watcher.api = FakeDockerAPI({})  # type: ignore[assignment]
        apply_listener_forwards(watcher, wanted_from_listeners(parse_snapshot(["udp 00000000:14E9 1 950 nc.openbsd"]), "127.0.0.1", ListenerSettings()))
        calls = len(driver.calls)
        watcher.reconcile()
        assert driver.calls[calls:] == [], "reconcile touched a listener's forward"
        assert recorded(watcher) == [("udp", 5353, "listener", "nc.openbsd (pid 950)", "active")]
    finally:
        watcher.close()


def test_a_listener_whose_host_port_is_taken_is_a_failure_with_the_reason(tmp_path: Path) -> None:
    watcher, driver, _ = listener_world(tmp_path)
    try:
        driver.busy.add(8080)
        apply_listener_forwards(watcher, wanted_from_listeners(parse_snapshot(["tcp 00000000:1F90 1 901 httpd"]), "127.0.0.1", ListenerSettings()))
        data = json.loads((watcher.directory / STATE_FILE).read_text())["forwards"]
        assert [(f["state"], f["source"]) for f in data] == [("failed", "listener")]
        assert "in use" in data[0]["reason"]
        apply_listener_forwards(watcher, [])
        assert recorded(watcher) == []
    finally:
        watcher.close()


@pytest.mark.parametrize("kind", ["virtualbox-vboxmanage", "virtualbox-api", "parallels"])
def test_listener_forwards_through_the_virtualbox_and_parallels_fakes(tmp_path: Path, kind: str) -> None:
    from .fake_harnesses import parallels_driver, virtualbox_driver

    if kind == "parallels":
        driver, _ = parallels_driver(tmp_path)
    else:
        driver, _ = virtualbox_driver(tmp_path, kind.split("-", 1)[1])
    driver.create()
    driver.start()
    try:
        watcher, _, shell = listener_world(tmp_path / "store", driver)
        before = set(driver.list_forwards())
        snapshot = parse_snapshot(["tcp 00000000:1F90 1 901 httpd", "tcp 0100007F:1F91 2 910 python3"])
        apply_listener_forwards(watcher, wanted_from_listeners(snapshot, "127.0.0.1", ListenerSettings()))
        added = set(driver.list_forwards()) - before
        if kind == "parallels":
            # Parallels' rules listen on every interface: each goes on an unpublished port,
            # and the watcher's relays hold 127.0.0.1 and ::1 (pymachine.forwarding.relay)
            assert {(f.guest_port, f.host_port in (8080, 8081)) for f in added} == {(8080, False), (8081, False)}
        else:
            assert added == {PortForward("tcp", "127.0.0.1", 8080, 8080), PortForward("tcp", "127.0.0.1", 8081, 8081)}
        assert "--to-destination 127.0.0.1:8081" in shell.scripts[-1]
        apply_listener_forwards(watcher, [])
        assert set(driver.list_forwards()) == before
        watcher.close()
    finally:
        driver.kill()


class ScriptChannel:
    """The SSH channel the guest script runs on: a socket pair, so select() works on it."""

    def __init__(self) -> None:
        self.ours, self.guest = socket.socketpair()
        self.command = ""

    def exec_command(self, command: str) -> None:
        self.command = command

    def shutdown_write(self) -> None:
        pass

    def fileno(self) -> int:
        return self.ours.fileno()

    def recv(self, size: int) -> bytes:
        return self.ours.recv(size)

    def close(self) -> None:
        self.ours.close()


class ScriptSSH:
    def __init__(self, channel: ScriptChannel) -> None:
        self.channel = channel

    def session(self) -> ScriptChannel:
        return self.channel

    def close(self) -> None:
        pass


def wait_until(condition, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


def test_the_scanner_applies_each_snapshot_and_follows_the_settings() -> None:
    channel = ScriptChannel()
    applied: list[list] = []
    seen: list[list] = []
    settings = {"value": ListenerSettings()}
    scanner = ListenerScanner(lambda: ScriptSSH(channel), applied.append, lambda: settings["value"], "127.0.0.1", seen=seen.append)
    scanner.start()
    try:
        channel.guest.sendall(b"tcp 00000000:1F90 1 901 httpd\n")
        channel.guest.sendall(b"tcp 0F02000A:1F91 2 902 docker-proxy\n")
        channel.guest.sendall(b".\n")  # the snapshot ends: it is applied at once
        assert wait_until(lambda: len(applied) == 1)
        assert channel.command == GUEST_SCRIPT
        assert [w.forward.host_port for w in applied[0]] == [8080]
        # The watcher sees the snapshot whole, its own proxies too (guest_proxies_seen).
        assert wait_until(lambda: len(seen) == 1) and {item.process for item in seen[0]} == {"httpd", "docker-proxy"}
        channel.guest.sendall(b".\n")  # the listener went: an empty snapshot
        assert wait_until(lambda: len(applied) == 2)
        assert applied[1] == []
        channel.guest.sendall(b"tcp 00000000:1F90 1 901 httpd\n.\n")
        assert wait_until(lambda: len(applied) == 3)
        settings["value"] = ListenerSettings(ignored=frozenset({("tcp", 8080)}))
        assert wait_until(lambda: len(applied) == 4, timeout=3)  # the settings are asked again each second
        assert applied[3] == []
        settings["value"] = ListenerSettings(enabled=False)
        assert wait_until(lambda: len(applied) >= 5, timeout=3)
        assert applied[4] == []
    finally:
        scanner.stop()
        channel.guest.close()
        assert scanner.thread is not None
        scanner.thread.join(timeout=5)
        assert not scanner.thread.is_alive()


def guest_busybox(tmp_path: Path) -> Path:
    """A bin folder of the boot image's own busybox (the guest's sh, awk, ls, sort, usleep)."""
    from .conftest import image_cache

    busybox = image_cache() / "image-work" / "amd64" / "tree" / "busybox-static" / "usr" / "bin" / "busybox"
    if not busybox.exists() or platform.machine() != "x86_64":
        pytest.skip(f"the boot image's busybox is not unpacked in {image_cache()} (`pymachine image build`)")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for applet in ("sh", "awk", "sort", "ls", "usleep", "cat"):
        (bin_dir / applet).symlink_to(busybox)
    return bin_dir


def next_snapshot(stream) -> list[str]:
    lines = []
    for line in stream:
        if line.strip() == ".":
            return lines
        lines.append(line.strip())
    raise AssertionError("the script ended")


def test_the_guest_script_under_the_guests_busybox_sees_listeners_come_and_go(tmp_path: Path) -> None:
    """The script as the guest runs it (its busybox), on this host's socket tables."""
    bin_dir = guest_busybox(tmp_path)
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen()
    udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    udp.bind(("::", 0))
    ports = {("tcp", tcp.getsockname()[1]), ("udp", udp.getsockname()[1])}
    script = subprocess.Popen([str(bin_dir / "sh"), "-c", GUEST_SCRIPT], stdout=subprocess.PIPE, text=True, env={"PATH": str(bin_dir)})
    try:
        assert script.stdout is not None
        first = [item for item in parse_snapshot(next_snapshot(script.stdout)) if (item.protocol, item.port) in ports]
        assert {(item.protocol, item.port, item.address, item.pid) for item in first} == {
            ("tcp", tcp.getsockname()[1], "loopback", os.getpid()),
            ("udp", udp.getsockname()[1], "any", os.getpid()),
        }
        assert all(item.process.startswith("python") for item in first)
        tcp.close()
        started = time.monotonic()
        second = [item for item in parse_snapshot(next_snapshot(script.stdout)) if (item.protocol, item.port) in ports]
        assert [(item.protocol, item.port) for item in second] == [("udp", udp.getsockname()[1])]
        assert time.monotonic() - started < 1.0, "the change took a second or more to show"
    finally:
        script.kill()
        script.wait()
        udp.close()


def test_the_guest_script_ends_when_its_session_does(tmp_path: Path) -> None:
    """Run by a parent (dropbear's session) that dies: the loop ends within a moment."""
    bin_dir = guest_busybox(tmp_path)
    parent = subprocess.Popen(
        [str(bin_dir / "sh"), "-c", 'sh -c "$S" >/dev/null & echo $!; wait'], stdout=subprocess.PIPE, text=True, env={"PATH": str(bin_dir), "S": GUEST_SCRIPT}
    )
    assert parent.stdout is not None
    loop = int(parent.stdout.readline())
    time.sleep(0.5)
    assert Path(f"/proc/{loop}").exists()
    parent.kill()
    parent.wait()

    def ended() -> bool:
        try:
            return Path(f"/proc/{loop}/stat").read_text().split()[2] == "Z"
        except OSError:
            return True

    try:
        assert wait_until(ended, timeout=3), "the guest's scan outlived its SSH session"
    finally:
        if not ended():
            os.kill(loop, 9)


def test_an_old_config_gets_listener_forwarding_on_and_no_ignored_ports(tmp_path: Path) -> None:
    store = Store(tmp_path)
    with store.reserve(MachineConfig(name="dev", driver="qemu")):
        pass
    path = store.config_path("dev")
    data = json.loads(path.read_text())
    del data["listener_forwarding"], data["ignore_ports"]
    path.write_text(json.dumps(data))
    config = store.load("dev")
    assert config.listener_forwarding is True and config.ignore_ports == []


def test_ports_turns_listeners_off_and_ignores_ports_in_the_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], restored_logging) -> None:
    from pymachine.cli.main import run_cli

    root = tmp_path / "home"
    monkeypatch.setenv("PYMACHINE_STORAGE_PATH", str(root))
    store = Store(root)
    with store.reserve(MachineConfig(name="dev", driver="qemu", status="ready")):
        pass
    assert run_cli(["ports", "dev", "--listeners", "off", "--ignore", "8080", "--ignore", "53/UDP"]) == 0
    config = store.load("dev")
    assert config.listener_forwarding is False and config.ignore_ports == ["8080", "53/udp"]
    assert run_cli(["ports", "dev", "--listeners", "on", "--unignore", "8080"]) == 0
    config = store.load("dev")
    assert config.listener_forwarding is True and config.ignore_ports == ["53/udp"]
    capsys.readouterr()
    before = path_bytes = store.config_path("dev").read_bytes()
    assert run_cli(["ports", "dev", "--ignore", "http"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "Error: --ignore takes PORT, PORT/tcp or PORT/udp (1-65535), not 'http'. Run `pymachine ports --help`"
    assert store.config_path("dev").read_bytes() == before == path_bytes
    assert run_cli(["ports", "dev", "--listeners", "maybe"]) == 1
    assert capsys.readouterr().err.strip() == "Error: --listeners takes on or off, not 'maybe'. Run `pymachine ports --help`"


def test_ports_shows_where_each_forward_came_from(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], restored_logging) -> None:
    from pymachine.cli.main import run_cli

    root = tmp_path / "home"
    monkeypatch.setenv("PYMACHINE_STORAGE_PATH", str(root))
    store = Store(root)
    with store.reserve(MachineConfig(name="dev", driver="qemu", status="ready")):
        pass
    rows = [
        {"protocol": "tcp", "host_ip": "127.0.0.1", "host_port": 8080, "guest_port": 8080, "container": "web", "container_id": "a" * 64, "source": "container", "state": "failed", "reason": "x"},
        {"protocol": "tcp", "host_ip": "127.0.0.1", "host_port": 9000, "guest_port": 9000, "container": "python3 (pid 42)", "container_id": "listener:tcp/9000", "source": "listener", "state": "failed", "reason": "y"},
    ]
    (store.machine_dir("dev") / STATE_FILE).write_text(json.dumps({"watcher": {}, "forwards": rows}))
    assert run_cli(["ports", "dev"]) == 0
    out = capsys.readouterr().out
    assert "FROM" in out.splitlines()[0]
    assert "container web" in out and "listener python3 (pid 42)" in out


def test_create_refuses_a_bad_ignore_port_before_anything_is_made(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], restored_logging) -> None:
    from pymachine.cli.main import run_cli

    root = tmp_path / "home"
    monkeypatch.setenv("PYMACHINE_STORAGE_PATH", str(root))
    monkeypatch.setenv("PYMACHINE_CACHE_PATH", str(tmp_path / "empty-cache"))
    assert run_cli(["create", "dev", "--ignore-port", "70000/tcp"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == "Error: --ignore-port takes PORT, PORT/tcp or PORT/udp (1-65535), not '70000/tcp'. Run `pymachine create --help`"
    assert not (root / "machines" / "dev").exists()

# -- relays: the host addresses a hypervisor cannot listen on (forwarding/relay.py) ----------


class _LoopbackHypervisor:
    """A driver whose forwards are real listeners, as QEMU's are: each forward is a TCP echo
    server (or UDP echo socket) on its own host address and port, standing in for the guest."""

    name = "loopback"

    def __init__(self, loopback_only: bool = True) -> None:
        import socket
        import threading

        self.socket, self.threading = socket, threading
        self.features = frozenset({Feature.RUNTIME_FORWARDS, Feature.UDP_FORWARDS, Feature.ANY_HOST_ADDRESS} | ({Feature.LOOPBACK_FORWARDS} if loopback_only else set()))
        self.servers: dict[PortForward, Any] = {}
        self.added: list[PortForward] = []

    def supports(self, feature: object) -> bool:
        return feature in self.features

    def docker_endpoint(self) -> object:
        from pymachine.driver import Endpoint

        return Endpoint("127.0.0.1", 2376)

    def add_forward(self, forward: PortForward) -> None:
        socket = self.socket
        kind = socket.SOCK_STREAM if forward.protocol == "tcp" else socket.SOCK_DGRAM
        # Without loopback-forwards the hypervisor binds every interface, as Parallels does.
        address = forward.host_ip if Feature.LOOPBACK_FORWARDS in self.features else "0.0.0.0"
        sock = socket.socket(socket.AF_INET, kind)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, forward.host_port))
        if forward.protocol == "tcp":
            sock.listen(16)
        self.servers[forward] = sock
        self.added.append(forward)
        self.threading.Thread(target=self._echo, args=(sock, forward.protocol, f"guest:{forward.guest_port}:".encode()), daemon=True).start()

    @staticmethod
    def _echo(sock: Any, protocol: str, tag: bytes) -> None:
        try:
            if protocol == "udp":
                while True:
                    data, addr = sock.recvfrom(65536)
                    sock.sendto(tag + data, addr)
            while True:
                conn, _ = sock.accept()
                with conn:
                    conn.sendall(tag)
                    while chunk := conn.recv(65536):
                        conn.sendall(chunk)
        except OSError:
            return

    def remove_forward(self, forward: PortForward) -> None:
        sock = self.servers.pop(forward, None)
        if sock is not None:
            sock.shutdown(self.socket.SHUT_RDWR) if forward.protocol == "tcp" else None
            sock.close()

    def list_forwards(self) -> list[PortForward]:
        return sorted(self.servers)

    def close(self) -> None:
        for forward in list(self.servers):
            self.remove_forward(forward)


def _port(protocol: str = "tcp") -> int:
    from pymachine.forwarding.relay import free_port

    return free_port(protocol)


def _talk(ip: str, port: int, payload: bytes = b"hello") -> bytes:
    """Connect, read the greeting, send payload, half-close, read to the end."""
    import socket

    with socket.create_connection((ip, port), timeout=5) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


def _refused(ip: str, port: int) -> bool:
    import socket

    try:
        socket.create_connection((ip, port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.fixture
def relaying():
    from pymachine.forwarding.relay import RelayingDriver, ipv6_available

    if not ipv6_available():
        pytest.skip("this host cannot bind ::1")
    made: list[tuple[RelayingDriver, _LoopbackHypervisor]] = []

    def make(loopback_only: bool = True) -> tuple[RelayingDriver, _LoopbackHypervisor]:
        hypervisor = _LoopbackHypervisor(loopback_only)
        made.append((RelayingDriver(hypervisor), hypervisor))  # type: ignore[arg-type]
        return made[-1]

    yield make
    for driver, hypervisor in made:
        driver.stop_relays()
        hypervisor.close()


def test_a_loopback_forward_answers_on_both_loopbacks_and_goes_from_both(relaying) -> None:
    driver, hypervisor = relaying()
    port = _port()
    forward = PortForward("tcp", "127.0.0.1", port, 80)
    driver.add_forward(forward)
    assert hypervisor.added == [forward], "the hypervisor forward is the one asked for"
    big = bytes(range(256)) * 8192  # 2 MiB, both ways, with a half-close
    assert _talk("127.0.0.1", port, big) == b"guest:80:" + big
    assert _talk("::1", port, big) == b"guest:80:" + big
    assert driver.list_forwards() == [forward]
    driver.remove_forward(forward)
    assert _refused("::1", port) and _refused("127.0.0.1", port)
    assert driver.list_forwards() == []


def test_ipv6_loopback_alone_gets_a_hidden_hypervisor_port(relaying) -> None:
    driver, hypervisor = relaying()
    port = _port()
    forward = PortForward("tcp", "::1", port, 80)
    driver.add_forward(forward)
    [hidden] = hypervisor.added
    assert hidden.host_ip == "127.0.0.1" and hidden.host_port != port and hidden.guest_port == 80
    assert _talk("::1", port) == b"guest:80:hello"
    assert _refused("127.0.0.1", port), "-p [::1] must not answer on 127.0.0.1"
    assert driver.list_forwards() == [forward], "the hidden port shows as the forward it carries"
    driver.remove_forward(forward)
    assert _refused("::1", port) and hypervisor.list_forwards() == []


def test_every_interface_answers_on_ipv6_any_too(relaying) -> None:
    import socket

    driver, hypervisor = relaying()
    port = _port()
    forward = PortForward("tcp", "0.0.0.0", port, 80)
    driver.add_forward(forward)
    assert hypervisor.added == [forward]
    assert _talk("::1", port) == b"guest:80:hello"  # [::] includes ::1
    assert driver.listening(forward) == [f"[::]:{port}"]
    # The relay is IPv6 only: the hypervisor's 0.0.0.0 socket keeps IPv4.
    with socket.socket(socket.AF_INET6) as probe:
        probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        with pytest.raises(OSError):
            probe.bind(("::", port))
    driver.remove_forward(forward)
    assert _refused("::1", port)


def test_udp_is_relayed_per_client_address(relaying) -> None:
    import socket

    driver, _ = relaying()
    port = _port("udp")
    driver.add_forward(PortForward("udp", "127.0.0.1", port, 53))
    clients = [socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) for _ in range(2)]
    try:
        for number, client in enumerate(clients):
            client.settimeout(5)
            client.sendto(f"q{number}".encode(), ("::1", port))
        for number, client in enumerate(clients):
            assert client.recv(100) == f"guest:53:q{number}".encode(), "each client gets its own answers"
    finally:
        for client in clients:
            client.close()
    driver.remove_forward(PortForward("udp", "127.0.0.1", port, 53))


def test_without_loopback_forwards_the_hypervisor_port_is_hidden_and_loopback_is_ours(relaying) -> None:
    """Parallels' case: its rules listen on every interface, so they get a port nobody is
    told about and 127.0.0.1:H and [::1]:H are the relay's."""
    import socket

    driver, hypervisor = relaying(loopback_only=False)
    port = _port()
    forward = PortForward("tcp", "127.0.0.1", port, 80)
    driver.add_forward(forward)
    [hidden] = hypervisor.added
    assert hidden.host_port != port
    assert _talk("127.0.0.1", port) == b"guest:80:hello" and _talk("::1", port) == b"guest:80:hello"
    assert sorted(driver.listening(forward)) == sorted([f"127.0.0.1:{port}", f"[::1]:{port}"])
    # Nothing listens on H beyond loopback: every-interface binds of H are still free
    # apart from 127.0.0.1 (on Linux, 0.0.0.0:H conflicts with a 127.0.0.1:H listener,
    # so try another of the host's own addresses when it has one).
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.2", port))  # another loopback address: H is not held there
    driver.remove_forward(forward)
    assert _refused("127.0.0.1", port) and hypervisor.list_forwards() == []


def test_a_taken_ipv6_port_fails_the_forward_it_was_asked_for_and_touches_no_hypervisor(relaying) -> None:
    import socket

    from pymachine.errors import PortUnavailable

    driver, hypervisor = relaying()
    port = _port()
    with socket.socket(socket.AF_INET6) as squatter:
        squatter.bind(("::1", port))
        squatter.listen(1)
        with pytest.raises(PortUnavailable) as caught:
            driver.add_forward(PortForward("tcp", "::1", port, 80))
        assert f"[::1]:{port}/tcp is in use" in str(caught.value) and "pymachine ports" in str(caught.value)
        assert hypervisor.added == []
        # A loopback forward still gets 127.0.0.1: ::1 beside it is best effort.
        driver.add_forward(PortForward("tcp", "127.0.0.1", port, 80))
        assert _talk("127.0.0.1", port) == b"guest:80:hello"
    assert driver.listening(PortForward("tcp", "127.0.0.1", port, 80)) == []


def test_a_forward_left_by_an_earlier_watcher_shows_as_it_is(relaying) -> None:
    """A hidden port a crashed watcher left behind is unknown to the new one: it shows raw,
    so reconciling removes it and makes the forward again."""
    driver, hypervisor = relaying()
    stale = PortForward("tcp", "127.0.0.1", _port(), 80)
    hypervisor.add_forward(stale)
    assert driver.list_forwards() == [stale]
    driver.remove_forward(stale)
    assert hypervisor.list_forwards() == []


def test_pymachine_drivers_says_where_each_drivers_forwards_answer(tmp_path) -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    program = Path(sys.executable).parent / "pymachine"
    done = subprocess.run([str(program), "drivers"], capture_output=True, text=True, timeout=60, check=False, env={**os.environ, "PYMACHINE_STORAGE_PATH": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    said = {lines[i].split(":")[0]: lines[i + 1] for i, line in enumerate(lines) if not line.startswith(" ") and i + 1 < len(lines)}
    for name in ("qemu", "virtualbox"):
        assert "127.0.0.1:H by the hypervisor and [::1]:H by pymachine's relay" in said[name]
    assert "127.0.0.1:H and [::1]:H by pymachine's relay, to a hypervisor port that is never published" in said["parallels"]
    assert all("[::]:H by the relay" in said[name] for name in ("qemu", "virtualbox", "parallels"))
    options = [line for line in lines if line.startswith("  -o ")]
    assert options and all(line.count("(default:") == 1 for line in options), "each option states its default once"


def test_a_taken_ipv6_loopback_port_is_failed_with_the_reason(tmp_path) -> None:
    import socket

    from pymachine.forwarding.watcher import ForwardWatcher
    from pymachine.store import Store

    driver = _LoopbackHypervisor()
    watcher = ForwardWatcher("dev", tmp_path, driver, "127.0.0.1", lambda: None, Store(tmp_path / "home"))  # type: ignore[arg-type]
    port = _port()
    try:
        with socket.socket(socket.AF_INET6) as squatter:
            squatter.bind(("::1", port))
            squatter.listen(1)
            item = WantedForward(PortForward("tcp", "::1", port, 80), "c1", "v6")
            watcher._add(item)
        assert watcher.failures[(item.forward.key, "c1")].reason == f"host port ::1:{port}/tcp is in use on this host"
        assert driver.added == []
    finally:
        watcher.close()
        driver.close()


def test_ports_sees_a_relayed_forward_by_its_hypervisor_port(relaying) -> None:
    """`pymachine ports` checks each active forward against the hypervisor's list: a
    -p [::1] forward is there under its unpublished port, which the watcher records."""
    from pymachine.driver import State
    from pymachine.forwarding.process import check_active

    driver, hypervisor = relaying()
    port = _port()
    forward = PortForward("tcp", "::1", port, 80)
    driver.add_forward(forward)
    hypervisor.state = lambda: State.RUNNING  # type: ignore[attr-defined]
    row = {"protocol": "tcp", "host_ip": "::1", "host_port": port, "guest_port": 80, "state": "active", "reason": "", "hypervisor_port": driver.hypervisor_port(forward)}
    assert row["hypervisor_port"] != port
    rows = [dict(row)]
    check_active(rows, hypervisor)  # type: ignore[arg-type]
    assert (rows[0]["state"], rows[0]["reason"]) == ("active", "")
    driver.remove_forward(forward)
    rows = [dict(row)]
    check_active(rows, hypervisor)  # type: ignore[arg-type]
    assert rows[0]["state"] == "inactive" and "no such forward" in rows[0]["reason"]
