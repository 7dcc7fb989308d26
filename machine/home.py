"""The one object that holds pymachine's folder, its store, its runner and its SSH factory.

Nothing in pymachine keeps module-level state: commands receive a Home and pass it down.
Tests build a Home on a temporary folder.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pymachine.dockercontext import DockerContexts
from pymachine.guest.certs import CertificateAuthority
from pymachine.guest.ssh import GuestSSH, SSHTarget
from pymachine.progress import Progress
from pymachine.runner import Runner
from pymachine.store import Store, default_root

CACHE_ENV = "PYMACHINE_CACHE_PATH"


@dataclass
class Home:
    """pymachine's home folder and the services every command needs."""

    root: Path
    runner: Runner = field(default_factory=Runner)
    progress: Progress = field(default_factory=Progress)
    cache: Path | None = None
    ssh_factory: Callable[[SSHTarget], GuestSSH] = GuestSSH
    #: the command this run serves (`create`, `stop` ...), named to a command that waits for it
    command: str = ""

    def __post_init__(self) -> None:
        # Absolute: the paths given to QEMU and the watcher are how their processes are
        # recognised later, from whatever folder the next command runs in.
        self.root = Path(self.root).expanduser().absolute()
        self.cache = Path(self.cache).expanduser() if self.cache else self.root / "cache"
        self.store = Store(self.root, self.command, on_wait=self._waiting)

    def _waiting(self, name: str, command: str) -> None:
        holder = f"`{command}`" if command else "another pymachine command"
        self.progress.note(f"Machine '{name}' is busy: waiting for {holder} to finish")

    @classmethod
    def from_environment(cls, storage_path: str | None = None, **kwargs) -> Home:
        """--storage-path, else $PYMACHINE_STORAGE_PATH, else ~/.pymachine; the cache from
        $PYMACHINE_CACHE_PATH, else its cache/ folder."""
        cache = os.environ.get(CACHE_ENV) or None
        return cls(default_root(storage_path), cache=Path(cache) if cache else None, **kwargs)

    @property
    def certs_dir(self) -> Path:
        return self.root / "certs"

    @property
    def debug_log(self) -> Path:
        return self.root / "debug.log"

    @property
    def image_work_dir(self) -> Path:
        """Downloaded packages and unpacked trees of image builds (kept for fast rebuilds)."""
        assert self.cache is not None
        return self.cache / "image-work"

    @functools.cached_property
    def ca(self) -> CertificateAuthority:
        """The CA and client certificate every machine shares."""
        return CertificateAuthority(self.certs_dir)

    @functools.cached_property
    def contexts(self) -> DockerContexts:
        """The docker CLI's contexts, one per machine."""
        return DockerContexts(self.runner)

    def ssh(self, target: SSHTarget) -> GuestSSH:
        return self.ssh_factory(target)
