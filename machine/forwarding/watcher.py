"""The forward watcher: one background process per running machine that follows Docker's
events and keeps the hypervisor's port forwards equal to the published ports.

    create   inspect the container at once (off the critical path): its fixed ports
    start    add its forwards (already known from create, so no round trip first)
    die      remove them (before `docker stop` returns to the user)
    destroy  forget it
On every (re)connection it reconciles: running containers get their forwards, stale
ones go. The daemon restarting or the connection dropping means reconnect with backoff.

Files in the machine's folder: watcher.pid, watcher.lock (held while it runs, so two
never run), watcher.log, and forwards.json (what `pymachine ports` shows).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pymachine.driver import Driver, Feature, PortForward, State
from pymachine.errors import MachineError, PortUnavailable
from pymachine.forwarding.plan import WantedForward, plan, wanted_from_inspect
from pymachine.forwarding.process import STATE_FILE, WatcherProcess
from pymachine.forwarding.relay import RelayingDriver
from pymachine.guest.certs import CertPaths
from pymachine.guest.dockerapi import DockerAPI
from pymachine.guest.ssh import GuestSSH
from pymachine.store import Store, atomic_write

log = logging.getLogger("pymachine.watcher")

EVENTS = ["create", "start", "die", "destroy"]
#: No event for this long: reconnect and reconcile anyway (a cheap heartbeat).
IDLE_RECONCILE = 60.0


# -- the watcher itself ----------------------------------------------------------------


@dataclass
class Record:
    wanted: WantedForward
    state: str  # "active" or "failed"
    reason: str = ""


class Stop(Exception):
    """Raised from a signal handler to leave the event loop."""


class ForwardWatcher:
    """Keeps one machine's forwards equal to its containers' published ports.

    It is handed what it works with: the machine's driver (with a control channel of its
    own), where a bare `-p` binds on the host, a way into the guest over SSH (for the
    guest-side loopback rules), and the store (to see which host ports other machines'
    watchers hold).
    """

    def __init__(self, name: str, directory: Path, driver: Driver, forward_bind: str, ssh: Callable[[], GuestSSH], store: Store) -> None:
        self.name = name
        self.directory = directory
        # Forwards answer on ::1 (and [::]) too, through relays of ours (forwarding/relay.py).
        self.driver: Any = RelayingDriver(driver)
        self.forward_bind = forward_bind
        self.open_ssh = ssh
        self.store = store
        endpoint = self.driver.docker_endpoint()
        certs = CertPaths(directory)
        self.api = DockerAPI(endpoint.host, endpoint.port, certs, timeout=10)
        self.inspect_api = DockerAPI(endpoint.host, endpoint.port, certs, timeout=10)
        self.pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="inspect")
        #: who holds each host port: one active forward per (protocol, host port)
        self.owners: dict[tuple[str, int], Record] = {}
        #: claims that did not get their host port, by (protocol, host port) and container
        self.failures: dict[tuple[tuple[str, int], str], Record] = {}
        #: the reason last logged for each failed claim
        self._logged: dict[tuple[tuple[str, int], str], str] = {}
        self.pending: dict[str, Future[list[WantedForward]]] = {}
        #: what the guest was last made to do for loopback-only ports: (kind, protocol, port); None before the first sync
        self.loopback: set[tuple[str, str, int]] | None = None
        self.loopback_lock = threading.Lock()
        #: the guest's proxies to [::1] that did not start at the last sync: why, by (protocol, port)
        self.proxy_failures: dict[tuple[str, int], str] = {}
        #: what the guest's listeners want (pymachine.forwarding.listeners); published ports win
        self.listener_wanted: list[WantedForward] = []
        self.health: dict[str, Any] = {"state": "starting", "since": _now()}
        self.lock = threading.Lock()
        self._ssh: Any = None

    def records(self) -> list[Record]:
        """Every forward, active and failed, in host port order (what forwards.json lists)."""
        rows = [((key, ""), r) for key, r in self.owners.items()] + [((key, cid), r) for (key, cid), r in self.failures.items()]
        return [r for _, r in sorted(rows, key=lambda row: row[0])]

    # -- loop ------------------------------------------------------------------------

    def run(self) -> None:
        pause = 0.5
        while True:
            stream = None
            try:
                stream = self.api.subscribe({"type": ["container"], "event": EVENTS}, read_timeout=IDLE_RECONCILE)
                self.reconcile()
                self._health("watching", since=_now(), last_error="")
                pause = 0.5
                for event in stream:
                    self.handle(event)
                self._health("reconnecting", last_error="the Docker daemon closed the event stream")
            except Stop:
                raise
            except Exception as exc:  # noqa: BLE001 - the watcher must outlive any one failure
                if self._machine_gone():
                    log.info("machine %s is not running any more; the watcher ends", self.name)
                    with self.lock:
                        # Its forwards went with the VM (or are stale settings): none is active.
                        self.owners, self.failures = {}, {}
                        self.driver.stop_relays()
                    self._health("stopped", detail="the machine is not running", since=_now())
                    return
                idle = type(exc).__name__ in ("ReadTimeout", "ConnectionError") and "Read timed out" in str(exc)
                if idle:
                    self._health("watching")
                    pause = 0.0
                else:
                    log.warning("event stream failed: %s: %s", type(exc).__name__, exc)
                    self._health("reconnecting", last_error=f"{type(exc).__name__}: {exc}"[:300])
            finally:
                if stream is not None:
                    stream.close()
            time.sleep(pause)
            pause = min(max(pause, 0.5) * 2, 10.0)

    def _machine_gone(self) -> bool:
        try:
            return self.driver.state() in (State.STOPPED, State.NOT_FOUND)
        except MachineError:
            return False

    def close(self) -> None:
        self.driver.stop_relays()
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.api.close()
        self.inspect_api.close()
        if self._ssh is not None:
            self._ssh.close()

    def handle(self, event: dict[str, Any]) -> None:
        action = event.get("Action") or event.get("status") or ""
        container = event.get("id") or (event.get("Actor") or {}).get("ID") or ""
        if not container:
            return
        if action == "create":
            self.pending[container] = self.pool.submit(self._wanted_for, container)
        elif action == "start":
            self._on_start(container)
        elif action == "die":
            self._remove_container(container)
        elif action == "destroy":
            self.pending.pop(container, None)
            self._remove_container(container)
        self._save()

    def _on_start(self, container: str) -> None:
        future = self.pending.pop(container, None)
        early: list[WantedForward] = []
        complete = False
        if future is not None:
            try:
                early, complete = future.result(timeout=10)
            except Exception:  # noqa: BLE001 - fall back to inspecting now
                early, complete = [], False
        if early:
            self._apply_container(container, early)
        if not complete:
            wanted, _ = self._wanted_for(container)
            self._apply_container(container, wanted)

    def _wanted_for(self, container: str) -> tuple[list[WantedForward], bool]:
        """(forwards, complete): complete when no port is left for Docker to choose at start."""
        data = self.inspect_api.inspect(container)
        if data is None:
            return [], True
        wanted = wanted_from_inspect(data, self.forward_bind)
        host = data.get("HostConfig") or {}
        running = (data.get("State") or {}).get("Running", False)
        random_ports = host.get("PublishAllPorts") or any(
            not str(b.get("HostPort") or "").isdigit() for bindings in (host.get("PortBindings") or {}).values() for b in bindings or []
        )
        return wanted, running or not random_ports

    # -- changes -----------------------------------------------------------------------

    def reconcile(self) -> None:
        """Make the forwards match the running containers, whatever happened before.

        Where two containers claim one host port, the one that holds it keeps it; when
        none does (a new watcher), the older container gets it. The other is failed.
        """
        claims: list[tuple[Any, str, WantedForward]] = []
        for summary in self.api.containers():
            data = self.api.inspect(summary["Id"])
            if data and (data.get("State") or {}).get("Running"):
                for item in wanted_from_inspect(data, self.forward_bind):
                    claims.append((summary.get("Created") or 0, summary["Id"], item))
        wanted = [item for _, _, item in sorted(claims, key=lambda c: (c[0], c[1]))]
        with self.lock:
            # Under the lock: the listener scan's thread adds forwards too.
            actual = self.driver.list_forwards()
            chosen: dict[tuple[str, int], WantedForward] = {}
            for item in wanted:
                owner = self.owners.get(item.forward.key)
                if owner is not None and (owner.wanted.container_id, owner.wanted.forward) == (item.container_id, item.forward):
                    chosen[item.forward.key] = item
            for item in wanted:
                chosen.setdefault(item.forward.key, item)
            losers = [item for item in wanted if chosen[item.forward.key] is not item]
            for item in self.listener_wanted:
                chosen.setdefault(item.forward.key, item)
            changes = plan(chosen.values(), actual)
            for forward in changes.remove:
                self._driver_remove(forward)
            adding = {w.forward.key for w in changes.add}
            present = {f.key for f in actual} - {f.key for f in changes.remove}
            self.owners = {key: Record(item, "active") for key, item in chosen.items() if key in present and key not in adding}
            self.failures = {}
            for item in changes.add:
                self._add(item)
            for item in losers:
                self._add(item)
        self._sync_loopback(force=True)
        self._save()
        level = logging.INFO if changes.add or changes.remove else logging.DEBUG
        log.log(level, "reconciled: %d wanted, %d added, %d removed", len(wanted), len(changes.add), len(changes.remove))

    def _apply_container(self, container: str, wanted: list[WantedForward]) -> None:
        with self.lock:
            desired = {w.forward.key: w for w in wanted}
            freed = []
            for key, record in list(self.owners.items()):
                if record.wanted.container_id == container and (key not in desired or record.wanted.forward != desired[key].forward):
                    self._driver_remove(record.wanted.forward)
                    del self.owners[key]
                    freed.append(key)
            for key, owner_id in list(self.failures):
                if owner_id == container and key not in desired:
                    del self.failures[(key, owner_id)]
            for key, item in desired.items():
                owner = self.owners.get(key)
                if owner is not None and owner.wanted.container_id == container:
                    self.owners[key] = Record(item, "active")
                    continue
                self._add(item)
            self._promote(freed)
        self._sync_loopback()

    def _add(self, item: WantedForward) -> None:
        """Claim the host port for `item`: it becomes the owner, or a failure with the reason.
        An owner is never displaced by a later claim."""
        key = item.forward.key
        owner = self.owners.get(key)
        if owner is not None and owner.wanted.source == "listener" and item.source != "listener":
            # A published port wins over a guest listener on the same host port.
            self._driver_remove(owner.wanted.forward)
            del self.owners[key]
            owner = None
        if owner is not None and owner.wanted.container_id != item.container_id:
            forward = item.forward
            self._fail(item, f"host port {forward.host_port}/{forward.protocol} already forwarded for container {owner.wanted.container_name}")
            return
        # A -p [::1]:H:C is relayed on the host (relay.py) and proxied in the guest (_sync_loopback).
        refused = self._refused(item.forward)
        if refused:
            self._fail(item, refused)
            return
        other = _other_machine_with(self.store, self.name, key)
        if other:
            self._fail(item, f"host port {item.forward.host_port} is forwarded by machine '{other}'")
            return
        try:
            self.driver.add_forward(item.forward)
        except PortUnavailable as exc:
            self._fail(item, _busy_reason(item.forward, str(exc)))
            return
        except MachineError as exc:
            self._fail(item, str(exc))
            return
        self.owners[key] = Record(item, "active")
        self.failures.pop((key, item.container_id), None)
        self._logged.pop((key, item.container_id), None)
        log.info("forward %s for %s added", item.forward, item.container_name)

    def _fail(self, item: WantedForward, reason: str) -> None:
        claim = (item.forward.key, item.container_id)
        self.failures[claim] = Record(item, "failed", reason)
        # Once per claim and reason: a start is applied twice (from create's inspect, then
        # start's), and every reconcile tries failed forwards again.
        if self._logged.get(claim) != reason:
            self._logged[claim] = reason
            log.warning("forward %s for %s failed: %s", item.forward, item.container_name, reason)

    def _promote(self, keys: list[tuple[str, int]]) -> None:
        """Host ports given up by their owner go to a container still waiting for them."""
        for key in keys:
            for (failed_key, _), record in list(self.failures.items()):
                if failed_key != key or key in self.owners:
                    continue
                self._add(record.wanted)
            for item in self.listener_wanted:
                if item.forward.key == key and key not in self.owners:
                    self._add(item)

    def _refused(self, forward: PortForward) -> str:
        """Why this driver cannot make the forward at all ("" when it can)."""
        if forward.protocol == "udp" and not self.driver.supports(Feature.UDP_FORWARDS):
            return f"the {self.driver.name} driver cannot forward UDP"
        if forward.host_ip == "0.0.0.0" and not self.driver.supports(Feature.ANY_HOST_ADDRESS):
            return f"the {self.driver.name} driver forwards on 127.0.0.1 only, not on every interface"
        return ""

    def _remove_container(self, container: str) -> None:
        changed = False
        with self.lock:
            freed = []
            for key, record in list(self.owners.items()):
                if record.wanted.container_id != container:
                    continue
                self._driver_remove(record.wanted.forward)
                log.info("forward %s for %s removed", record.wanted.forward, record.wanted.container_name)
                del self.owners[key]
                freed.append(key)
                changed = True
            for key, owner_id in list(self.failures):
                if owner_id == container:
                    del self.failures[(key, owner_id)]
                    changed = True
            self._logged = {claim: reason for claim, reason in self._logged.items() if claim[1] != container}
            self._promote(freed)
        if changed:
            # Recorded before the guest's side is cleaned up: the forward is already gone, and
            # stopping a -p [::1] proxy (an SSH round trip, a wait for its exit) takes a while.
            self._save()
            self._sync_loopback()

    def _driver_remove(self, forward: PortForward) -> None:
        try:
            self.driver.remove_forward(forward)
        except MachineError as exc:
            log.warning("could not remove forward %s: %s", forward, exc)

    # -- guest loopback bindings ---------------------------------------------------------

    def _sync_loopback(self, force: bool = False) -> None:
        """Make the guest reach ports Docker bound to its loopback only: DNAT rules for
        127.0.0.1, docker-proxy processes for ::1 (see loopback_script)."""
        with self.loopback_lock:  # the listener scan's thread calls this too
            self._sync_loopback_locked(force)

    def _sync_loopback_locked(self, force: bool) -> None:
        with self.lock:
            wanted = {
                ("proxy6" if r.wanted.guest_ipv6_only else "dnat", r.wanted.forward.protocol, r.wanted.forward.host_port)
                for r in self.owners.values()
                if r.wanted.guest_loopback
            }
        # The first sync always runs: a watcher before this one may have left rules and proxies.
        if wanted == self.loopback and not (force and wanted):
            return
        dnat = {(proto, port) for kind, proto, port in wanted if kind == "dnat"}
        proxies = {(proto, port) for kind, proto, port in wanted if kind == "proxy6"}
        try:
            if self._ssh is None:
                self._ssh = self.open_ssh()
            result = self._ssh.run(loopback_script(dnat, proxies), timeout=60)
            self.loopback = wanted
        except MachineError as exc:
            self._ssh = None
            log.warning("could not update the guest's loopback DNAT rules and proxies: %s", exc)
            return
        failures: dict[tuple[str, int], str] = {}
        for line in str(getattr(result, "stdout", "") or "").splitlines():
            if line.startswith("proxy6 "):
                log.warning("the guest's proxy to [::1] did not start: %s", line[len("proxy6 ") :])
                name, _, why = line[len("proxy6 ") :].partition(": ")
                proto, _, port = name.partition("-")
                if port.isdigit():
                    failures[(proto, int(port))] = why.strip() or "no reason given"
        if failures != self.proxy_failures:
            # `ports` shows such a forward failed, with the guest's reason, until a sync starts it.
            self.proxy_failures = failures
            self._save()

    def guest_proxies_seen(self, listening: set[tuple[str, int]]) -> None:
        """The guest's listener scan saw these proxies to [::1] listening (the docker-proxy
        processes of loopback_script). One that should run and does not (killed, or gone
        with its port) is started again now, not at the next reconcile."""
        wanted = {(proto, port) for kind, proto, port in self.loopback or () if kind == "proxy6"}
        if wanted - listening:
            log.info("the guest's proxy to [::1] for %s is not listening; starting it again", ", ".join(f"{p}/{n}" for p, n in sorted(wanted - listening)))
            self._sync_loopback(force=True)

    # -- state -------------------------------------------------------------------------

    def _health(self, state: str, **fields: Any) -> None:
        self.health["state"] = state
        self.health.update(fields)
        self._save()

    def _save(self) -> None:
        with self.lock:
            forwards = [
                {
                    "protocol": r.wanted.forward.protocol,
                    "host_ip": r.wanted.forward.host_ip,
                    "host_port": r.wanted.forward.host_port,
                    "guest_port": r.wanted.forward.guest_port,
                    "container": r.wanted.container_name,
                    "container_id": r.wanted.container_id,
                    "source": r.wanted.source,
                    **self._guest_state(r),
                    # the port the hypervisor itself holds, when a relay of ours fronts it
                    "hypervisor_port": self.driver.hypervisor_port(r.wanted.forward),
                }
                for r in self.records()
            ]
        data = {"watcher": {**self.health, "pid": os.getpid(), "updated": _now()}, "forwards": forwards}
        atomic_write(self.directory / STATE_FILE, json.dumps(data, indent=2, sort_keys=True), mode=0o644)

    def _guest_state(self, record: Record) -> dict[str, str]:
        """A record's state and reason, as `ports` shows them: an active forward whose
        guest proxy to [::1] did not start is failed, with the guest's reason."""
        why = self.proxy_failures.get(record.wanted.forward.key) if record.wanted.guest_ipv6_only else None
        if record.state == "active" and why:
            return {"state": "failed", "reason": f"the guest's proxy to [::1] did not start: {why}"}
        return {"state": record.state, "reason": record.reason}


