"""`pymachine env`: the shell code that points the docker CLI at a machine.

This runs in every new shell of many users, so it imports nothing heavy: the store,
json and os only.
"""

from __future__ import annotations

import os

from pymachine.errors import MachineError

SHELLS = ("bash", "zsh", "sh", "fish", "powershell", "cmd", "tcsh", "emacs")
DOCKER_VARIABLES = ("DOCKER_TLS_VERIFY", "DOCKER_HOST", "DOCKER_CERT_PATH", "DOCKER_MACHINE_NAME")


def detect_shell(environ: dict[str, str] | None = None) -> str:
    """The user's shell family from $SHELL; bash syntax when unsure (as docker-machine did)."""
    environ = os.environ if environ is None else environ
    shell = os.path.basename(environ.get("SHELL", ""))
    if shell == "fish":
        return "fish"
    if shell in ("tcsh", "csh"):
        return "tcsh"
    if shell == "zsh":
        return "zsh"
    return "bash"


#: Names a user may give --shell for a family above: csh is what $SHELL=/bin/csh (tcsh
#: on most systems) is detected as too.
SHELL_ALIASES = {"csh": "tcsh", "pwsh": "powershell", "dash": "sh", "ksh": "sh"}


def check_shell(shell: str) -> str:
    shell = SHELL_ALIASES.get(shell, shell)
    if shell not in SHELLS:
        raise MachineError(f"Unknown shell '{shell}' (known: {', '.join(SHELLS)})", "Run `pymachine env --help`")
    return shell


def variables(name: str, docker_url: str, cert_path: str) -> list[tuple[str, str]]:
    return [
        ("DOCKER_TLS_VERIFY", "1"),
        ("DOCKER_HOST", docker_url),
        ("DOCKER_CERT_PATH", cert_path),
        ("DOCKER_MACHINE_NAME", name),
    ]


def no_proxy_value(environ: dict[str, str] | None = None, host: str = "127.0.0.1") -> tuple[str, str]:
    """(variable name, value): the user's NO_PROXY (or no_proxy) with the machine's host added."""
    environ = os.environ if environ is None else environ
    key = "no_proxy" if "no_proxy" in environ and "NO_PROXY" not in environ else "NO_PROXY"
    existing = [h for h in environ.get(key, "").split(",") if h]
    if host not in existing:
        existing.append(host)
    return key, ",".join(existing)


#: Python's requests (under the docker SDK, docker-compose 1.x, testcontainers) lets
#: these variables override the CA a client was given, so with one set the machine's
#: certificate cannot verify. `env` then points it at a copy of the user's bundle with
#: the machine's CA added, which keeps every other HTTPS site verifying as before.
CA_BUNDLE_VARIABLES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
COMBINED_BUNDLE = "ca-bundle-with-system.pem"
#: The user's own value of VARIABLE, kept by `env` in the shell itself, so `env --unset`
#: gives it back even after the machine (and its combined bundle) is gone.
SAVED_PREFIX = "PYMACHINE_SAVED_"
_ORIGIN = "# pymachine: the machine's CA added to "


def saved_name(key: str) -> str:
    return SAVED_PREFIX + key


