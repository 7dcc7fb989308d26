"""The one object that holds pymachine's folder, its store, its runner and its SSH factory.

Nothing in pymachine keeps module-level state: commands receive a Home and pass it down.
Tests build a Home on a temporary folder.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .progress import Progress
from .runner import Runner
from .ssh import GuestSSH, SSHTarget
from .store import Store

#: Like ~/.docker/machine for docker-machine; short, because QMP socket paths live under it.
DEFAULT_ROOT = "~/.pymachine"


@dataclass
class Home:
    """pymachine's home folder and the services every command needs."""

    root: Path
    runner: Runner = field(default_factory=Runner)
    progress: Progress = field(default_factory=Progress)
    cache: Path | None = None
    ssh_factory: Callable[[SSHTarget], GuestSSH] = GuestSSH

    def __post_init__(self) -> None:
        self.root = Path(self.root).expanduser()
        self.cache = Path(self.cache).expanduser() if self.cache else self.root / "cache"
        self.store = Store(self.root)

    @classmethod
    def from_environment(cls, storage_path: str | None = None, **kwargs) -> Home:
        """--storage-path, else $PYMACHINE_STORAGE_PATH, else ~/.pymachine."""
        root = storage_path or os.environ.get("PYMACHINE_STORAGE_PATH") or DEFAULT_ROOT
        cache = os.environ.get("PYMACHINE_CACHE_PATH") or None
        return cls(Path(root), cache=Path(cache) if cache else None, **kwargs)

    @property
    def certs_dir(self) -> Path:
        return self.root / "certs"

    @property
    def image_work_dir(self) -> Path:
        """Downloaded packages and unpacked trees of image builds (kept for fast rebuilds)."""
        assert self.cache is not None
        return self.cache / "image-work"

    def ssh(self, target: SSHTarget) -> GuestSSH:
        return self.ssh_factory(target)
