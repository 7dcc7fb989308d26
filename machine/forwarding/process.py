"""The forward watcher's processes, seen from outside: start them, find them, stop them, read them.

Two processes per running machine, both `python -m pymachine.cli.watcher`:

    keeper    `... --keep --storage-path ROOT NAME`: starts the watcher and starts it
              again within a second when it dies of anything but a clean exit (a
              kill -9, a crash), so no pymachine command has to notice. It does nothing else.
    watcher   `... --storage-path ROOT NAME`: the loop (pymachine.forwarding.watcher).

Each is known by its pidfile and by a mark in its command line that no other machine's
process carries: the module, the store's folder and the machine's name as whole
arguments. A reused PID is therefore never taken for this machine's watcher.

Kept apart from pymachine.forwarding.watcher (the loop itself, with its heavier imports)
because every command touches this, `pymachine env` included: nothing heavier than the
store is imported here.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pymachine.errors import MachineError
from pymachine.procs import read_pidfile, running_from, terminate
from pymachine.store import atomic_write

if TYPE_CHECKING:
    from pymachine.driver import Driver, PortForward

PIDFILE = "watcher.pid"
LOCKFILE = "watcher.lock"
KEEPER_PIDFILE = "watcher-keeper.pid"
KEEPER_LOCKFILE = "watcher-keeper.lock"
LOGFILE = "watcher.log"
STATE_FILE = "forwards.json"
#: The module both processes run as.
MARKER = "pymachine.cli.watcher"
#: How the watcher tells its keeper why it ended. Anything else (a signal, a traceback's
#: exit 1) is a crash, and the keeper starts it again.
EXIT_DONE = 0  # stopped on purpose, or its machine stopped: do not restart
EXIT_GIVE_UP = 3  # it cannot run (the machine's config is unusable): restarting will not help
EXIT_BUSY = 4  # another watcher already runs for this machine: watch that one


def storage_root(directory: Path) -> Path:
    """The store's folder as both processes' command lines spell it (machines/NAME's grandparent)."""
    return Path(os.path.abspath(Path(directory).parent.parent))


def watcher_argv(directory: Path, keep: bool) -> list[str | Path]:
    """The command line of the watcher (keep False) or of its keeper (keep True)."""
    flag = ["--keep"] if keep else []
    return [sys.executable, "-m", MARKER, *flag, "--storage-path", storage_root(directory), Path(directory).name]


def process_mark(directory: Path, keep: bool) -> list[str | Path]:
    """The whole arguments only this machine's watcher (or keeper) carries; the store is a
    Path, so it is found however the store was reached (procs.carries)."""
    return watcher_argv(directory, keep)[2:]


class WatcherProcess:
    """Start, find and stop the watcher (and its keeper) of the machine in `directory`."""

    def __init__(self, root: Path, directory: Path) -> None:
        self.root = Path(root)
        self.directory = Path(directory)
        self.name = self.directory.name

    def pid(self) -> int | None:
        """The watcher's PID, while it runs."""
        return running_from(self.directory / PIDFILE, process_mark(self.directory, keep=False))

    def keeper_pid(self) -> int | None:
        """The keeper's PID, while it runs."""
        return running_from(self.directory / KEEPER_PIDFILE, process_mark(self.directory, keep=True))

    def running(self) -> bool:
        """True while a keeper looks after the watcher (or, keeper gone, the watcher runs)."""
        return self.keeper_pid() is not None or self.pid() is not None

    def ensure_running(self) -> int | None:
        """Start the keeper (which starts the watcher) unless one runs; does not wait."""
        pid = self.keeper_pid()
        if pid is not None:
            return pid
        return spawn(self.directory)

    def stop(self, driver: Driver | None = None) -> None:
        """Stop the keeper and the watcher; then, where the hypervisor keeps forwards in the
        VM's settings, remove the ones it made while the VM still runs."""
        from pymachine.driver import Feature, State

        # The keeper first, so that it does not start the watcher again; it stops its
        # watcher itself, and one it adopted is stopped here.
        keeper = self.keeper_pid()
        if keeper is not None:
            terminate(keeper, timeout=10.0)
        pid = self.pid()
        if pid is not None:
            terminate(pid, timeout=5.0)
        # A keeper that had to be killed left its pidfile, and the watcher may have started
        # a new one before it went (cli/watcher.py's keeper guard): stop that one too.
        keeper = self.keeper_pid()
        if keeper is not None:
            terminate(keeper, timeout=10.0)
        (self.directory / KEEPER_PIDFILE).unlink(missing_ok=True)
        (self.directory / PIDFILE).unlink(missing_ok=True)
        if driver is not None and driver.supports(Feature.STOPPED_FORWARDS):
            try:
                if driver.state() == State.RUNNING:
                    for forward in driver.list_forwards():
                        driver.remove_forward(forward)
            except MachineError as exc:
                import logging

                logging.getLogger("pymachine.watcher").warning("could not remove forwards of %s: %s", self.name, exc)
        state = self.directory / STATE_FILE
        if state.exists():
            atomic_write(state, json.dumps({"watcher": {"state": "stopped"}, "forwards": []}, indent=2), mode=0o644)

    def report(self, driver: Driver | None = None) -> dict[str, Any]:
        """What `pymachine ports` shows: the watcher's health and every forward.

        With the machine's driver, the forwards are checked as of this call: one the
        watcher recorded as active is shown active only while the VM runs, the hypervisor
        still has it, and something listens on its host port.
        """
        try:
            data = json.loads((self.directory / STATE_FILE).read_text())
        except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
            data = {"watcher": {}, "forwards": []}
        watcher = dict(data.get("watcher") or {})
        pid = self.pid()
        if pid is None:
            if self.keeper_pid() is not None:
                # revived by this very command, or restarted by its keeper a moment ago
                watcher = {"state": "starting", "detail": "its keeper is starting it"}
            else:
                watcher = {"state": "not running", "detail": "it runs while the machine runs"}
        elif watcher.get("pid") != pid or watcher.get("state") == "stopped":
            # forwards.json still holds what the previous watcher last wrote
            watcher = {"state": "starting", "pid": pid}
        else:
            watcher.setdefault("state", "starting")
        forwards = [dict(item) for item in data.get("forwards", []) if isinstance(item, dict)]
        if driver is not None:
            check_active(forwards, driver)
        return {"machine": self.name, "watcher": watcher, "forwards": forwards}


def check_active(forwards: list[dict[str, Any]], driver: Driver) -> None:
    """Mark each recorded active forward inactive, with the reason, unless it still works now."""
    from pymachine.driver import PortForward, State

    active = [item for item in forwards if item.get("state") == "active"]
    if not active:
        return
    try:
        state = driver.state()
    except MachineError as exc:
        state, problem = None, str(exc)
    if state != State.RUNNING:
        reason = f"the machine is {str(state).lower()}" if state is not None else f"the machine's state is unknown: {problem}"
        for item in active:
            item.update(state="inactive", reason=reason)
        return
    try:
        actual: set[PortForward] | None = set(driver.list_forwards())
    except MachineError:
        actual = None  # the hypervisor did not answer: the host check alone decides
    for item in active:
        try:
            forward = PortForward(item["protocol"], item["host_ip"], int(item["host_port"]), int(item["guest_port"]))
        except (KeyError, TypeError, ValueError):
            item.update(state="inactive", reason="its record is damaged")
            continue
        hidden = int(item.get("hypervisor_port") or forward.host_port)
        # A relayed forward (forwarding/relay.py): the hypervisor holds an unpublished port.
        expected = forward if hidden == forward.host_port else PortForward(forward.protocol, "127.0.0.1", hidden, forward.guest_port)
        if actual is not None and expected not in actual:
            item.update(state="inactive", reason=f"the {driver.name} VM has no such forward any more")
        elif not host_port_listening(forward):
            item.update(state="inactive", reason=f"nothing listens on {forward.host_ip}:{forward.host_port}/{forward.protocol} on this host")


def host_port_listening(forward: PortForward) -> bool:
    """True if some socket on this host holds the forward's port: the hypervisor's listener.

    Nothing is connected to (that would reach the container): on Linux the kernel's socket
    tables say it; elsewhere, a bind of the wildcard address to that port failing does.
    """
    tables = _proc_net_ports(forward.protocol)
    if tables is not None:
        return forward.host_port in tables
    kind = socket.SOCK_STREAM if forward.protocol == "tcp" else socket.SOCK_DGRAM
    ipv6 = ":" in forward.host_ip
    with socket.socket(socket.AF_INET6 if ipv6 else socket.AF_INET, kind) as probe:
        try:
            if ipv6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            probe.bind(("::" if ipv6 else "0.0.0.0", forward.host_port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def _proc_net_ports(protocol: str) -> set[int] | None:
    """Ports with a listening TCP socket (or any bound UDP socket), from /proc/net; None off Linux."""
    files = [Path(f"/proc/net/{protocol}"), Path(f"/proc/net/{protocol}6")]
    if not files[0].exists():
        return None
    ports: set[int] = set()
    for path in files:
        try:
            lines = path.read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 4:
                continue
            # TCP state 0A is LISTEN; a UDP socket bound to the port shows in any state.
            if protocol == "tcp" and fields[3] != "0A":
                continue
            ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def spawn(directory: Path) -> int | None:
    """Start the keeper detached (it starts the watcher); both outlive the command."""
    if not Path(directory).is_dir():
        return None
    import subprocess

    with open(Path(directory) / LOGFILE, "ab") as log_file:
        process = subprocess.Popen(
            watcher_argv(directory, keep=True),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            start_new_session=True,
            close_fds=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    return process.pid


def revive_if_crashed(directory: Path) -> bool:
    """Cheap check for fast paths: a pidfile whose process is gone means a crash.

    A keeper and a watcher that stop cleanly remove their pidfiles, so this never
    restarts one that was stopped on purpose. Returns True if it started a new keeper.
    """
    directory = Path(directory)
    left = read_pidfile(directory / KEEPER_PIDFILE) or read_pidfile(directory / PIDFILE)
    if left is None or running_from(directory / KEEPER_PIDFILE, process_mark(directory, keep=True)) is not None:
        return False
    spawn(directory)
    return True
