"""Host-side relays: the host addresses a hypervisor's own forwards cannot listen on.

QEMU's user network takes IPv4 host addresses only ("Invalid host forwarding rule
'tcp:[::1]:5555-:22' (Bad host address)"), VirtualBox's and Parallels' NAT rules are
IPv4 too, and Parallels' rules listen on every host interface. So the watcher wraps its
driver in a `RelayingDriver`, which makes each forward out of a hypervisor forward and
listeners of pymachine's own that relay to it:

    asked (plan.py)   hypervisor forward                 pymachine listens on
    127.0.0.1:H       127.0.0.1:H                        [::1]:H            (QEMU, VirtualBox)
    127.0.0.1:H       P, unpublished (every interface)   127.0.0.1:H, [::1]:H   (Parallels)
    ::1:H             127.0.0.1:P, unpublished           [::1]:H
    0.0.0.0:H         0.0.0.0:H                          [::]:H (IPv6 only)

P is a free port picked when the forward is added. A ::1:H forward's guest side is the
guest's ::1 alone (Docker binds only that for -p [::1]:H:C), which the NAT's IPv4 cannot
reach: the watcher runs a docker-proxy in the guest for it (watcher.loopback_script).

The relays start and stop with their forward, in the same call, so they come and go within
the same milliseconds. A relay on an address the forward was not asked for (::1 beside
127.0.0.1, [::] beside 0.0.0.0) is best effort: a host without IPv6, or a port taken on
::1 alone, is logged and the forward stays.

All relays of one watcher run on one asyncio loop in one thread. TCP is spliced with
transports and flow control (reading from one side pauses while the other side's buffer is
full); UDP keeps one connected socket per client address, dropped after UDP_IDLE seconds.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pymachine.driver import LARGE_FRAME_MTU, Driver, Feature, PortForward
from pymachine.errors import PortUnavailable

log = logging.getLogger("pymachine.relay")

#: seconds a UDP client address keeps its socket towards the forward without traffic
UDP_IDLE = 120.0
#: bytes read at once, and buffered towards a slow side before reading pauses
CHUNK = 256 * 1024
HIGH_WATER = 4 * 1024 * 1024


def ipv6_available() -> bool:
    """True when this host can bind the IPv6 loopback (not the case with IPv6 turned off)."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def bind_listener(protocol: str, ip: str, port: int) -> socket.socket:
    """A socket bound (and listening, for TCP) on ip:port; IPv6 sockets take IPv6 only, so
    [::]:H sits beside a hypervisor's 0.0.0.0:H. Raises OSError as bind() does."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
    sock = socket.socket(family, kind)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if protocol == "tcp":
            # As the hypervisors do: a port in TIME_WAIT is free (no second listener on Linux or macOS).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((ip, port))
        if protocol == "tcp":
            sock.listen(512)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def free_port(protocol: str, ip: str = "0.0.0.0") -> int:
    """A port the kernel says is free on ip now (for the unpublished hypervisor side)."""
    kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((ip, 0))
        return int(sock.getsockname()[1])


# -- TCP ---------------------------------------------------------------------------------


class _Splice(asyncio.Protocol):
    """One side of a relayed TCP connection; `peer` is the other side."""

    def __init__(self, listener: _Listener) -> None:
        self.listener = listener
        self.transport: asyncio.Transport | None = None
        self.peer: _Splice | None = None
        self.early: list[bytes] = []
        self.eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=HIGH_WATER)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.listener.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(data)
        else:
            self.early.append(data)

    def eof_received(self) -> bool:
        self.eof = True
        peer = self.peer
        if peer is None or peer.transport is None:
            return True  # the far side is still connecting: sent once it is there
        if peer.eof:
            return False  # both sides done: close
        if peer.transport.can_write_eof():
            peer.transport.write_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.listener.connections.discard(self)
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()

    # The other side's buffer is full: stop reading this one until it drains.
    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class _Client(_Splice):
    """The side a host client connected to: connects onwards to the forward first."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert self.transport is not None
        self.transport.pause_reading()
        self.listener.tasks.add(asyncio.ensure_future(self._connect()))

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        host, port = self.listener.target
        try:
            _, upstream = await loop.create_connection(lambda: _Splice(self.listener), host, port)
        except OSError:
            # Nothing behind the forward: the client sees a reset, as without the relay.
            if self.transport is not None:
                sock = self.transport.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                self.transport.abort()
            return
        assert isinstance(upstream, _Splice)
        self.peer, upstream.peer = upstream, self
        if self.transport is None or self.transport.is_closing():
            upstream.transport.close() if upstream.transport is not None else None
            return
        for chunk in self.early:
            upstream.transport.write(chunk) if upstream.transport is not None else None
        self.early = []
        if self.eof and upstream.transport is not None and upstream.transport.can_write_eof():
            upstream.transport.write_eof()
        self.transport.resume_reading()


# -- UDP ---------------------------------------------------------------------------------


