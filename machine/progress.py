"""How the core tells the CLI what it is doing, without printing anything itself.

The core calls `progress.step("Waiting for SSH")` around each step and `progress.transfer`
for byte counts; the CLI subclasses Progress to draw them on stderr. The default does
nothing, so library users and tests get a silent core.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator


class Progress:
    """A silent progress sink; subclass and override the `on_*` methods to show it."""

    @contextlib.contextmanager
    def step(self, title: str) -> Iterator[None]:
        """Time a named step; reports its end, and whether it failed."""
        self.on_step_start(title)
        started = time.monotonic()
        try:
            yield
        except BaseException:
            self.on_step_end(title, time.monotonic() - started, ok=False)
            raise
        self.on_step_end(title, time.monotonic() - started, ok=True)

    def transfer(self, title: str, total: int) -> Callable[[int, int], None]:
        """A callback(done, total) for a byte transfer of `total` bytes."""
        self.on_transfer_start(title, total)
        return self.on_transfer

    def note(self, message: str) -> None:
        """Something worth saying that is not a step (a choice made, a warning)."""
        self.on_note(message)

    def on_step_start(self, title: str) -> None:
        pass

    def on_step_end(self, title: str, seconds: float, ok: bool) -> None:
        pass

    def on_transfer_start(self, title: str, total: int) -> None:
        pass

    def on_transfer(self, done: int, total: int) -> None:
        pass

    def on_note(self, message: str) -> None:
        pass


class RecordingProgress(Progress):
    """Keeps what it is told, for tests and for the debug log."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def on_step_start(self, title: str) -> None:
        self.events.append(("start", title))

    def on_step_end(self, title: str, seconds: float, ok: bool) -> None:
        self.events.append(("end" if ok else "failed", title))

    def on_note(self, message: str) -> None:
        self.events.append(("note", message))
