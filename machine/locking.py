"""The one lock pymachine uses: an exclusive flock on a file, with a deadline.

A machine's changing commands hold `machines/NAME/.lock`, the CA is made under
`certs/.lock`, and a forward watcher holds `watcher.lock` for as long as it runs. flock
locks belong to an open file, so the lock goes with the process that held it, however
that process ends: a kill -9 never leaves a machine locked.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path


class LockBusy(Exception):
    """The lock is held by someone else and the deadline passed."""


class FileLock:
    """An exclusive lock on `path`, taken with `acquire` (or `with`) and given back with `release`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, timeout: float = 10.0, poll: float = 0.05, holder: str = "", on_wait: Callable[[str], None] | None = None) -> None:
        """Take the lock, waiting up to `timeout` seconds (0: do not wait).

        `holder` says who holds it once taken (the command), for others to read;
        `on_wait` is told the current holder's words once, when the lock is not free
        at once. Raises LockBusy when another holder keeps it, FileNotFoundError when
        the lock file's folder does not exist.
        """
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already held by this object")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + timeout
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise LockBusy(self.holder()) from None
                if on_wait is not None and not told:
                    told = True
                    on_wait(self.holder())
                time.sleep(poll)
            except BaseException:
                os.close(fd)
                raise
        self._fd = fd
        if holder:
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{holder}\n".encode(), 0)
            except OSError:
                pass  # a full disk: the lock still holds, only its label is missing

    def holder(self) -> str:
        """The words the current (or last) holder left in the lock file; "" if none."""
        try:
            return self.path.read_text(errors="replace").strip()[:200]
        except OSError:
            return ""

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the only descriptor drops the flock

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
