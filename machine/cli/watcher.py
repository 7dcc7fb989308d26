"""The forward watcher's processes: `python -m pymachine.cli.watcher [--keep] --storage-path DIR NAME`.

With --keep it is the keeper, started detached by pymachine.forwarding.process after a
machine becomes ready: it holds watcher-keeper.lock (so two never run), writes
watcher-keeper.pid, and runs the watcher as its child, starting it again within a
second whenever it dies of anything but a clean exit (kill -9, a crash). On SIGTERM it
stops the watcher and leaves. It imports nothing heavy and holds no connection, so
there is little in it to fail.

Without --keep it is the watcher: it holds the machine's watcher.lock for as long as it
runs, writes its pid to watcher.pid, logs to stderr (which the starter points at
watcher.log), and leaves on SIGTERM. The loop itself is pymachine.forwarding.watcher.
Its exit status tells the keeper what to do (see pymachine.forwarding.process). It looks
after its keeper in turn: a keeper killed (its pidfile left behind, which only a crash
does) is started again within KEEPER_CHECK seconds, and adopts the running watcher.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pymachine.forwarding.process import (
    EXIT_BUSY,
    EXIT_DONE,
    EXIT_GIVE_UP,
    KEEPER_LOCKFILE,
    KEEPER_PIDFILE,
    LOCKFILE,
    PIDFILE,
    WatcherProcess,
    spawn,
    watcher_argv,
)
from pymachine.locking import FileLock, LockBusy
from pymachine.procs import read_pidfile
from pymachine.store import atomic_write

if TYPE_CHECKING:
    from pymachine.machine import Machine

log = logging.getLogger("pymachine.watcher")

#: The first restart comes this soon after a crash; quick repeated crashes back off up to
#: RESTART_MAX, so a watcher that cannot live is not restarted in a tight loop.
RESTART_PAUSE = 0.2
RESTART_MAX = 3.0
#: A watcher that ran this long before it died was not crashing in a loop.
STABLE_AFTER = 10.0
#: How often the watcher checks that its keeper still lives (seconds).
KEEPER_CHECK = 1.0


def main(argv: list[str]) -> int:
    keep = bool(argv) and argv[0] == "--keep"
    args = argv[1:] if keep else argv
    if len(args) != 3 or args[0] != "--storage-path":
        print("usage: python -m pymachine.cli.watcher [--keep] --storage-path DIR NAME", file=sys.stderr)
        return 2
    root, name = Path(args[1]), args[2]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    logging.getLogger("paramiko").setLevel(logging.WARNING)
    directory = root / "machines" / name
    return run_keeper(directory) if keep else run_watcher(root, name)


@contextmanager
def only_one(directory: Path, lockfile: str, pidfile: str, busy: int) -> Iterator[int | None]:
    """For the block, this process is the only one of its kind for the machine in
    `directory`: it holds `lockfile` (taken without waiting) and its PID is in `pidfile`.

    Yields None then, or, having written nothing, the exit status to leave with when it
    lost the race: `busy` when another process holds the lock, EXIT_GIVE_UP when the
    machine's folder is gone. On leaving it removes the pidfile if that still names this
    process, then lets go of the lock.
    """
    lock = FileLock(directory / lockfile)
    refused = None
    try:
        lock.acquire(timeout=0)
    except LockBusy:
        refused = busy
    except FileNotFoundError:
        refused = EXIT_GIVE_UP
    if refused is not None:
        yield refused
        return
    try:
        atomic_write(directory / pidfile, f"{os.getpid()}\n", mode=0o644)
        yield None
    finally:
        if read_pidfile(directory / pidfile) == os.getpid():
            (directory / pidfile).unlink(missing_ok=True)
        lock.release()


def run_keeper(directory: Path) -> int:
    # A lost race: another keeper looks after this machine (EXIT_DONE), or it is gone.
    with only_one(directory, KEEPER_LOCKFILE, KEEPER_PIDFILE, busy=EXIT_DONE) as refused:
        if refused is not None:
            return refused
        return _keep(directory)


def _keep(directory: Path) -> int:
    """The keeper's loop: start the watcher, and again after each crash, until stopped."""
    name = directory.name
    state: dict[str, Any] = {"stopping": False, "child": None}

    def stop(signum: int, frame: Any) -> None:
        state["stopping"] = True
        child = state["child"]
        if child is not None and child.poll() is None:
            child.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    pause = RESTART_PAUSE
    while not state["stopping"] and directory.is_dir():
        started = time.monotonic()
        child = subprocess.Popen(watcher_argv(directory, keep=False), stdin=subprocess.DEVNULL, close_fds=True)
        state["child"] = child
        if state["stopping"]:
            child.terminate()
        code = child.wait()
        state["child"] = None
        if state["stopping"] or code in (EXIT_DONE, EXIT_GIVE_UP):
            break
        if code == EXIT_BUSY:
            # A watcher the keeper did not start (its keeper died): look after that one.
            _wait_while(lambda: WatcherProcess(directory.parent.parent, directory).pid() is not None, state)
            continue
        how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
        lived = time.monotonic() - started
        pause = RESTART_PAUSE if lived >= STABLE_AFTER else min(pause * 2, RESTART_MAX)
        log.warning("watcher for %s ended (%s) after %.1fs; its keeper starts it again in %.1fs", name, how, lived, pause)
        _wait_while(lambda: True, state, pause)
    return EXIT_DONE


