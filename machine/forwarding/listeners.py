"""Guest listeners, forwarded: ports a process in the guest listens on, carried to the host.

Docker's events tell the watcher about published ports; nothing tells it about a process
that listens in the guest's own network namespace (`docker run --network host`, a server
started over `pymachine ssh`). So one long-running shell loop in the guest, over one SSH
channel, reads /proc/net/{tcp,tcp6,udp,udp6} every LISTENER_POLL seconds and prints the
listening sockets (TCP state 0A, UDP unconnected) only when they change, each with the
process that holds it. The host side turns that into forwards:

    0.0.0.0, ::            forwarded; the hypervisor delivers to the guest's own address
    127.0.0.1 (or ::ffff:127.0.0.1)
                           forwarded, with the DNAT rule the watcher already keeps for
                           loopback-bound published ports (route_localnet is set at boot)
    ::1 only               forwarded, through the guest proxy the watcher already keeps
                           for -p [::1]:H:C (IPv4 from the NAT, relayed to [::1])
    one specific address   not forwarded (a bridge's such as 172.17.0.1 is out of the NAT's
                           reach; the card's own, 10.0.2.15, could be, but is not yet)

Never forwarded this way: the guest's own services (SSH on 22, the Docker API on 2376,
dockerd, containerd, the DHCP client), docker-proxy (a published port is the event
path's, which is faster and knows the container), the ports the user ignores, and
anything at all when the machine's listener forwarding is off.

The host port is the guest port, on the machine's forward bind (127.0.0.1 by default),
as Lima does. A published port always wins over a listener on the same host port.
"""

from __future__ import annotations

import logging
import select
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pymachine.driver import PortForward
from pymachine.errors import MachineError
from pymachine.forwarding.plan import WantedForward

log = logging.getLogger("pymachine.watcher")

#: How often the guest reads its socket tables (seconds). With the hypervisor's add and
#: the DNAT rule, a new listener answers on the host well within a second.
LISTENER_POLL = 0.3
#: The guest's services: never forwarded as listeners, whatever holds them.
GUEST_SERVICE_PORTS = frozenset({("tcp", 22), ("tcp", 2376), ("udp", 68)})
#: Processes that are the guest's (or Docker's) own: their sockets are never forwarded.
GUEST_PROCESSES = frozenset({"dropbear", "dockerd", "containerd", "containerd-shim", "containerd-shim-runc-v2", "docker-proxy", "udhcpc", "sftp-server"})
#: The prefix of a listener's claim id (WantedForward.container_id).
LISTENER_ID = "listener:"

_ANY = {"00000000", "00000000000000000000000000000000"}
_LOOPBACK = {"0100007F", "0000000000000000FFFF00000100007F"}
_LOOPBACK6 = "00000000000000000000000001000000"

# The guest side: busybox sh and awk. A snapshot is one line per listening socket,
# "PROTO ADDR:PORT INODE PID COMM" (PID "-" and COMM "?" when no process holds it any
# more), ended by a line ".". The first snapshot comes at once, later ones only when the
# set of sockets changed; the process lookup (one `ls -l` of every /proc/PID/fd) runs
# only then. The loop ends by itself when its SSH session does.
GUEST_SCRIPT = r"""
export LC_ALL=C
prev=x
while :; do
  # The watcher gone (its SSH session closed, this shell handed to init): end, rather than
  # loop on until the next change finds the channel closed.
  read -r _ _ _ ppid _ < /proc/$$/stat
  [ "$ppid" = "$PPID" ] || exit 0
  cur=$(awk 'FNR > 1 { n = split(FILENAME, p, "/"); proto = p[n]
      if ((proto ~ /^tcp/ && $4 == "0A") || (proto ~ /^udp/ && $4 == "07" && $3 ~ /:0000$/)) print proto, $2, $10 }' \
      /proc/net/tcp /proc/net/tcp6 /proc/net/udp /proc/net/udp6 2>/dev/null | sort -u)
  if [ "$cur" != "$prev" ]; then
    prev=$cur
    { echo "$cur"; echo "#fds"; ls -l /proc/[0-9]*/fd 2>/dev/null; } | awk '
      $0 == "#fds" { fds = 1; next }
      !fds { if (NF == 3) line[$3] = $0; next }
      /^\/proc\/[0-9]+\/fd:$/ { split($0, a, "/"); pid = a[3]; next }
      /socket:\[/ { if (match($0, /socket:\[[0-9]+\]/)) { ino = substr($0, RSTART + 8, RLENGTH - 9)
          if ((ino in line) && !(ino in owner)) owner[ino] = pid } }
      END { for (ino in line) { pid = owner[ino]; comm = "?"
          if (pid != "") { f = "/proc/" pid "/comm"; if ((getline comm < f) <= 0) comm = "?"; close(f) } else pid = "-"
          print line[ino], pid, comm }
        print "." }'
  fi
  usleep 300000
done
"""


