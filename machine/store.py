"""The store: pymachine's folder on disk, and the only code that writes it.

Layout (under the home folder, see pymachine.home):
    certs/                  CA and client certificate shared by all machines
    cache/                  boot images
    machines/NAME/          one folder per machine
        config.json         MachineConfig, 0600, versioned, written atomically
        .lock               held by commands that change the machine

config.json is replaced through a temporary file and os.replace, never removed and
rewritten, so a crash leaves either the old or the new file. Files from an older
pymachine are migrated forward step by step; files from a newer one are refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from pymachine.errors import InvalidName, MachineExists, MachineNotFound, StoreError
from pymachine.locking import FileLock, LockBusy

#: pymachine's folder unless --storage-path or $PYMACHINE_STORAGE_PATH says otherwise. Like
#: ~/.docker/machine for docker-machine, but short: QMP socket paths live under it.
DEFAULT_ROOT = "~/.pymachine"
STORAGE_ENV = "PYMACHINE_STORAGE_PATH"

CONFIG_VERSION = 2


def _v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    """Version 2 records the guest's architecture; every machine before it was amd64."""
    data.setdefault("arch", "amd64")
    return data


#: Upgrade steps: MIGRATIONS[n] turns a version-n dict into a version n+1 dict.
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _v1_to_v2}

# \Z, not $: "$" also matches before a trailing newline, and "dev\n" is no name.
_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9.-]{0,62}\Z")

# Provisioning status, kept apart from the VM state the hypervisor reports.
STATUS_CREATING = "creating"
STATUS_READY = "ready"
STATUS_ERROR = "error"


def default_root(storage_path: str | None = None) -> Path:
    """--storage-path, else $PYMACHINE_STORAGE_PATH, else ~/.pymachine."""
    return Path(storage_path or os.environ.get(STORAGE_ENV) or DEFAULT_ROOT).expanduser()


def validate_name(name: str) -> str:
    """Return `name` if it can name a machine, a VM, a hostname and a docker context."""
    if not _NAME.match(name) or name.endswith(".") or ".." in name:
        raise InvalidName(
            f"Invalid machine name {name!r}: use letters, digits, '.' and '-', starting with a letter or digit, at most 63 characters",
            "Run `pymachine create --help` for an example",
        )
    return name


