"""`pymachine env` without importing typer (it alone takes ~60 ms to import).

`eval $(pymachine env dev)` sits in shell start-up files, so it must be quick. This
handles exactly the documented forms:

    pymachine [--storage-path DIR] env [--shell SHELL] [--unset|-u] [--no-proxy] [NAME]

Anything else (--help, a typo, an unknown flag) returns None, and the full typer CLI
parses it and gives its usual errors. Both paths render through pymachine.cli.shellenv.
"""

from __future__ import annotations

import sys

from pymachine.errors import MachineError


def try_fast_env(args: list[str]) -> int | None:
    storage: str | None = None
    rest = list(args)
    while rest and rest[0] in ("--storage-path", "-s"):
        if len(rest) < 2:
            return None
        storage, rest = rest[1], rest[2:]
    if rest and rest[0].startswith("--storage-path="):
        storage, rest = rest[0].split("=", 1)[1], rest[1:]
    if not rest or rest[0] != "env":
        return None
    shell: str | None = None
    unset = False
    no_proxy = False
    names: list[str] = []
    items = rest[1:]
    i = 0
    while i < len(items):
        item = items[i]
        if item == "--shell" and i + 1 < len(items):
            shell = items[i + 1]
            i += 2
            continue
        if item.startswith("--shell="):
            shell = item.split("=", 1)[1]
        elif item in ("--unset", "-u"):
            unset = True
        elif item == "--no-proxy":
            no_proxy = True
        elif item.startswith("-"):
            return None
        else:
            names.append(item)
        i += 1
    if len(names) > 1 or (not names and not unset):
        return None
    try:
        out, hint = render_env(storage, names[0] if names else None, shell, unset, no_proxy)
    except MachineError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(out)
    if hint and sys.stdout.isatty():
        print(hint, file=sys.stderr)
    return 0


def render_env(storage: str | None, name: str | None, shell: str | None, unset: bool, no_proxy: bool) -> tuple[str, str]:
    """(shell code, usage hint) for `env`; shared by the fast path and the typer command."""
    from pymachine.cli import shellenv
    from pymachine.store import STATUS_READY, Store, default_root

    # `--shell ""` is a mistake, not a request to guess: only an absent --shell guesses.
    shell = shellenv.check_shell(shell) if shell is not None else shellenv.detect_shell()
    if unset:
        keys = list(shellenv.DOCKER_VARIABLES) + (["NO_PROXY"] if no_proxy else [])
        restored, removed = shellenv.ca_bundle_restore()
        return shellenv.render(restored, keys + removed, shell), shellenv.usage_hint(name or "", shell, True)
    assert name is not None
    store = Store(default_root(storage))
    config = store.load(name)
    if config.status != STATUS_READY or not config.docker_port:
        reason = config.error or f"status {config.status}"
        raise MachineError(f"Machine '{name}' is not ready ({reason})", _not_ready_hint(storage, name))
    directory = store.machine_dir(name)
    # The one liveness check cheap enough for env: a crashed watcher is started again.
    from pymachine.forwarding.process import revive_if_crashed

    revive_if_crashed(directory)
    assignments = shellenv.variables(name, config.docker_url, str(directory))
    assignments += shellenv.ca_bundle_override(str(directory))
    if no_proxy:
        assignments.append(shellenv.no_proxy_value())
    return shellenv.render(assignments, [], shell), shellenv.usage_hint(name, shell, False)


def _not_ready_hint(storage: str | None, name: str) -> str:
    """What to run for a machine that is not ready: `provision` only helps one that runs;
    a stopped one is provisioned by `start`. (Off the fast path: this is an error.)"""
    from pymachine.driver import State
    from pymachine.errors import MachineError
    from pymachine.home import Home
    from pymachine.machine import Machine

    try:
        running = Machine(Home.from_environment(storage), name).state() == State.RUNNING
    except MachineError:
        running = False
    if running:
        return f"Run `pymachine provision {name}`, or `pymachine rm {name}` and create it again"
    return f"Run `pymachine start {name}` (it provisions it), or `pymachine rm {name}` and create it again"