@dataclass(frozen=True)
class Listener:
    """One listening socket in the guest, as the guest's socket tables show it."""

    protocol: str  # "tcp" or "udp"
    address: str  # "any", "loopback", "loopback6" or "other"
    port: int
    pid: int | None
    process: str


@dataclass(frozen=True)
class ListenerSettings:
    """The machine's choices: listener forwarding on or off, and ports never forwarded."""

    enabled: bool = True
    #: (protocol, port) pairs; a bare port in the config ignores it for tcp and udp
    ignored: frozenset[tuple[str, int]] = field(default_factory=frozenset)

    @classmethod
    def from_config(cls, enabled: bool, ignore_ports: Iterable[str]) -> ListenerSettings:
        ignored: set[tuple[str, int]] = set()
        for spec in ignore_ports:
            try:
                port, protocols = parse_ignore_port(spec)
            except ValueError:
                continue  # a hand-edited config: `create` and `ports` refuse such a port
            ignored.update((protocol, port) for protocol in protocols)
        return cls(enabled, frozenset(ignored))


def parse_ignore_port(spec: str) -> tuple[int, tuple[str, ...]]:
    """ "8080" (tcp and udp), "8080/tcp" or "53/udp": the port and its protocols; ValueError if not."""
    text = str(spec).strip().lower()
    number, _, protocol = text.partition("/")
    if not number.isdigit() or not 1 <= int(number) <= 65535 or protocol not in ("", "tcp", "udp"):
        raise ValueError(f"not a port: {spec!r} (give PORT, PORT/tcp or PORT/udp)")
    return int(number), (protocol,) if protocol else ("tcp", "udp")


def normalize_ignore_ports(specs: list[str], option: str, help_command: str) -> list[str]:
    """`--ignore-port` values as the config keeps them: "8080", "8080/tcp" or "53/udp"."""
    normal: list[str] = []
    for spec in specs:
        try:
            port, protocols = parse_ignore_port(spec)
        except ValueError:
            raise MachineError(f"{option} takes PORT, PORT/tcp or PORT/udp (1-65535), not '{spec}'", f"Run `{help_command}`") from None
        text = str(port) if len(protocols) == 2 else f"{port}/{protocols[0]}"
        if text not in normal:
            normal.append(text)
    return normal


def parse_snapshot(lines: Iterable[str]) -> list[Listener]:
    """The guest script's lines of one snapshot (without the final ".") as listeners."""
    found = []
    for line in lines:
        parts = line.split(None, 4)
        if len(parts) < 3 or ":" not in parts[1]:
            continue
        table, local = parts[0], parts[1]
        protocol = table.rstrip("6")
        address_hex, _, port_hex = local.rpartition(":")
        try:
            port = int(port_hex, 16)
        except ValueError:
            continue
        if protocol not in ("tcp", "udp") or not 1 <= port <= 65535:
            continue
        address_hex = address_hex.upper()
        if address_hex in _ANY:
            address = "any"
        elif address_hex in _LOOPBACK:
            address = "loopback"
        elif address_hex == _LOOPBACK6:
            address = "loopback6"
        else:
            address = "other"
        pid = int(parts[3]) if len(parts) > 3 and parts[3].isdigit() else None
        process = parts[4].strip() if len(parts) > 4 else "?"
        found.append(Listener(protocol, address, port, pid, process or "?"))
    return found


