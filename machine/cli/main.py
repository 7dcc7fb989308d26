"""The `pymachine` command: parse, call machine.machines, print. Nothing else lives here.

Errors: a MachineError becomes one line on stderr and exit status 1. Anything else is
written with its traceback to the debug log and reported in one line too.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

# `pymachine env` runs in every new shell: it is answered before typer is imported.
from .errors import MachineError


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    from .fastpath import try_fast_env

    # `kill` of a running command is handled like Ctrl-C: what it made is cleaned up
    # or marked Error, and no VM process is left behind.
    signal.signal(signal.SIGTERM, _interrupt)

    code = try_fast_env(args)
    if code is not None:
        sys.exit(code)
    sys.exit(run_cli(args))


def run_cli(args: list[str]) -> int:
    import click

    from .commands import app, home_from_context

    command = _typer_command(app)
    try:
        result = command.main(args=args, prog_name="pymachine", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except MachineError as exc:
        _error(str(exc))
        return 1
    except click.exceptions.UsageError as exc:
        if type(exc).__name__.startswith("NoArgsIsHelp"):
            # `pymachine` alone, or a command group alone: its help, as click would.
            print(exc.format_message(), file=sys.stderr)
            return 0
        where = f"pymachine {exc.ctx.command_path.split(' ', 1)[1]}" if exc.ctx and " " in exc.ctx.command_path else "pymachine"
        message = exc.format_message().strip()
        if not message.endswith((".", "?", "!", ")")):
            message += "."
        _error(f"{message} Run `{where} --help`.")
        return 1
    except click.exceptions.Abort:
        _error("Aborted.")
        return 1
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        _error(exc.format_message())
        return 1
    except KeyboardInterrupt:
        _error("Interrupted.")
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # noqa: BLE001 - the last line of defence
        import logging

        log_path = _debug_log_path(home_from_context())
        logging.getLogger("pymachine").exception("unexpected error")
        _error(f"Unexpected {type(exc).__name__}: {exc}. The details are in {log_path}; please report them.")
        return 1


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _typer_command(app: Any) -> Any:
    import typer.main

    return typer.main.get_command(app)


def _error(message: str) -> None:
    line = " ".join(message.split("\n")[0].split())
    rest = message.split("\n", 1)[1] if "\n" in message else ""
    print(f"Error: {line}", file=sys.stderr)
    if rest.strip():
        print(rest.rstrip(), file=sys.stderr)


def _debug_log_path(root: Path | None) -> Path:
    base = root or Path(os.environ.get("PYMACHINE_STORAGE_PATH") or "~/.pymachine").expanduser()
    return base / "debug.log"


def setup_logging(root: Path, debug: bool) -> None:
    """Everything to <home>/debug.log (kept small); to stderr as well with --debug."""
    import logging

    logger = logging.getLogger()
    logger.setLevel(logging.DEBUG)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    path = _debug_log_path(root)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and path.stat().st_size > 5_000_000:
            os.replace(path, path.with_suffix(".log.1"))
        handler: logging.Handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
    except OSError:
        logger.addHandler(logging.NullHandler())
    # paramiko's DEBUG lines (every key exchange) drown the rest.
    logging.getLogger("paramiko").setLevel(logging.INFO if debug else logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.INFO)
    logging.getLogger("filelock").setLevel(logging.INFO)
    if debug:
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        logger.addHandler(stream)

