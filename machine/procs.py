"""Processes pymachine starts (QEMU, the forward watcher): pidfiles, liveness, stopping.

Everything is by PID, checked against the command line where the OS tells it, so a
stale pidfile whose PID was reused by another program is never signalled.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path


def read_pidfile(path: Path) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        pid = int(text.split()[0])
    except (ValueError, IndexError):
        return None
    return pid if pid > 0 else None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purposes.
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return True


def cmdline(pid: int) -> list[str] | str | None:
    """What the OS says the process was started with: its argv (Linux, from /proc), or
    its command line joined with spaces (macOS `ps -o command=`); None when it will not say."""
    proc = Path(f"/proc/{pid}/cmdline")
    if proc.exists():
        try:
            return [a.decode(errors="replace") for a in proc.read_bytes().split(b"\0") if a]
        except OSError:
            return None
    if sys.platform == "darwin":
        return ps_command(pid)
    return None


def start_time(pid: int) -> str | None:
    """When the process started, as the OS tells it (with its PID, a process's identity);
    None when the OS will not say."""
    try:
        # Field 22 of /proc/PID/stat, after the ")" that ends the command's name.
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        pass
    if sys.platform == "darwin":
        try:
            out = subprocess.run(["ps", "-o", "lstart=", "-p", str(pid)], capture_output=True, text=True, timeout=2, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return "-".join(out.stdout.split()) or None
    return None


def ps_command(pid: int, ps: str = "ps") -> str | None:
    """`ps -o command= -p PID`: the command line joined with spaces (spaces inside an
    argument cannot be told from those between arguments), or None for no such process."""
    try:
        out = subprocess.run([ps, "-o", "command=", "-p", str(pid)], capture_output=True, text=True, timeout=2)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = out.stdout.strip()
    return text if out.returncode == 0 and text else None


def carries(command: list[str] | str, mark: Sequence[str | Path]) -> bool:
    """True if the command line holds `mark`, consecutive whole arguments (such as
    ["-pidfile", Path("/home/u/.docker/machine/machines/dev/qemu.pid")]). Whole arguments:
    the mark of machine `dev` is not found in the command line of machine `dev2`, nor
    `machines/dev/qemu.pid` in `machines/devcopy/qemu.pid`. A Path in the mark matches
    an argument that names the same file: as given, or either with symlinks resolved, so
    a store reached through a symlink is the same store.

    macOS's ps gives the command line as one string (spaces inside an argument cannot be
    told from those between arguments): there the mark must stand between spaces or ends.
    """
    choices = [_spellings(word) for word in mark]
    if not choices:
        return False
    if isinstance(command, str):
        line = f" {command.strip()} "
        return any(f" {' '.join(words)} " in line for words in itertools.product(*choices))
    size = len(choices)
    paths = [isinstance(word, Path) for word in mark]
    return any(
        all(arg in choice or (path and os.path.isabs(arg) and os.path.realpath(arg) in choice) for arg, choice, path in zip(command[i : i + size], choices, paths))
        for i in range(len(command) - size + 1)
    )


def _spellings(word: str | Path) -> tuple[str, ...]:
    """How a command line may spell one word of a mark: a string as it is; a path as
    given, or with its symlinks resolved."""
    if isinstance(word, Path):
        return tuple(dict.fromkeys((str(word), os.path.realpath(word))))
    return (word,)


def running_from(pidfile: Path, mark: Sequence[str | Path]) -> int | None:
    """The PID in `pidfile` if that process is alive and its command line carries `mark`.

    The mark is unique to one machine (its pidfile's path, its folder), so a PID that
    was reused, by another program or by another machine's process, is never taken
    for this machine's own. Where the OS does not say (neither /proc nor macOS), a live
    PID is trusted.
    """
    if isinstance(mark, str):
        raise TypeError("a mark is a sequence of whole arguments, not one string")
    pid = read_pidfile(pidfile)
    if pid is None or not alive(pid):
        return None
    command = cmdline(pid)
    if command is not None and not carries(command, mark):
        return None
    return pid


def terminate(pid: int, timeout: float = 5.0) -> bool:
    """SIGTERM, then SIGKILL after `timeout`; True once the process is gone."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return True
        if wait_gone(pid, wait):
            return True
    return not alive(pid)


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            _reap(pid)
            return True
        time.sleep(0.05)
    return not alive(pid)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def resident_mb(pid: int) -> int | None:
    """The process's resident memory in MiB, or None when the OS will not say."""
    status = Path(f"/proc/{pid}/status")
    if status.exists():
        try:
            for line in status.read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) // 1024
        except (OSError, ValueError, IndexError):
            return None
        return None
    if sys.platform == "darwin":
        try:
            out = subprocess.run(["ps", "-o", "rss=", "-p", str(pid)], capture_output=True, text=True, timeout=2)
            return int(out.stdout.split()[0]) // 1024
        except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
            return None
    return None