@dataclass
class MachineConfig:
    """What pymachine remembers about one machine."""

    name: str
    driver: str
    driver_options: dict[str, Any] = field(default_factory=dict)
    #: the guest's architecture (Debian's name: amd64, arm64)
    arch: str = "amd64"
    cpus: int = 2
    memory_mb: int = 2048
    disk_mb: int = 20480
    iso: str = ""
    kernel: str = ""
    initrd: str = ""
    cmdline: str = ""
    image_version: str = ""
    engine_bundle: str = ""
    engine_options: list[str] = field(default_factory=list)
    engine_labels: list[str] = field(default_factory=list)
    insecure_registries: list[str] = field(default_factory=list)
    registry_mirrors: list[str] = field(default_factory=list)
    engine_version: str = ""
    ssh_port: int = 0
    docker_port: int = 0
    #: host address for a bare `-p H:C`; 0.0.0.0 gives Docker's own (wider) default
    forward_bind: str = "127.0.0.1"
    #: host folders shared into the guest, as Mount.as_dict()
    mounts: list[dict[str, Any]] = field(default_factory=list)
    status: str = STATUS_CREATING
    error: str = ""
    created_at: str = ""

    @property
    def docker_url(self) -> str:
        """DOCKER_HOST for this machine: every driver forwards Docker's port on loopback."""
        return f"tcp://127.0.0.1:{self.docker_port}"

    def to_json(self) -> dict[str, Any]:
        return {"version": CONFIG_VERSION, **asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MachineConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def atomic_write(path: Path, data: bytes | str, mode: int = 0o600) -> None:
    """Replace `path` with `data` so that readers see the old file or the new one, never half."""
    path = Path(path)
    import tempfile

    if isinstance(data, str):
        data = data.encode()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class Store:
    """Machines on disk, one folder each."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.machines_dir = self.root / "machines"

    def machine_dir(self, name: str) -> Path:
        return self.machines_dir / validate_name(name)

    def config_path(self, name: str) -> Path:
        return self.machine_dir(name) / "config.json"

    def exists(self, name: str) -> bool:
        return self.machine_dir(name).is_dir()

    def names(self) -> list[str]:
        """Every machine in the store, sorted."""
        try:
            entries = os.listdir(self.machines_dir)
        except FileNotFoundError:
            return []
        return sorted(e for e in entries if _NAME.match(e) and (self.machines_dir / e).is_dir())

    @contextlib.contextmanager
    def reserve(self, config: MachineConfig) -> Iterator[Path]:
        """Make the folder of a new machine and hold its lock while the first config is
        written and for as long as the caller keeps the context; MachineExists if taken."""
        directory = self.machine_dir(config.name)
        self.machines_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:
            raise MachineExists(config.name) from None
        with self.lock(config.name):
            self.save(config)
            yield directory

    def load(self, name: str) -> MachineConfig:
        path = self.config_path(name)
        try:
            raw = path.read_text()
        except FileNotFoundError:
            if self.machine_dir(name).is_dir():
                # A create interrupted before its first write: show it so `rm` can clean it.
                return MachineConfig(name=name, driver="", arch="", status=STATUS_ERROR, error="incomplete: no config.json")
            raise MachineNotFound(name) from None
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise StoreError(
                f"Machine '{name}' has an unreadable config.json ({exc.msg} at line {exc.lineno})",
                f"Run `pymachine rm -f {name}` to remove it",
            ) from None
        if not isinstance(data, dict):
            raise StoreError(f"Machine '{name}' has an unreadable config.json (not a JSON object)", f"Run `pymachine rm -f {name}` to remove it")
        return MachineConfig.from_json(self._upgrade(name, data))

    def save(self, config: MachineConfig) -> None:
        text = json.dumps(config.to_json(), indent=2, sort_keys=True) + "\n"
        atomic_write(self.config_path(config.name), text)

    def remove(self, name: str) -> None:
        """Delete the machine's folder and everything in it.

        The folder is first renamed out of the machines folder, in one step, so that no
        other command can see a half-deleted machine; callers hold the machine's lock.
        """
        import shutil
        import uuid

        directory = self.machine_dir(name)
        trash = self.machines_dir / f".removing-{name}-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(directory, trash)
        except FileNotFoundError:
            return
        shutil.rmtree(trash, ignore_errors=True)

    @contextlib.contextmanager
    def lock(self, name: str, timeout: float = 10.0) -> Iterator[None]:
        """Hold the machine's lock: one changing command per machine at a time."""
        directory = self.machine_dir(name)
        if not directory.is_dir():
            raise MachineNotFound(name)
        lock = FileLock(directory / ".lock")
        try:
            lock.acquire(timeout)
        except LockBusy:
            raise StoreError(
                f"Machine '{name}' is busy with another pymachine command",
                f"Wait for it to finish, then run `pymachine status {name}`",
            ) from None
        except FileNotFoundError:
            raise MachineNotFound(name) from None
        try:
            yield
        finally:
            lock.release()

    def _upgrade(self, name: str, data: dict[str, Any]) -> dict[str, Any]:
        version = data.get("version", 0)
        if not isinstance(version, int):
            raise StoreError(f"Machine '{name}' has a config.json without a valid version", f"Run `pymachine rm -f {name}`")
        if version > CONFIG_VERSION:
            raise StoreError(
                f"Machine '{name}' was saved by a newer pymachine (config version {version}; this one reads up to {CONFIG_VERSION})",
                "Upgrade pymachine with `pipx upgrade pymachine-vm` (or `pip install -U pymachine-vm`)",
            )
        while version < CONFIG_VERSION:
            step = MIGRATIONS.get(version)
            if step is None:
                raise StoreError(
                    f"Machine '{name}' has config version {version}, which this pymachine cannot migrate",
                    f"Run `pymachine rm -f {name}` and create it again",
                )
            data = step(dict(data))
            version += 1
            data["version"] = version
        return data