class _UdpServer(asyncio.DatagramProtocol):
    """The listening side: one `_UdpUpstream` per client address."""

    def __init__(self, listener: _Listener) -> None:
        self.listener = listener
        self.transport: asyncio.DatagramTransport | None = None
        self.clients: dict[Any, _UdpUpstream] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        upstream = self.clients.get(addr)
        if upstream is None:
            upstream = self.clients[addr] = _UdpUpstream(self, addr)
            self.listener.tasks.add(asyncio.ensure_future(upstream.open()))
        upstream.send(data)

    def expire(self) -> None:
        now = time.monotonic()
        for addr, upstream in list(self.clients.items()):
            if now - upstream.used > UDP_IDLE:
                upstream.close()
                del self.clients[addr]

    def close(self) -> None:
        for upstream in self.clients.values():
            upstream.close()
        self.clients = {}
        if self.transport is not None:
            self.transport.close()


class _UdpUpstream(asyncio.DatagramProtocol):
    """A connected socket towards the forward, for one client address."""

    def __init__(self, server: _UdpServer, addr: Any) -> None:
        self.server = server
        self.addr = addr
        self.transport: asyncio.DatagramTransport | None = None
        self.early: list[bytes] = []
        self.used = time.monotonic()
        self.closed = False

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.create_datagram_endpoint(lambda: self, remote_addr=self.server.listener.target)
        except OSError as exc:
            log.debug("udp relay to %s: %s", self.server.listener.target, exc)
            self.server.clients.pop(self.addr, None)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.closed:
            transport.close()
            return
        for data in self.early:
            transport.sendto(data)
        self.early = []

    def send(self, data: bytes) -> None:
        self.used = time.monotonic()
        if self.transport is None:
            self.early.append(data)
        else:
            self.transport.sendto(data)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.used = time.monotonic()
        if self.server.transport is not None and not self.server.transport.is_closing():
            self.server.transport.sendto(data, self.addr)

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP unreachable while the forward is being replaced: the client retries

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


# -- listeners and the loop --------------------------------------------------------------


@dataclass(eq=False)
class _Listener:
    protocol: str
    address: tuple[str, int]
    target: tuple[str, int]
    server: Any = None
    connections: set[_Splice] = field(default_factory=set)
    tasks: set[asyncio.Future[Any]] = field(default_factory=set)