def wanted_from_listeners(listeners: Iterable[Listener], forward_bind: str, settings: ListenerSettings) -> list[WantedForward]:
    """The forwards the guest's listeners want, one per (protocol, port), in port order."""
    if not settings.enabled:
        return []
    by_key: dict[tuple[str, int], list[Listener]] = {}
    for item in listeners:
        key = (item.protocol, item.port)
        if key in GUEST_SERVICE_PORTS or key in settings.ignored or item.process in GUEST_PROCESSES:
            continue
        if item.pid is None:
            # No process holds it: the socket is closing, as a container's docker-proxy's
            # does when the container stops (read from /proc/net, gone from every /proc/PID/fd).
            # Forwarded, it would show up in `ports` for a moment after `docker stop`.
            continue
        by_key.setdefault(key, []).append(item)
    wanted = []
    for (protocol, port), group in sorted(by_key.items()):
        reachable = [item for item in group if item.address in ("any", "loopback")]
        ipv6_only = not reachable
        if ipv6_only:
            # ::1 alone: the guest's proxy to [::1] reaches it. A specific address: not forwarded.
            reachable = [item for item in group if item.address == "loopback6"]
            if not reachable:
                continue
        loopback_only = all(item.address in ("loopback", "loopback6") for item in reachable)
        forward = PortForward(protocol, forward_bind, port, port)
        claim = f"{LISTENER_ID}{protocol}/{port}"
        wanted.append(WantedForward(forward, claim, describe(reachable), loopback_only, source="listener", guest_ipv6=ipv6_only))
    return wanted


def proxies_listening(listeners: Iterable[Listener]) -> set[tuple[str, int]]:
    """(protocol, port) of each docker-proxy listening on one address of the guest: the
    watcher's proxies to [::1] (Docker's own listen on 0.0.0.0 and ::)."""
    return {(item.protocol, item.port) for item in listeners if item.process == "docker-proxy" and item.address == "other"}


def describe(group: list[Listener]) -> str:
    """Who listens: "python3 (pid 412)", several joined by ", "."""
    names = []
    for item in sorted(group, key=lambda i: (i.pid or 0, i.process)):
        text = item.process if item.pid is None else f"{item.process} (pid {item.pid})"
        if text not in names:
            names.append(text)
    return ", ".join(names)


def read_snapshots(channel: Any, stop: threading.Event, idle: Callable[[], None] = lambda: None) -> Iterator[list[Listener]]:
    """Snapshots from the guest script's channel, as they come; ends when the channel does.
    `idle` is called about once a second while nothing arrives."""
    buffer = b""
    lines: list[str] = []
    while not stop.is_set():
        ready, _, _ = select.select([channel], [], [], 1.0)
        if not ready:
            idle()
            continue
        data = channel.recv(65536)
        if not data:
            return
        buffer += data
        *complete, buffer = buffer.split(b"\n")
        for raw in complete:
            line = raw.decode(errors="replace").strip()
            if line == ".":
                yield parse_snapshot(lines)
                lines = []
            elif line:
                lines.append(line)


