"""The forward watcher's process, seen from outside: start it, find it, stop it, read it.

Kept apart from pymachine.forwarding.watcher (the loop itself, with its heavier imports)
because every command touches this, `pymachine env` included: nothing heavier than the
store is imported here.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pymachine.errors import MachineError
from pymachine.procs import cmdline, read_pidfile, running_from, started_with, terminate
from pymachine.store import atomic_write

if TYPE_CHECKING:
    from pymachine.driver import Driver

PIDFILE = "watcher.pid"
LOCKFILE = "watcher.lock"
LOGFILE = "watcher.log"
STATE_FILE = "forwards.json"
#: The module the watcher runs as; also how its process is told from others.
MARKER = "pymachine.cli.watcher"


class WatcherProcess:
    """Start, find and stop the watcher process of the machine in `directory`."""

    def __init__(self, root: Path, directory: Path) -> None:
        self.root = Path(root)
        self.directory = Path(directory)
        self.name = self.directory.name

    def pid(self) -> int | None:
        return watcher_of(self.directory)

    def ensure_running(self) -> int | None:
        """Start the watcher unless one runs; returns without waiting for it."""
        pid = self.pid()
        if pid is not None:
            return pid
        return spawn(self.root, self.directory)

    def stop(self, driver: Driver | None = None) -> None:
        """Stop the watcher; then, where the hypervisor keeps forwards in the VM's settings,
        remove the ones it made while the VM still runs."""
        from pymachine.driver import Feature, State

        pid = self.pid()
        if pid is not None:
            terminate(pid, timeout=5.0)
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

    def report(self) -> dict[str, Any]:
        """What `pymachine ports` shows: the watcher's health and every forward."""
        try:
            data = json.loads((self.directory / STATE_FILE).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            data = {"watcher": {}, "forwards": []}
        watcher = dict(data.get("watcher") or {})
        pid = self.pid()
        if pid is None:
            watcher = {"state": "not running", "detail": "it starts with the machine; `pymachine ports` restarts it if the machine runs"}
        else:
            watcher["pid"] = pid
            watcher.setdefault("state", "starting")
        return {"machine": self.name, "watcher": watcher, "forwards": data.get("forwards", [])}


def watcher_of(directory: Path) -> int | None:
    """The PID of the watcher of the machine in `directory`, from its pidfile: a live
    process started as `-m pymachine.cli.watcher --storage-path ROOT NAME` for this very
    folder. A copied folder's stale pidfile names another machine's watcher: not ours."""
    pid = running_from(directory / PIDFILE, MARKER)
    if pid is None:
        return None
    argv = cmdline(pid)
    if argv is None:
        return pid  # the OS will not say more than the marker
    if not argv or argv[-1] != directory.name or not started_with(argv, "--storage-path", directory.parent.parent):
        return None
    return pid


def spawn(root: Path, directory: Path) -> int | None:
    """Start the watcher detached; it outlives the command that started it."""
    if not directory.is_dir():
        return None
    import subprocess

    # Absolute: watcher_of knows the watcher by this path, from whatever folder it runs in.
    root = Path(root).absolute()

    with open(directory / LOGFILE, "ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", MARKER, "--storage-path", str(root), directory.name],
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

    A watcher that stops cleanly removes its pidfile, so this never restarts one that
    was stopped on purpose. Returns True if it started a new one.
    """
    pidfile = directory / PIDFILE
    pid = read_pidfile(pidfile)
    if pid is None or watcher_of(directory) is not None:
        return False
    spawn(directory.parent.parent, directory)
    return True