#: the guest's run-time folder (the NIC's name, the proxies' pidfiles under proxy6/), and Docker's own proxy (the engine bundle's)
RUN_DIR = "/run/pymachine"
DOCKER_PROXY = "/var/lib/pymachine/engine/current/bin/docker-proxy"
#: tenths of a second the script waits for a new proxy to say whether it listens
PROXY_WAIT = 50

_DNAT_HEAD = (
    "nic=$(cat {run}/nic); "
    "iptables -t nat -N PYMACHINE 2>/dev/null; "
    "iptables -t nat -C PREROUTING -j PYMACHINE 2>/dev/null || iptables -t nat -I PREROUTING 1 -j PYMACHINE; "
    "iptables -t nat -F PYMACHINE; "
)

# The proxies of -p [::1]:H:C. Docker's own docker-proxy listens on the guest's IPv4
# address, port H (where the NAT delivers), and connects to [::1]:H (where Docker's proxy
# for the container listens). One pidfile per proxy, PROTO-PORT.pid; a pidfile counts only
# while its process's command line is the one this script would start (so a reused pid, or
# a proxy for an address the guest no longer has, is not ours to keep). First every proxy
# not wanted, or not right, is stopped (and waited for, so that its port is free again);
# then the wanted ones that are missing start, and the script waits for each to say on its
# fd 3 whether it listens ("0", or "1" and the error): a line "proxy6 PROTO-PORT: why" per
# failure, which the watcher logs.
_PROXY_HEAD = """
d={run}/proxy6; bin={bin}; mkdir -p $d
ip4=$(ip -4 -o addr show dev "$nic" 2>/dev/null | sed -n 's|.* inet \\([0-9.]*\\)/.*|\\1|p' | head -n 1)
keep=" "; started=""
want() {{ keep="$keep$1 "; }}
args() {{ echo "-proto ${{1%-*}} -host-ip $ip4 -host-port ${{1#*-}} -container-ip ::1 -container-port ${{1#*-}}"; }}
cmdline() {{ [ -n "$1" ] && tr '\\000' ' ' < /proc/$1/cmdline 2>/dev/null; }}
"""
_PROXY_TAIL = """
for f in $d/*.pid; do
  [ -f "$f" ] || continue
  k=${{f##*/}}; k=${{k%.pid}}; p=$(cat "$f")
  case "$keep" in *" $k "*) case "$(cmdline $p)" in *" $(args $k) ") continue;; esac;; esac
  case "$(cmdline $p)" in *docker-proxy*" -container-ip ::1 "*)
    kill $p; n=0; while [ -n "$(cmdline $p)" ] && [ $n -lt {wait} ]; do sleep 0.1; n=$((n+1)); done;;
  esac
  rm -f "$f" "$d/$k.status"
done
for k in $keep; do
  [ -f $d/$k.pid ] && continue
  [ -n "$ip4" ] || {{ echo "proxy6 $k: the guest's $nic has no IPv4 address"; continue; }}
  [ -x $bin ] || {{ echo "proxy6 $k: no $bin (is the engine installed?)"; continue; }}
  rm -f $d/$k.status
  $bin $(args $k) 3>$d/$k.status </dev/null >/dev/null 2>&1 &
  echo $! > $d/$k.pid; started="$started $k"
done
for k in $started; do
  n=0; while [ ! -s $d/$k.status ] && [ $n -lt {wait} ]; do sleep 0.1; n=$((n+1)); done
  case "$(head -n 1 $d/$k.status)" in
    0|"") ;;
    *) echo "proxy6 $k: $(tail -n +2 $d/$k.status | head -n 1)"; rm -f $d/$k.pid;;
  esac
done
"""