class ListenerScanner:
    """Runs the guest script over SSH in a thread and hands each change to `apply`.

    `settings` is asked again about once a second, so `pymachine ports --ignore` and the
    off switch take effect without restarting the watcher. A dropped channel is opened
    again (the listeners it knew stay forwarded until the next snapshot says otherwise).
    `seen`, if given, gets every snapshot whole, before any filtering: the watcher looks
    there for its own proxies in the guest.
    """

    def __init__(
        self,
        open_ssh: Callable[[], Any],
        apply: Callable[[list[WantedForward]], None],
        settings: Callable[[], ListenerSettings],
        forward_bind: str,
        seen: Callable[[list[Listener]], None] | None = None,
    ) -> None:
        self.open_ssh = open_ssh
        self.apply = apply
        self.settings = settings
        self.forward_bind = forward_bind
        self.seen = seen
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None
        self._ssh: Any = None
        self._last: list[Listener] = []
        self._current = ListenerSettings()
        self._off_applied = False

    def start(self) -> None:
        self.thread = threading.Thread(target=self.run, name="listeners", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        self._drop_ssh()

    def run(self) -> None:
        pause = 0.5
        while not self.stop_event.is_set():
            try:
                self._current = self.settings()
                if not self._current.enabled:
                    if self._last or not self._off_applied:
                        self._last = []
                        self.apply([])
                        self._off_applied = True
                    self.stop_event.wait(1.0)
                    continue
                self._off_applied = False
                if self._ssh is None:
                    self._ssh = self.open_ssh()
                channel = self._ssh.session()
                try:
                    channel.exec_command(GUEST_SCRIPT)
                    channel.shutdown_write()
                    for snapshot in read_snapshots(channel, self.stop_event, self._recheck):
                        self._last = snapshot
                        self._push()
                        if self.seen is not None:
                            self.seen(snapshot)
                        pause = 0.5
                finally:
                    channel.close()
                if not self.stop_event.is_set():
                    log.warning("the guest's listener scan ended; it starts again")
            except _SettingsOff:
                continue
            except Exception as exc:  # noqa: BLE001 - the scan must outlive any one failure
                log.warning("the guest's listener scan failed: %s: %s", type(exc).__name__, exc)
                self._drop_ssh()
            self.stop_event.wait(pause)
            pause = min(pause * 2, 5.0)

    def _drop_ssh(self) -> None:
        if self._ssh is not None:
            try:
                self._ssh.close()
            except Exception:  # noqa: BLE001 - it is being thrown away
                pass
        self._ssh = None

    def _recheck(self) -> None:
        """The machine's settings again: a change applies to the listeners last seen."""
        try:
            settings = self.settings()
        except MachineError:
            return
        if settings != self._current:
            self._current = settings
            self._push()
            if not settings.enabled:
                raise _SettingsOff()

    def _push(self) -> None:
        start = time.monotonic()
        self.apply(wanted_from_listeners(self._last, self.forward_bind, self._current))
        log.debug("listener snapshot applied in %.0f ms", (time.monotonic() - start) * 1000)


class _SettingsOff(Exception):
    """Listener forwarding was turned off while the scan ran: the scan ends."""


def apply_listener_forwards(watcher: Any, wanted: list[WantedForward]) -> None:
    """Make the watcher's listener forwards equal to `wanted` (a ForwardWatcher).

    A listener that went loses its forward; a new one gets its host port unless a
    published port (or another machine, or the host) holds it, which is recorded as a
    failure with the reason, like a published port's. The guest's DNAT rules follow.
    """
    from pymachine.forwarding.watcher import Record

    desired = {item.forward.key: item for item in wanted}
    with watcher.lock:
        watcher.listener_wanted = list(wanted)
        freed = []
        for key, record in list(watcher.owners.items()):
            if record.wanted.source != "listener":
                continue
            item = desired.get(key)
            if item is None or item.forward != record.wanted.forward:
                watcher._driver_remove(record.wanted.forward)
                del watcher.owners[key]
                freed.append(key)
                log.info("forward %s for listener %s removed", record.wanted.forward, record.wanted.container_name)
            else:
                watcher.owners[key] = Record(item, "active")  # its process or address may have changed
        for claim in list(watcher.failures):
            key, claim_id = claim
            if claim_id.startswith(LISTENER_ID) and key not in desired:
                del watcher.failures[claim]
                watcher._logged.pop(claim, None)
        for key, item in desired.items():
            if key not in watcher.owners:
                watcher._add(item)
        watcher._promote([key for key in freed if key not in watcher.owners])
    watcher._sync_loopback()
    watcher._save()
