"""From a container's inspect data to the host forwards it wants, and what to change.

Binding rules (docs/port-forwarding.md):
    -p 127.0.0.1:H:C   host 127.0.0.1:H    (the user asked for loopback)
    -p 0.0.0.0:H:C     host 0.0.0.0:H      (the user asked for every interface)
    -p H:C, -P         host <forward_bind>:H, 127.0.0.1 unless the machine says 0.0.0.0
    -p [::1]:H:C       host ::1:H only (a relay, relay.py); the guest binds its ::1 only
A loopback forward answers on ::1 too, and one on 0.0.0.0 on [::] too (the relays again).
The guest side is always the port Docker bound in the guest (H), on the guest's address.
A port bound to the guest's loopback only needs more in the guest, because the hypervisor's
NAT delivers IPv4 to the guest's own address: for 127.0.0.1 a DNAT rule to 127.0.0.1:H, for
::1 (which DNAT cannot reach from IPv4) a docker-proxy from the guest's address:H to [::1]:H.
The watcher keeps both (ForwardWatcher._sync_loopback).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pymachine.driver import PortForward

LOOPBACK_GUEST = ("127.0.0.1", "::1")
ANY_GUEST = ("0.0.0.0", "::")
#: -p [::1]:H:C asks for the host's IPv6 loopback, which no hypervisor can forward (QEMU's
#: user network takes IPv4 host addresses only): it is kept as asked, and the watcher's
#: relay listens on [::1]:H alone, never on 127.0.0.1:H, towards a hidden hypervisor port.
IPV6_LOOPBACK = "::1"


@dataclass(frozen=True)
class WantedForward:
    """A forward a running container wants, with where it came from."""

    forward: PortForward
    container_id: str
    container_name: str
    #: the guest side binds loopback only: the guest needs a DNAT rule to reach it
    guest_loopback: bool = False
    #: "container" (a port Docker published) or "listener" (pymachine.forwarding.listeners)
    source: str = "container"
    #: a guest listener on ::1 alone (a published port says so by its host address, ::1)
    guest_ipv6: bool = False

    @property
    def guest_ipv6_only(self) -> bool:
        """The guest side listens on its ::1 alone (Docker's for -p [::1]:H:C, or a guest
        program's): IPv4 from the NAT needs a proxy in the guest to reach it (a DNAT rule
        cannot turn IPv4 into IPv6)."""
        return self.guest_loopback and (self.guest_ipv6 or self.forward.host_ip == IPV6_LOOPBACK)


def _host_ip(requested: str | None, forward_bind: str) -> str:
    if requested in (None, ""):
        return forward_bind
    if requested in ("0.0.0.0", "::"):
        return "0.0.0.0"
    if requested == IPV6_LOOPBACK:
        return IPV6_LOOPBACK
    return "127.0.0.1"


def wanted_from_inspect(data: dict[str, Any], forward_bind: str = "127.0.0.1") -> list[WantedForward]:
    """The forwards a container wants, from `GET /containers/{id}/json`.

    NetworkSettings.Ports holds the ports Docker really bound (random ones included,
    after start); HostConfig.PortBindings holds what the user asked for, which tells a
    bare `-p H:C` (HostIp "") from an explicit `-p 0.0.0.0:H:C`. Before start, only
    the bindings are known, and only those with a fixed host port are returned.
    """
    container_id = data.get("Id", "")
    name = (data.get("Name") or "").lstrip("/") or container_id[:12]
    requested = (data.get("HostConfig") or {}).get("PortBindings") or {}
    actual = (data.get("NetworkSettings") or {}).get("Ports") or {}
    source = actual if actual else requested
    found: dict[tuple[str, int], WantedForward] = {}
    for port_proto, bindings in sorted(source.items()):
        if not bindings or "/" not in port_proto:
            continue
        protocol = port_proto.split("/", 1)[1]
        if protocol not in ("tcp", "udp"):
            continue
        asked = requested.get(port_proto) or []
        for binding in bindings:
            host_port = str(binding.get("HostPort") or "")
            if not host_port.isdigit():
                continue
            guest_ip = binding.get("HostIp") or ""
            asked_ip = _asked_ip(asked, host_port, guest_ip)
            forward = PortForward(protocol, _host_ip(asked_ip, forward_bind), int(host_port), int(host_port))
            key = forward.key
            loopback = guest_ip in LOOPBACK_GUEST
            if key in found:
                if forward.host_ip == IPV6_LOOPBACK and found[key].forward.host_ip != IPV6_LOOPBACK:
                    continue  # -p 127.0.0.1:H:C -p [::1]:H:C: the IPv4 one is the forward
                if found[key].forward.host_ip != IPV6_LOOPBACK:
                    # "0.0.0.0" and "::" for one port: one forward; any non-loopback wins.
                    loopback = loopback and found[key].guest_loopback
            found[key] = WantedForward(forward, container_id, name, loopback)
    return [found[k] for k in sorted(found)]


def _asked_ip(asked: list[dict[str, Any]], host_port: str, guest_ip: str) -> str | None:
    """The HostIp the user gave for this port, or None when they gave none (-P, bare -p)."""
    matching = [b for b in asked if str(b.get("HostPort") or "") == host_port or _in_range(host_port, str(b.get("HostPort") or ""))]
    # One port asked for on two addresses (-p 127.0.0.1:H:C -p [::1]:H:C): this binding's own.
    for binding in matching:
        if (binding.get("HostIp") or "") == guest_ip:
            return guest_ip
    for binding in matching:
        return binding.get("HostIp") or ""
    # A random port (-p IP::C): only the binding made for that address, so that
    # `-p 0.0.0.0::80 -p 3001:80` does not widen 3001 to every interface.
    for binding in asked:
        ip = binding.get("HostIp") or ""
        if not binding.get("HostPort") and ip and (ip == guest_ip or (ip in ANY_GUEST and guest_ip in ANY_GUEST)):
            return ip
    if guest_ip in LOOPBACK_GUEST:
        return guest_ip
    return None


def _in_range(port: str, spec: str) -> bool:
    low, sep, high = spec.partition("-")
    return bool(sep) and low.isdigit() and high.isdigit() and int(low) <= int(port) <= int(high)


@dataclass(frozen=True)
class Plan:
    """What reconciling changes: forwards to add and to remove."""

    add: list[WantedForward]
    remove: list[PortForward]


def plan(wanted: Iterable[WantedForward], actual: Iterable[PortForward]) -> Plan:
    """Diff desired against actual. A forward whose target or address changed is replaced."""
    desired: dict[tuple[str, int], WantedForward] = {}
    for item in wanted:
        desired.setdefault(item.forward.key, item)
    current = {f.key: f for f in actual}
    remove = [f for key, f in sorted(current.items()) if key not in desired or desired[key].forward != f]
    add = [w for key, w in sorted(desired.items()) if key not in current or current[key] != w.forward]
    return Plan(add, remove)
