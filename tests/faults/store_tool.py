"""Small store chores for fault tests that run inside another mount namespace.

    python -m tests.faults.store_tool seed ROOT NAME    a stopped, ready QEMU machine
    python -m tests.faults.store_tool hash ROOT         one line: the store's digest
"""

from __future__ import annotations

import hashlib
import os
import stat
import sys
from pathlib import Path

from pymachine.store import STATUS_READY, MachineConfig, Store

#: Written by every command, whatever happens: not part of what must not change.
#: Logs, and the machine lock's label (who holds it now): neither is the user's data.
VOLATILE = ("debug.log", "debug.log.1", ".lock")


def store_digest(root: Path, skip: tuple[str, ...] = VOLATILE) -> str:
    """A digest of every path under `root` (its kind, mode and bytes), minus `skip` names."""
    digest = hashlib.sha256()
    for folder, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for entry in sorted(dirs + files):
            if entry in skip:
                continue
            path = Path(folder) / entry
            info = path.lstat()
            digest.update(f"{path.relative_to(root)}\0{stat.filemode(info.st_mode)}\0".encode())
            if stat.S_ISREG(info.st_mode):
                digest.update(path.read_bytes())
            elif stat.S_ISLNK(info.st_mode):
                digest.update(os.readlink(path).encode())
    return digest.hexdigest()


def seed(root: Path, name: str) -> Path:
    """A ready, stopped QEMU machine, as create leaves it (minus keys the tests never use)."""
    store = Store(root)
    config = MachineConfig(name=name, driver="qemu", status=STATUS_READY, ssh_port=40022, docker_port=40376, iso=str(root / "boot.iso"))
    with store.reserve(config):
        pass
    getattr(store, "clear_creator", lambda _name: None)(name)  # (older stores kept no record)
    (store.machine_dir(name) / "data.qcow2").write_bytes(b"QFI\xfb" + os.urandom(1024))
    return store.machine_dir(name)


if __name__ == "__main__":
    command, root = sys.argv[1], Path(sys.argv[2])
    if command == "seed":
        seed(root, sys.argv[3])
    elif command == "hash":
        print(store_digest(root))
    else:
        sys.exit(f"unknown command {command}")