def loopback_script(dnat: set[tuple[str, int]], proxies: set[tuple[str, int]], run_dir: str = RUN_DIR, docker_proxy: str = DOCKER_PROXY) -> str:
    """The guest script for ports bound to its loopback only, one line per port: a DNAT rule
    to 127.0.0.1:H for each of `dnat`, a docker-proxy to [::1]:H for each of `proxies`.
    Idempotent: run it again with the same sets and nothing changes but the dead proxies."""
    rules = "".join(
        f"iptables -t nat -A PYMACHINE -i \"$nic\" -p {proto} --dport {port} -j DNAT --to-destination 127.0.0.1:{port}; " for proto, port in sorted(dnat)
    )
    wants = "".join(f"want {proto}-{port}\n" for proto, port in sorted(proxies))
    return (
        _DNAT_HEAD.format(run=run_dir)
        + rules
        + _PROXY_HEAD.format(run=run_dir, bin=docker_proxy)
        + wants
        + _PROXY_TAIL.format(wait=PROXY_WAIT)
    )


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _busy_reason(forward: PortForward, detail: str) -> str:
    """Why the host refused the port: try binding it the same way to learn the errno."""
    import errno
    import socket

    kind = socket.SOCK_STREAM if forward.protocol == "tcp" else socket.SOCK_DGRAM
    try:
        with socket.socket(socket.AF_INET, kind) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((forward.host_ip, forward.host_port))
    except PermissionError:
        return f"host port {forward.host_port} is privileged (below 1024) and pymachine does not run as root"
    except OSError as exc:
        if exc.errno == errno.EADDRNOTAVAIL:
            return f"host address {forward.host_ip} does not exist on this host"
    return f"host port {forward.host_ip}:{forward.host_port}/{forward.protocol} is in use on this host"


def _other_machine_with(store: Store, me: str, key: tuple[str, int]) -> str | None:
    """Another machine whose watcher holds this host port as an active forward."""
    for name in store.names():
        if name == me:
            continue
        directory = store.machine_dir(name)
        try:
            data = json.loads((directory / STATE_FILE).read_text())
        except (OSError, ValueError):
            continue
        for item in data.get("forwards", []):
            if item.get("state") == "active" and (item.get("protocol"), item.get("host_port")) == key:
                if WatcherProcess(store.root, directory).pid() is not None:
                    return name
    return None