class RelayHub:
    """The asyncio loop, in a thread of its own, that carries every relay of a watcher."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="relay", daemon=True)
        self.listeners: dict[tuple[str, str, int], _Listener] = {}
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_later(UDP_IDLE / 4, self._expire)
        self.loop.run_forever()

    def _expire(self) -> None:
        for listener in self.listeners.values():
            if isinstance(listener.server, _UdpServer):
                listener.server.expire()
        self.loop.call_later(UDP_IDLE / 4, self._expire)

    def _call(self, fn: Callable[[], Any]) -> Any:
        async def run() -> Any:
            result = fn()
            return await result if asyncio.iscoroutine(result) else result

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout=10)

    def listen(self, protocol: str, ip: str, port: int, target: tuple[str, int]) -> None:
        """Relay ip:port to target from now on. Raises OSError when ip:port cannot be bound."""
        sock = bind_listener(protocol, ip, port)
        listener = _Listener(protocol, (ip, port), target)

        async def start() -> None:
            if protocol == "tcp":
                listener.server = await self.loop.create_server(lambda: _Client(listener), sock=sock)
            else:
                _, listener.server = await self.loop.create_datagram_endpoint(lambda: _UdpServer(listener), sock=sock)
            self.listeners[(protocol, ip, port)] = listener

        try:
            self._call(start)
        except BaseException:
            sock.close()
            raise

    def stop(self, protocol: str, ip: str, port: int) -> None:
        """Stop relaying ip:port: the port is free again when this returns, and the
        connections it carried are closed, as the hypervisor's own forward's would be."""

        def stop_now() -> None:
            listener = self.listeners.pop((protocol, ip, port), None)
            if listener is None:
                return
            listener.server.close()
            for connection in list(listener.connections):
                connection.abort()
            for task in listener.tasks:
                task.cancel()

        self._call(stop_now)

    def active(self) -> list[tuple[str, str, int]]:
        return sorted(self.listeners)

    def close(self) -> None:
        if not self.loop.is_running():
            return
        for protocol, ip, port in list(self.listeners):
            self.stop(protocol, ip, port)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)


# -- the driver, as the watcher sees it --------------------------------------------------


@dataclass(frozen=True)
class _Made:
    """How one forward was made: the hypervisor's forward, and pymachine's listeners."""

    forward: PortForward
    hypervisor: PortForward
    listeners: tuple[tuple[str, int], ...]


class RelayingDriver:
    """A driver whose forwards also answer where the hypervisor cannot listen (see above).

    Everything but the three forward methods goes to the driver itself.
    """

    def __init__(self, driver: Driver, hub: RelayHub | None = None, ipv6: bool | None = None) -> None:
        self.driver = driver
        self.hub = hub or RelayHub()
        self.ipv6 = ipv6_available() if ipv6 is None else ipv6
        #: forwards made here, by their public key
        self.made: dict[tuple[str, int], _Made] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.driver, name)

    def _design(self, forward: PortForward) -> tuple[PortForward, list[tuple[str, int]], list[tuple[str, int]]]:
        """(hypervisor forward, listeners that must bind, listeners bound if they can)."""
        h, proto = forward.host_port, forward.protocol
        v6 = [("::1", h)] if self.ipv6 else []
        if forward.host_ip == "::1":
            hidden = PortForward(proto, "127.0.0.1", free_port(proto, "127.0.0.1"), forward.guest_port)
            return hidden, [("::1", h)], []
        if forward.host_ip == "0.0.0.0":
            return forward, [], [("::", h)] if self.ipv6 else []
        if self.driver.supports(Feature.LOOPBACK_FORWARDS):
            return forward, [], v6
        # The hypervisor listens on every interface: give it a port nobody is told about.
        hidden = PortForward(proto, "127.0.0.1", free_port(proto, "0.0.0.0"), forward.guest_port)
        return hidden, [("127.0.0.1", h)], v6

    def add_forward(self, forward: PortForward) -> None:
        made = self.made.get(forward.key)
        if made is not None:
            if made.forward == forward:
                return
            self.remove_forward(made.forward)
        hypervisor, required, optional = self._design(forward)
        target = ("127.0.0.1", hypervisor.host_port)
        # Bind ours first, so a taken port is found before the hypervisor is touched.
        bound: list[tuple[str, int]] = []
        try:
            for ip, port in required:
                try:
                    self.hub.listen(forward.protocol, ip, port, target)
                except PermissionError:
                    raise PortUnavailable(f"Host port {port} is privileged (below 1024) and pymachine does not run as root", "Publish a port of 1024 or above") from None
                except OSError as exc:
                    raise PortUnavailable(f"Host port {_show(ip)}:{port}/{forward.protocol} is in use ({exc.strerror})", "Run `pymachine ports` to see which forwards are blocked") from None
                bound.append((ip, port))
            for ip, port in optional:
                try:
                    self.hub.listen(forward.protocol, ip, port, target)
                    bound.append((ip, port))
                except OSError as exc:
                    log.warning("forward %s: not also on %s:%d: %s", forward, _show(ip), port, exc.strerror or exc)
            self.driver.add_forward(hypervisor)
        except BaseException:
            for ip, port in bound:
                self.hub.stop(forward.protocol, ip, port)
            raise
        self.made[forward.key] = _Made(forward, hypervisor, tuple(bound))

    def remove_forward(self, forward: PortForward) -> None:
        made = self.made.get(forward.key)
        if made is None or made.forward != forward:
            self.driver.remove_forward(forward)
            return
        # Ours first: once this returns, nothing answers on any of the forward's addresses.
        for ip, port in made.listeners:
            self.hub.stop(forward.protocol, ip, port)
        del self.made[forward.key]
        self.driver.remove_forward(made.hypervisor)

    def list_forwards(self) -> list[PortForward]:
        """The hypervisor's forwards, with the hidden ones shown as the forward they carry.
        A hidden one left by an earlier watcher shows as it is, so reconciling removes it."""
        hidden = {m.hypervisor: m.forward for m in self.made.values()}
        return sorted(hidden.get(f, f) for f in self.driver.list_forwards())

    def hypervisor_port(self, forward: PortForward) -> int:
        """The host port the hypervisor holds for this forward (its own, unless hidden)."""
        made = self.made.get(forward.key)
        return made.hypervisor.host_port if made is not None and made.forward == forward else forward.host_port

    def listening(self, forward: PortForward) -> list[str]:
        """Where pymachine's relays answer for this forward (for `pymachine ports`)."""
        made = self.made.get(forward.key)
        return [f"{_show(ip)}:{port}" for ip, port in made.listeners] if made is not None and made.forward == forward else []

    def stop_relays(self) -> None:
        """Stop every relay; the hypervisor's forwards stay as they are."""
        self.made = {}
        self.hub.close()


def describe(driver: type[Driver]) -> str:
    """Where a driver's forwards answer, for `pymachine drivers`."""
    if driver.supports(Feature.LOOPBACK_FORWARDS):
        loopback = "127.0.0.1:H by the hypervisor and [::1]:H by pymachine's relay"
    else:
        loopback = "127.0.0.1:H and [::1]:H by pymachine's relay, to a hypervisor port that is never published (the hypervisor listens on it on every interface)"
    text = f"a bare -p answers on {loopback}; -p [::1]:H:C on [::1]:H alone (relay, and a docker-proxy in the guest)"
    if driver.supports(Feature.ANY_HOST_ADDRESS):
        text += "; -p 0.0.0.0:H:C on 0.0.0.0:H by the hypervisor and [::]:H by the relay"
    else:
        text += "; -p 0.0.0.0:H:C is refused"
    if not driver.supports(Feature.UDP_FORWARDS):
        text += "; no UDP"
    if driver.supports(Feature.LARGE_FRAMES):
        text += f"; TCP moves up to 64 KiB per packet through the NAT (guest MTU {LARGE_FRAME_MTU})"
    return text + ". Relays run in the forward watcher, while the machine runs."


def _show(ip: str) -> str:
    return f"[{ip}]" if ":" in ip else ip
