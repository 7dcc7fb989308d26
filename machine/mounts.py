"""Host folders shared into the guest, so `docker run -v $PWD:/app` finds $PWD.

Docker resolves a bind mount's source inside the VM, not on the host. docker-machine
shared /Users, Colima and Docker Desktop share the home folder, and pymachine does the
same: by default the user's home folder appears in the guest at the same path. The
driver carries each folder (QEMU: virtio-9p); the guest mounts it at boot, reading the
list from the config medium.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from pymachine.driver import Mount
from pymachine.errors import MachineError

#: Guest paths the guest itself lives on: a share there would hide the guest's own files.
_GUEST_SYSTEM = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib64", "/mnt", "/proc", "/root", "/run", "/sbin", "/sys", "/usr", "/var")
#: Paths that may hold shares below them, but not be one.
_GUEST_PARENTS = ("/", "/tmp", "/home")


def parse_mount(text: str) -> Mount:
    """`HOST[:GUEST][:ro|rw]`: a host folder, where the guest sees it, and whether it may write."""
    parts = text.split(":")
    writable = True
    if len(parts) > 1 and parts[-1] in ("ro", "rw"):
        writable = parts.pop() == "rw"
    if len(parts) > 2 or not parts[0]:
        raise MachineError(f"--mount takes HOST[:GUEST][:ro], not '{text}'", "Run `pymachine create --help`")
    host = Path(os.path.expanduser(parts[0])).resolve()
    if not host.is_dir():
        raise MachineError(f"--mount {text}: {host} is not a folder on this host", "Create it, or run `pymachine create` with another --mount folder")
    guest = parts[1] if len(parts) == 2 and parts[1] else str(host)
    check_guest_path(guest, text)
    return Mount(str(host), guest, writable)


def check_guest_path(guest: str, given: str) -> None:
    """Refuse a guest path that is relative, odd, or would hide the guest's own files."""
    path = PurePosixPath(guest)
    if not path.is_absolute() or any(part in (".", "..") for part in path.parts) or "\n" in guest:
        raise MachineError(f"--mount {given}: the guest path must be absolute, without '.' or '..'", "Run `pymachine create --help`")
    normal = str(path)
    taken = normal if normal in _GUEST_PARENTS else next((s for s in _GUEST_SYSTEM if normal == s or normal.startswith(s + "/")), None)
    if taken:
        raise MachineError(
            f"--mount {given}: the guest needs {taken} for itself",
            "Run `pymachine create` with another guest path, as in --mount HOST:/srv/NAME",
        )


def default_mounts(home: str | None = None) -> list[Mount]:
    """The user's home folder at the same path, where the guest can take it there."""
    home = home or os.path.expanduser("~")
    try:
        resolved = str(Path(home).resolve())
        check_guest_path(resolved, resolved)
    except (MachineError, OSError):
        return []
    return [Mount(resolved, resolved)] if Path(resolved).is_dir() else []


def sharing_summary(mounts: list[Mount], requested: list[str] | None, supported: bool, driver: str, arch: str = "amd64") -> str:
    """One line for `create`: what the guest sees of this host's folders, and what not."""
    if mounts:
        shown = ", ".join(str(m) for m in mounts)
        return f"Shared with the guest: {shown}. Other host paths given to `docker run -v` are empty folders in the guest"
    if requested is not None:
        return "No host folder is shared (--no-mounts)"
    if not supported:
        why = f"the {driver} driver shares no folders with {arch} guests"
    else:
        home = os.path.expanduser("~")
        why = f"your home folder {home} cannot appear at the same path in the guest"
        try:
            check_guest_path(str(Path(home).resolve()), home)
        except MachineError:
            pass
        except OSError:
            why = f"your home folder {home} cannot be read"
        else:
            if not Path(home).is_dir():
                why = f"your home folder {home} does not exist"
    return f"No host folder is shared: {why}. `docker run -v HOST-PATH:...` will see an empty folder; share one with --mount HOST:/srv/NAME"


def resolve_mounts(requested: list[str] | None, supported: bool, driver: str, arch: str = "amd64") -> list[Mount]:
    """What `create` shares: the home folder when nothing was asked, none for `[]`."""
    if requested is None:
        return default_mounts() if supported else []
    if requested and not supported:
        raise MachineError(
            f"The {driver} driver cannot share host folders with {arch} guests yet",
            "Run `pymachine create` without --mount, or use -d qemu",
        )
    mounts = [parse_mount(item) for item in requested]
    guests = [m.guest for m in mounts]
    for guest in guests:
        if guests.count(guest) > 1:
            raise MachineError(f"--mount: two folders would both appear at {guest} in the guest", "Run `pymachine create` with one guest path per --mount")
    return mounts
