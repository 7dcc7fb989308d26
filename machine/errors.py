"""The one error root. Every message says what happened, then the command to run next.

The CLI prints `str(error)` as a single line and exits 1; nothing below MachineError
ever reaches the user as a traceback.
"""

from __future__ import annotations

import errno
from pathlib import Path


class MachineError(Exception):
    """Something the user can understand and act on."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message.rstrip(".")
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}. {self.hint}"
        return f"{self.message}."


class InvalidName(MachineError):
    """A machine name that the store or a hypervisor would not accept."""


class MachineNotFound(MachineError):
    """No machine of that name in the store."""

    def __init__(self, name: str) -> None:
        super().__init__(f"Machine '{name}' does not exist", "Run `pymachine ls` to see your machines")
        self.name = name


class MachineExists(MachineError):
    """`create` for a name already taken."""

    def __init__(self, name: str, running: bool = False) -> None:
        if running:
            super().__init__(
                f"Machine '{name}' already exists and is running",
                f"Run `eval $(pymachine env {name})` to use it, or `pymachine rm {name}` first to make it anew",
            )
        else:
            super().__init__(
                f"Machine '{name}' already exists",
                f"Run `pymachine start {name}`, or `pymachine rm {name}` first to make it anew",
            )


class MachineStateError(MachineError):
    """The machine is not in a state the command can work from."""


class MachineRemoved(MachineStateError):
    """The machine's folder was removed while a command worked on it."""


class StoreError(MachineError):
    """The store on disk is unreadable, locked, or from another version."""


class DriverError(MachineError):
    """A driver could not do what was asked."""


class DriverNotAvailable(DriverError):
    """The hypervisor's tools are missing or unusable on this host."""


class CommandFailed(DriverError):
    """An external program failed; carries its argv and both output streams."""

    def __init__(
        self,
        argv: list[str],
        returncode: int | None,
        stdout: str,
        stderr: str,
        hint: str | None = None,
    ) -> None:
        detail = (stderr.strip() or stdout.strip()).splitlines()
        last = detail[-1] if detail else f"exit status {returncode}"
        super().__init__(f"`{' '.join(argv[:3])}` failed: {last}", hint)
        self.argv = list(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr


class ImageError(MachineError):
    """The boot image is missing, damaged, or cannot be built here."""


class PortUnavailable(MachineError):
    """A host port that a forward needs is taken or not allowed."""


class SSHError(MachineError):
    """SSH to the guest failed (connection, authentication or host key)."""


class SSHTimeout(SSHError):
    """A command in the guest ran past its deadline; carries what it printed so far."""

    def __init__(self, message: str, stdout: str = "", stderr: str = "", hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.stdout = stdout
        self.stderr = stderr


class ProvisionError(MachineError):
    """Installing or starting the Docker engine in the guest failed."""


class EngineFailed(ProvisionError):
    """The guest answers SSH, but its Docker engine could not be brought up. The VM is
    left running, so that `pymachine ssh` can get in and a later `start` or `provision`
    can recover."""


class ConfigRefused(ProvisionError):
    """dockerd's own check refused new engine settings; the configuration in use, and a
    dockerd running with it, were left as they were."""


class DataDiskFull(EngineFailed):
    """The guest's data disk (/var/lib/docker) has no room left."""


class HypervisorConflict(MachineError):
    """Another hypervisor runs VMs, and starting ours could hang the host."""


class Interrupted(MachineError):
    """Ctrl-C or a signal stopped a command part way; what it made is marked Error."""


class StoreUnwritable(StoreError):
    """The disk under the store is full, or mounted read-only."""


def unwritable_store(exc: BaseException, root: Path) -> StoreUnwritable | None:
    """The one-line error for an OSError that means the store's disk takes no writes:
    full (ENOSPC, EDQUOT) or read-only (EROFS); None for any other error."""
    if not isinstance(exc, OSError):
        return None
    root = Path(root).absolute()
    where = root
    if isinstance(exc.filename, str) and exc.filename:
        # The store is named whenever the path lies in it; another folder (the cache) by itself.
        path = Path(exc.filename).absolute()
        if path != root and root not in path.parents:
            where = path.parent
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreUnwritable(
            f"No space left on the disk that holds {where}" + ("" if where == root else f" (pymachine's store is {root})"),
            f"Free some space there (`df -h {where}` shows it), then run the command again",
        )
    if exc.errno == errno.EROFS:
        return StoreUnwritable(
            f"{where} is on a read-only file system" + ("" if where == root else f" (pymachine's store is {root})"),
            "Remount it read-write, or run `pymachine --storage-path FOLDER ...` with a writable FOLDER",
        )
    return None
