"""The store: pymachine's folder on disk, and the only code that writes it.

Layout (under the home folder, see pymachine.home):
    certs/                  CA and client certificate shared by all machines
    cache/                  boot images
    machines/NAME/          one folder per machine
        config.json         MachineConfig, 0600, versioned, written atomically
        .lock               held by commands that change the machine
        creating.pid        while `create` runs: its PID and start time

The folder is the machine's identity: a config.json whose name is not its folder's (a
folder copied or renamed by hand) is damaged, and never leads a command to another
machine. So is one with a value of the wrong type, bytes that are not UTF-8, or a
folder, FIFO or symlink in its place: each is one machine's Error, never `ls`'s.

config.json is replaced through a temporary file and os.replace, never removed and
rewritten, so a crash leaves either the old or the new file. Files from an older
pymachine are migrated forward step by step; files from a newer one are refused.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import stat
import typing
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from pymachine.errors import InvalidName, MachineExists, MachineNotFound, StoreError
from pymachine.locking import FileLock, LockBusy
from pymachine.procs import alive, start_time

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
STATUSES = (STATUS_CREATING, STATUS_READY, STATUS_ERROR)

#: Keys without a default: a config.json without them is damaged (the others default).
REQUIRED_KEYS = ("name", "driver")
#: The largest config.json read; a machine's is about 2 KB.
MAX_CONFIG_BYTES = 1_000_000
#: Written while `create` runs: its PID and that process's start time (see Store.creator_gone).
CREATOR_FILE = "creating.pid"


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
    #: forward the ports processes in the guest listen on (not only Docker's published ones)
    listener_forwarding: bool = True
    #: guest ports never forwarded as listeners: "PORT" (tcp and udp), "PORT/tcp", "PORT/udp"
    ignore_ports: list[str] = field(default_factory=list)
    #: host folders shared into the guest, as Mount.as_dict()
    mounts: list[dict[str, Any]] = field(default_factory=list)
    #: the MTU of the guest's NIC and Docker's networks, set at create (driver.LARGE_FRAME_MTU
    #: where the driver has Feature.LARGE_FRAMES); 0 is Ethernet's 1500
    guest_mtu: int = 0
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

    def __init__(self, root: Path, command: str = "", on_wait: Callable[[str, str], None] | None = None) -> None:
        self.root = Path(root)
        self.machines_dir = self.root / "machines"
        #: the command this process runs, left in a machine's lock while it holds it
        self.command = command
        #: told (machine, command holding it) when a machine's lock must be waited for
        self.on_wait = on_wait

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
        self.ensure_root()
        self.machines_dir.mkdir(exist_ok=True, mode=0o700)
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:
            raise MachineExists(config.name) from None
        with self.lock(config.name):
            try:
                self.mark_creator(config.name)
                self.save(config)
            except BaseException:
                # Nothing was made yet: a folder without a config would only need an `rm -f`.
                self._discard(directory)
                raise
            yield directory

    def ensure_root(self) -> None:
        """Make the store's folder, 0700: machines' keys and the debug log live under it."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)

    def load(self, name: str) -> MachineConfig:
        """The machine's config; StoreError (naming `pymachine rm -f NAME`) for any config.json
        that is not one this folder's machine could have written."""
        raw = self._read_config(name)
        if raw is None:
            # A create interrupted before its first write: show it so `rm` can clean it.
            return MachineConfig(name=name, driver="", arch="", status=STATUS_ERROR, error="incomplete: no config.json")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise damaged(name, f"not UTF-8 text (byte {exc.start})") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise damaged(name, f"{exc.msg} at line {exc.lineno}") from None
        except RecursionError:
            raise damaged(name, "nested too deeply") from None
        if not isinstance(data, dict):
            raise damaged(name, "not a JSON object")
        data = self._upgrade(name, data)
        _check_config(name, data)
        config = MachineConfig.from_json(data)
        if config.status == STATUS_CREATING and self.creator_gone(name):
            # Its create was killed: nothing will finish it. Said, not saved: a reader never writes.
            config.status = STATUS_ERROR
            config.error = f"create was interrupted; run `pymachine rm -f {name}`"
        return config

    def _read_config(self, name: str) -> bytes | None:
        """config.json's bytes; None when the folder has none; StoreError when it cannot be read.

        Opened without following a symlink and without blocking (a FIFO in its place
        would hang every `ls`), and read only if it is a regular file.
        """
        path = self.config_path(name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            if self.machine_dir(name).is_dir():
                return None
            raise MachineNotFound(name) from None
        except OSError as exc:
            raise damaged(name, _os_reason(exc)) from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise damaged(name, "not a regular file")
            if info.st_size > MAX_CONFIG_BYTES:
                raise damaged(name, f"{info.st_size} bytes, far more than a config holds")
            chunks = []
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
            return b"".join(chunks)
        except OSError as exc:
            raise damaged(name, _os_reason(exc)) from None
        finally:
            os.close(fd)

    # -- who is creating a machine ------------------------------------------------------

    def mark_creator(self, name: str) -> None:
        """Record this process as the machine's creator (see creator_gone)."""
        pid = os.getpid()
        atomic_write(self.machine_dir(name) / CREATOR_FILE, f"{pid} {start_time(pid) or ''}\n")

    def clear_creator(self, name: str) -> None:
        with contextlib.suppress(OSError):
            (self.machine_dir(name) / CREATOR_FILE).unlink()

    def creator_gone(self, name: str) -> bool:
        """True if the process that was creating the machine no longer runs.

        A PID alone could have been reused: the process's start time must match too.
        No record at all is a create from before records were kept, or one killed
        between its first writes: gone too.
        """
        try:
            words = (self.machine_dir(name) / CREATOR_FILE).read_text().split()
            pid = int(words[0])
        except (OSError, ValueError, IndexError, UnicodeDecodeError):
            return True
        if pid <= 0 or not alive(pid):
            return True
        recorded = words[1] if len(words) > 1 else ""
        now = start_time(pid)
        return bool(recorded and now and recorded != now)

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

    def _discard(self, directory: Path) -> None:
        import shutil

        shutil.rmtree(directory, ignore_errors=True)

    @contextlib.contextmanager
    def lock(self, name: str, timeout: float = 10.0) -> Iterator[None]:
        """Hold the machine's lock: one changing command per machine at a time."""
        directory = self.machine_dir(name)
        if not directory.is_dir():
            raise MachineNotFound(name)
        lock = FileLock(directory / ".lock")
        on_wait = (lambda holder: self.on_wait(name, _command_of(holder))) if self.on_wait else None
        try:
            lock.acquire(timeout, holder=f"{self.command or 'pymachine'} {os.getpid()}", on_wait=on_wait)
        except LockBusy as busy:
            command = _command_of(str(busy))
            raise StoreError(
                f"Machine '{name}' is busy with another pymachine command" + (f" (`{command}`)" if command else ""),
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
        if not isinstance(version, int) or isinstance(version, bool):
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


def damaged(name: str, reason: str) -> StoreError:
    """The one error for a config.json that cannot be this machine's."""
    return StoreError(f"Machine '{name}' has an unreadable config.json ({reason})", f"Run `pymachine rm -f {name}` to remove it")


def _os_reason(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "a symbolic link, which pymachine never writes"
    if exc.errno == errno.EISDIR:
        return "a folder, not a file"
    return exc.strerror or type(exc).__name__


def _check_config(name: str, data: dict[str, Any]) -> None:
    """Every key a MachineConfig has must hold its type; the core keys must be there;
    and the config must be this folder's machine's (the folder is its identity)."""
    missing = [key for key in REQUIRED_KEYS if key not in data]
    if missing:
        raise damaged(name, f"no {', '.join(missing)}")
    hints = typing.get_type_hints(MachineConfig)
    for f in fields(MachineConfig):
        if f.name in data and not _has_type(data[f.name], hints[f.name]):
            raise damaged(name, f"{f.name} is {type(data[f.name]).__name__} {json.dumps(data[f.name])[:40]}, not {_type_name(hints[f.name])}")
    for mount in data.get("mounts", []):
        if not isinstance(mount.get("host"), str) or not isinstance(mount.get("guest"), str):
            raise damaged(name, "a mount without host and guest paths")
    if data.get("status", STATUS_CREATING) not in STATUSES:
        raise damaged(name, f"status {json.dumps(data['status'])[:40]}, not one of {', '.join(STATUSES)}")
    if data["name"] != name:
        # A folder copied or renamed by hand: acting on the config's name would reach
        # another machine's VM, disk and ports.
        raise StoreError(
            f"Machine '{name}' has the config.json of machine '{data['name']}' (a copied or renamed folder)",
            f"Run `pymachine rm -f {name}` to remove this folder; machine '{data['name']}' is not touched",
        )


def _has_type(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_has_type(v, item) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(isinstance(k, str) for k in value)
    if hint is Any:
        return True
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is list:
        return "a list"
    if origin is dict:
        return "an object"
    return {int: "a number", str: "a string", bool: "true or false"}.get(hint, str(hint))


def _command_of(holder: str) -> str:
    """"create 4242" (what a lock holder leaves) -> "create"; "" when unknown."""
    words = holder.split()
    return " ".join(words[:-1]) if len(words) >= 2 and words[-1].isdigit() else ""
