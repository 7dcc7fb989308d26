"""The forward watcher's process, seen from outside: start it, find it, stop it, read it.

Kept apart from machine.watcher (the loop itself, with its heavier imports) because
every command touches this, `pymachine env` included.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import MachineError
from .procs import read_pidfile, running_from, terminate
from .store import STATUS_READY, atomic_write

if TYPE_CHECKING:
    from .driver import Driver

# Nothing heavier than the store at import time: `pymachine env` imports this module.

PIDFILE = "watcher.pid"
LOCKFILE = "watcher.lock"
LOGFILE = "watcher.log"
STATE_FILE = "forwards.json"
MARKER = "machine.watcher"


# -- managing the process ----------------------------------------------------------------


class WatcherProcess:
    """Start, find and stop one machine's watcher process."""

    def __init__(self, home: Any, name: str) -> None:
        self.home = home
        self.name = name
        self.directory = home.store.machine_dir(name)

    def pid(self) -> int | None:
        return running_from(self.directory / PIDFILE, MARKER)

    def ensure_running(self) -> int | None:
        """Start the watcher unless one runs; returns without waiting for it."""
        if self.pid() is not None:
            return self.pid()
        return spawn(self.home.root, self.name, self.directory)

    def ensure_running_if_machine_runs(self, machines: Any) -> None:
        """Restart a watcher that died while its machine kept running."""
        if self.pid() is not None:
            return
        try:
            config = machines.load(self.name)
            from .driver import State

            if config.status == STATUS_READY and machines.driver(config).state() == State.RUNNING:
                spawn(self.home.root, self.name, self.directory)
        except MachineError:
            pass

    def stop(self, driver: Driver | None = None) -> None:
        """Stop the watcher; then remove the forwards it made while the VM still runs."""
        from .driver import State

        pid = self.pid()
        if pid is not None:
            terminate(pid, timeout=5.0)
        (self.directory / PIDFILE).unlink(missing_ok=True)
        if driver is not None:
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


def spawn(root: Path, name: str, directory: Path) -> int | None:
    """Start `python -m machine.watcher` detached; it outlives the command that started it."""
    if not directory.is_dir():
        return None
    import subprocess

    with open(directory / LOGFILE, "ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", MARKER, "--storage-path", str(root), name],
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
    if pid is None or running_from(pidfile, MARKER) is not None:
        return False
    root = directory.parent.parent
    spawn(root, directory.name, directory)
    return True


def forward_report(home: Any, name: str) -> dict[str, Any]:
    """What `pymachine ports` shows: the watcher's health and every forward."""
    directory = home.store.machine_dir(name)
    try:
        data = json.loads((directory / STATE_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        data = {"watcher": {}, "forwards": []}
    watcher = dict(data.get("watcher") or {})
    pid = running_from(directory / PIDFILE, MARKER)
    if pid is None:
        watcher = {"state": "not running", "detail": "it starts with the machine; `pymachine ports` restarts it if the machine runs"}
    else:
        watcher["pid"] = pid
        watcher.setdefault("state", "starting")
    return {"machine": name, "watcher": watcher, "forwards": data.get("forwards", [])}
