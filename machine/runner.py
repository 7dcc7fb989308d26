"""The one seam to external programs (qemu-img, VBoxManage, prlctl, docker ...).

Drivers never call subprocess themselves. Tests hand them a Runner whose search path
starts with faithful fakes of the hypervisors' tools, so the code under test cannot tell
a fake from the real program.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from pymachine.errors import CommandFailed, DriverNotAvailable


@dataclass(frozen=True)
class Completed:
    """What a finished program left behind."""

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str


@dataclass
class Runner:
    """Runs programs found on `path` (default: $PATH) and reports each call to `observers`."""

    path: str | None = None
    env: Mapping[str, str] | None = None
    observers: list[Callable[[Completed], None]] = field(default_factory=list)

    def which(self, program: str, path: str | None = None) -> str | None:
        """The full path of `program`, or None when it is not installed.

        `path` searches those folders instead of the runner's own (a driver looking
        where a package manager installs, such as Homebrew's bin folders).
        """
        return shutil.which(program, path=path if path is not None else self._search_path())

    def require(self, program: str, install_hint: str) -> str:
        """The full path of `program`, or a DriverNotAvailable naming how to install it."""
        found = self.which(program)
        if found is None:
            raise DriverNotAvailable(f"`{program}` is not installed", install_hint)
        return found

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float | None = 120,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> Completed:
        """Run argv to completion and capture both streams as text."""
        argv = [str(a) for a in argv]
        resolved = self.which(argv[0]) or argv[0]
        try:
            proc = subprocess.run(
                [resolved, *argv[1:]],
                input=input,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=timeout,
                env=self._environ(env),
                cwd=cwd,
                stdin=None if input is not None else subprocess.DEVNULL,
            )
        except FileNotFoundError:
            raise DriverNotAvailable(f"`{argv[0]}` is not installed", "Run `pymachine doctor` to see what is missing") from None
        except subprocess.TimeoutExpired as exc:
            out = _text(exc.stdout)
            err = _text(exc.stderr)
            raise CommandFailed(argv, None, out, err + f"\ntimed out after {timeout:g}s") from None
        done = Completed(argv, proc.returncode, proc.stdout, proc.stderr)
        for observe in self.observers:
            observe(done)
        if check and proc.returncode != 0:
            raise CommandFailed(argv, proc.returncode, proc.stdout, proc.stderr)
        return done

    def _search_path(self) -> str | None:
        if self.path is not None:
            return self.path
        if self.env is not None and "PATH" in self.env:
            return self.env["PATH"]
        return None

    def _environ(self, extra: Mapping[str, str] | None) -> dict[str, str] | None:
        if self.env is None and extra is None and self.path is None:
            return None
        merged = dict(os.environ)
        if self.env:
            merged.update(self.env)
        if self.path is not None:
            merged["PATH"] = self.path
        if extra:
            merged.update(extra)
        return merged


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value
