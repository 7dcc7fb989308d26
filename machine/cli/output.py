"""What the CLI shows on stderr: step lines and bars, notes, one-line errors, the debug log.

stdout carries only results (for scripts and `eval`); everything here goes to stderr.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

from pymachine.progress import Progress

#: The debug log is rotated to debug.log.1 beyond this size.
DEBUG_LOG_LIMIT = 5_000_000


class TerminalProgress(Progress):
    """Step lines with durations on stderr; a bar for transfers when stderr is a terminal."""

    def __init__(self) -> None:
        self._console: Any = None
        self._bar: Any = None
        self._task: Any = None

    @property
    def console(self) -> Any:
        # rich is imported on first output only: `ls` and friends never pay for it.
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=True, highlight=False)
        return self._console

    def on_step_start(self, title: str) -> None:
        if not self.console.is_terminal:
            self.console.print(f"  {title} ...")

    def on_step_end(self, title: str, seconds: float, ok: bool) -> None:
        self._close_bar()
        mark = "[green]✔[/green]" if ok else "[red]✘[/red]"
        self.console.print(f"{mark} {title} [dim]({seconds:.1f}s)[/dim]")

    def on_transfer_start(self, title: str, total: int) -> None:
        if not self.console.is_terminal:
            return
        from rich.progress import BarColumn, DownloadColumn, TransferSpeedColumn
        from rich.progress import Progress as Bar

        self._bar = Bar("  {task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(), console=self.console, transient=True)
        self._bar.start()
        self._task = self._bar.add_task(title, total=total or None)

    def on_transfer(self, done: int, total: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=done)

    def on_note(self, message: str) -> None:
        self.console.print(f"[yellow]![/yellow] {message}", soft_wrap=True)  # one line, whatever the width

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def error(message: str) -> None:
    """`Error: ...` on one line; a multi-line message (console lines) follows below it."""
    line = " ".join(message.split("\n")[0].split())
    rest = message.split("\n", 1)[1] if "\n" in message else ""
    print(f"Error: {line}", file=sys.stderr)
    if rest.strip():
        print(rest.rstrip(), file=sys.stderr)


class DebugLogHandler(logging.FileHandler):
    """The debug log: created 0600 (it holds machine names, paths and argv), and quiet when
    the disk takes no more (a full or read-only store must not add tracebacks to the one
    line the command prints)."""

    def _open(self) -> Any:
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0), 0o600)
        try:
            os.fchmod(fd, 0o600)
        except OSError:
            pass
        return os.fdopen(fd, "a", encoding=self.encoding or "utf-8", errors=self.errors)

    def handleError(self, record: logging.LogRecord) -> None:
        pass


def setup_logging(log_path: Path, debug: bool) -> None:
    """Everything to the debug log (kept small); to stderr as well with --debug."""
    # A handler that cannot write must never print "--- Logging error ---" tracebacks.
    logging.raiseExceptions = False
    logger = logging.getLogger()
    logger.setLevel(logging.DEBUG)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    try:
        # The store's folder: 0700, as it holds every machine's keys.
        log_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if log_path.exists() and log_path.stat().st_size > DEBUG_LOG_LIMIT:
            os.replace(log_path, log_path.with_suffix(".log.1"))
        handler: logging.Handler = DebugLogHandler(log_path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
    except OSError:
        logger.addHandler(logging.NullHandler())
    # paramiko's DEBUG lines (every key exchange) drown the rest.
    logging.getLogger("paramiko").setLevel(logging.INFO if debug else logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.INFO)
    if debug:
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        logger.addHandler(stream)