def _wait_while(condition: Any, state: dict[str, Any], limit: float | None = None) -> None:
    deadline = None if limit is None else time.monotonic() + limit
    while not state["stopping"] and condition():
        if deadline is not None and time.monotonic() >= deadline:
            return
        time.sleep(0.1)


def run_watcher(root: Path, name: str) -> int:
    from pymachine.errors import MachineError
    from pymachine.home import Home
    from pymachine.machine import Machine

    try:
        machine = Machine(Home(root), name)
    except MachineError as exc:
        log.error("watcher for %s cannot run: %s", name, exc)
        return EXIT_GIVE_UP
    # A lost race: another watcher runs for this machine (EXIT_BUSY), or its folder is gone.
    with only_one(machine.directory, LOCKFILE, PIDFILE, busy=EXIT_BUSY) as refused:
        if refused == EXIT_GIVE_UP:
            log.error("watcher for %s cannot run: the machine's folder is gone", name)
        if refused is not None:
            return refused
        return _watch(machine, name)


def _watch(machine: Machine, name: str) -> int:
    """The watcher's loop until SIGTERM, or until its machine stops."""
    from pymachine.errors import MachineError
    from pymachine.forwarding.watcher import Stop

    def stop(signum: int, frame: Any) -> None:
        raise Stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("watcher for %s started (pid %d)", name, os.getpid())
    watcher = None
    scanner = None
    done = threading.Event()
    threading.Thread(target=_guard_keeper, args=(machine.directory, done), name="keeper-guard", daemon=True).start()
    try:
        watcher = machine.forward_watcher()
        scanner = machine.listener_scanner(watcher)
        scanner.start()
        watcher.run()
    except Stop:
        log.info("watcher for %s stopped", name)
    except MachineError as exc:
        log.error("watcher for %s cannot run: %s", name, exc)
        return EXIT_GIVE_UP
    finally:
        done.set()
        if scanner is not None:
            scanner.stop()
        if watcher is not None:
            watcher.close()
    return EXIT_DONE


def _guard_keeper(directory: Path, done: threading.Event) -> None:
    """Until `done`: start a keeper again when the one that should be there was killed.

    A keeper that stops on purpose removes its pidfile (only_one), so a pidfile naming
    a dead process is a crash; the new keeper finds this watcher holding the lock and
    looks after it. `WatcherProcess.stop` stops a keeper started this way too.
    """
    process = WatcherProcess(directory.parent.parent, directory)
    while not done.wait(KEEPER_CHECK):
        if read_pidfile(directory / KEEPER_PIDFILE) is None or process.keeper_pid() is not None:
            continue
        log.warning("the keeper of %s's watcher is gone; the watcher starts a new one", directory.name)
        (directory / KEEPER_PIDFILE).unlink(missing_ok=True)
        spawn(directory)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
