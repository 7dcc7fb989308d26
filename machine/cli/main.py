"""The `pymachine` command's entry point: the fast path for `env`, then typer, and one
line for every error.

Errors: a MachineError becomes one line on stderr and exit status 1. Anything else is
written with its traceback to the debug log and reported in one line too.
"""

from __future__ import annotations

import signal
import sys
from typing import Any

# `pymachine env` runs in every new shell: it is answered before typer is imported.
from pymachine.errors import MachineError


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    from pymachine.cli.fastpath import try_fast_env

    # `kill` of a running command is handled like Ctrl-C: what it made is cleaned up
    # or marked Error, and no VM process is left behind.
    signal.signal(signal.SIGTERM, _interrupt)

    code = try_fast_env(args)
    if code is not None:
        sys.exit(code)
    sys.exit(run_cli(args))


def run_cli(args: list[str]) -> int:
    import click

    from pymachine.cli.app import Session, app
    from pymachine.cli.output import error as _error

    command = _typer_command(app)
    from pymachine.cli.completion import answer, requested, with_machine_names

    instruction = requested()
    if instruction:
        # A Tab press in a shell that sourced `pymachine completion SHELL`.
        return answer(with_machine_names(command), instruction)
    session = Session()
    # typer turns a KeyboardInterrupt into a silent exit status 130, indistinguishable
    # from a remote command's own 130: remember that a signal came.
    signals: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: _interrupt(signum, frame, signals)) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        result = command.main(args=args, prog_name="pymachine", standalone_mode=False, obj=session)
        if signals:
            _error("Interrupted.")
            return 130
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
        message = _one_suggestion(exc.format_message().strip())
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

        from pymachine.errors import unwritable_store

        full = unwritable_store(exc, session.debug_log.parent)
        if full is not None:
            _error(str(full))
            return 1
        log_path = session.debug_log
        logging.getLogger("pymachine").exception("unexpected error")
        _error(f"Unexpected {type(exc).__name__}: {exc}. The details are in {log_path}; please report them.")
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _one_suggestion(message: str) -> str:
    """typer and click (8.4 and later) both add "Did you mean ...?" to an unknown
    command: keep the first."""
    first = message.find("Did you mean")
    if first < 0 or message.find("Did you mean", first + 1) < 0:
        return message
    end = message.find("?", first)
    return message[: end + 1] if end >= 0 else message


def _interrupt(signum: int, frame: Any, seen: list[int] | None = None) -> None:
    if seen is not None:
        seen.append(signum)
    raise KeyboardInterrupt


def _typer_command(app: Any) -> Any:
    import typer.main

    return typer.main.get_command(app)