def ca_bundle_override(machine_dir: str, environ: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """What `env` sets when the environment sets a CA bundle variable: the variable,
    pointed at the combined bundle, and (the first time) PYMACHINE_SAVED_VARIABLE with
    the user's own value."""
    environ = os.environ if environ is None else environ
    for key in CA_BUNDLE_VARIABLES:
        current = environ.get(key)
        if not current:
            continue
        saved = environ.get(saved_name(key))
        if _is_ours(current, saved):
            # Set by an earlier `env` (for this machine or another): build from the
            # user's own bundle, which the shell still remembers.
            original = saved or original_bundle(current)
        else:
            original = current
        target = os.path.join(machine_dir, COMBINED_BUNDLE)
        try:
            with open(original, "rb") as handle:
                system = handle.read()
            with open(os.path.join(machine_dir, "ca.pem"), "rb") as handle:
                ours = handle.read()
        except OSError:
            return []
        content = f"{_ORIGIN}{original}\n".encode() + system.rstrip(b"\n") + b"\n" + ours
        try:
            with open(target, "rb") as handle:
                unchanged = handle.read() == content
        except OSError:
            unchanged = False
        if not unchanged:
            from pathlib import Path

            from pymachine.store import atomic_write

            atomic_write(Path(target), content, mode=0o644)
        keep = [] if saved == original else [(saved_name(key), original)]
        return keep + [(key, target)]
    return []


def original_bundle(path: str) -> str:
    """The user's own bundle behind `path`, which may be one of our combined copies."""
    try:
        with open(path, "rb") as handle:
            first = handle.readline().decode(errors="replace").rstrip("\n")
    except OSError:
        return path
    return first[len(_ORIGIN):] if first.startswith(_ORIGIN) else path


def _is_ours(current: str, saved: str | None) -> bool:
    """Whether `current` is a combined bundle `env` made: by its first line, or, once
    the file is gone (the machine was removed), by its name."""
    if original_bundle(current) != current:
        return True
    return os.path.basename(current) == COMBINED_BUNDLE and (saved is not None or not os.path.exists(current))


def ca_bundle_restore(environ: dict[str, str] | None = None) -> tuple[list[tuple[str, str]], list[str]]:
    """For `env --unset`: (assignments, variables to unset) that give the user's own
    bundles back where `env` had replaced them. A variable `env` set with no saved
    value to return to is unset: the shell never keeps pointing at a removed file."""
    environ = os.environ if environ is None else environ
    restored: list[tuple[str, str]] = []
    removed: list[str] = []
    for key in CA_BUNDLE_VARIABLES:
        current = environ.get(key)
        saved = environ.get(saved_name(key))
        if current and _is_ours(current, saved):
            original = saved or original_bundle(current)
            if original != current:
                restored.append((key, original))
            else:
                removed.append(key)
        if saved is not None:
            removed.append(saved_name(key))
    return restored, removed


def render(assignments: list[tuple[str, str]], unset: list[str], shell: str) -> str:
    """Shell code that sets `assignments` and unsets `unset`, in the syntax of `shell`."""
    lines = [_unset(shell, key) for key in unset]
    lines += [_set(shell, key, value) for key, value in assignments]
    return "\n".join(lines) + "\n"


def usage_hint(name: str, shell: str, unset: bool) -> str:
    """How to use the output; printed on stderr so stdout stays pure shell code."""
    args = f"env{' --unset' if unset else ''}{f' --shell {shell}' if shell not in ('bash', 'zsh', 'sh') else ''}{'' if unset else ' ' + name}"
    return {
        "fish": f"# Run this command to configure your shell:\n# eval (pymachine {args})",
        "powershell": f"# Run this command to configure your shell:\n# & pymachine {args} | Invoke-Expression",
        "cmd": f"REM Run this command to configure your shell:\nREM @FOR /f \"tokens=*\" %i IN ('pymachine {args}') DO @%i",
        "tcsh": f"# Run this command to configure your shell:\n# eval `pymachine {args}`",
        "emacs": f";; Run this command to configure Emacs:\n;; (with-temp-buffer (shell-command \"pymachine {args}\" (current-buffer)) (eval-buffer))",
    }.get(shell, f"# Run this command to configure your shell:\n# eval $(pymachine {args})")


def _quote_double(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$").replace("`", "\\`")


def _set(shell: str, key: str, value: str) -> str:
    if shell == "fish":
        escaped = value.replace("\\", "\\\\").replace("'", "\\'")
        return f"set -gx {key} '{escaped}';"
    if shell == "powershell":
        escaped = value.replace("`", "``").replace('"', '`"').replace("$", "`$")
        return f'$Env:{key} = "{escaped}"'
    if shell == "cmd":
        return f"SET {key}={value}"
    if shell == "tcsh":
        escaped = value.replace("'", "'\\''")
        return f"setenv {key} '{escaped}';"
    if shell == "emacs":
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'(setenv "{key}" "{escaped}")'
    # Every statement ends with ';': unquoted, `eval $(pymachine env)` gets all lines as
    # one, and `unset A` followed by `export B=...` would otherwise be one command.
    return f'export {key}="{_quote_double(value)}";'


def _unset(shell: str, key: str) -> str:
    if shell == "fish":
        return f"set -e {key};"
    if shell == "powershell":
        return f"Remove-Item Env:\\{key} -ErrorAction SilentlyContinue"
    if shell == "cmd":
        return f"SET {key}="
    if shell == "tcsh":
        return f"unsetenv {key};"
    if shell == "emacs":
        return f'(setenv "{key}" nil)'
    return f"unset {key};"
