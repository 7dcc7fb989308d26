"""The forward watcher's process: `python -m pymachine.cli.watcher --storage-path DIR NAME`.

Started detached by pymachine.forwarding.process after a machine becomes ready. It
holds the machine's watcher.lock for as long as it runs (so two never run), writes its
pid to watcher.pid, logs to stderr (which the starter points at watcher.log), and
leaves on SIGTERM. The loop itself is pymachine.forwarding.watcher.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from pymachine.errors import MachineError
from pymachine.forwarding.process import LOCKFILE, PIDFILE
from pymachine.forwarding.watcher import Stop
from pymachine.home import Home
from pymachine.locking import FileLock, LockBusy
from pymachine.machine import Machine
from pymachine.procs import read_pidfile
from pymachine.store import atomic_write

log = logging.getLogger("pymachine.watcher")


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] != "--storage-path":
        print("usage: python -m pymachine.cli.watcher --storage-path DIR NAME", file=sys.stderr)
        return 2
    root, name = Path(argv[1]), argv[2]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    logging.getLogger("paramiko").setLevel(logging.WARNING)
    try:
        machine = Machine(Home(root), name)
    except MachineError as exc:
        log.error("watcher for %s cannot run: %s", name, exc)
        return 1
    directory = machine.directory
    lock = FileLock(directory / LOCKFILE)
    try:
        lock.acquire(timeout=0)
    except LockBusy:
        return 0  # another watcher runs for this machine
    except FileNotFoundError:
        log.error("watcher for %s cannot run: the machine's folder is gone", name)
        return 1
    atomic_write(directory / PIDFILE, f"{os.getpid()}\n", mode=0o644)

    def stop(signum: int, frame: Any) -> None:
        raise Stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("watcher for %s started (pid %d)", name, os.getpid())
    watcher = None
    try:
        watcher = machine.forward_watcher()
        watcher.run()
    except Stop:
        log.info("watcher for %s stopped", name)
    except MachineError as exc:
        log.error("watcher for %s cannot run: %s", name, exc)
        return 1
    finally:
        if watcher is not None:
            watcher.close()
        if read_pidfile(directory / PIDFILE) == os.getpid():
            (directory / PIDFILE).unlink(missing_ok=True)
        lock.release()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
