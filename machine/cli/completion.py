"""Shell completion: `pymachine completion bash|zsh|fish` prints a script, and the shell
then runs `pymachine` with _PYMACHINE_COMPLETE set at each Tab to ask for candidates:
commands, flags, and machine names wherever a command takes one.

The scripts and the protocol are click's own (click.shell_completion); typer's
variant of the protocol is not used, so what the script sends is what is answered.
"""

from __future__ import annotations

import os
from typing import Any

SHELLS = ("bash", "zsh", "fish")
COMPLETE_VAR = "_PYMACHINE_COMPLETE"
PROG_NAME = "pymachine"

#: Commands whose NAME is a new machine's: nothing to complete from the store.
NEW_NAME_COMMANDS = frozenset({"create"})


def script(command: Any, shell: str) -> str:
    """The completion script for `shell`, to be sourced by it."""
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    assert cls is not None and shell in SHELLS
    return cls(command, {}, PROG_NAME, COMPLETE_VAR).source()


def answer(command: Any, instruction: str) -> int:
    """Answer a completion request from a sourced script ("bash_complete" ...)."""
    from click.shell_completion import get_completion_class

    shell, _, action = instruction.partition("_")
    cls = get_completion_class(shell)
    if cls is None or action != "complete":
        return 1
    print(cls(command, {}, PROG_NAME, COMPLETE_VAR).complete())
    return 0


def with_machine_names(command: Any) -> Any:
    """Give every machine-name argument of `command`'s subcommands a completer that lists
    the store's machines. Returns `command`."""
    import click

    for name, sub in getattr(command, "commands", {}).items():
        with_machine_names(sub)
        if name in NEW_NAME_COMMANDS:
            continue
        for param in sub.params:
            if isinstance(param, click.Argument) and param.name in ("name", "names"):
                param._custom_shell_complete = _machine_names  # click's hook for a completer (click >= 8.0)
    return command


def _machine_names(ctx: Any, param: Any, incomplete: str) -> list[Any]:
    from click.shell_completion import CompletionItem

    from pymachine.store import Store, default_root

    root = ctx.find_root()
    storage = root.params.get("storage_path") if root is not None else None
    try:
        names = Store(default_root(storage)).names()
    except OSError:
        return []
    taken = set(ctx.params.get("names") or []) if param.name == "names" else set()
    return [CompletionItem(n) for n in names if n.startswith(incomplete) and n not in taken]


def requested() -> str | None:
    """The instruction when this run is a completion request from a sourced script."""
    return os.environ.get(COMPLETE_VAR)
