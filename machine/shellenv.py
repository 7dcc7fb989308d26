"""`pymachine env`: the shell code that points the docker CLI at a machine.

This runs in every new shell of many users, so it imports nothing heavy: the store,
json and os only.
"""

from __future__ import annotations

import os

from .errors import MachineError

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


def check_shell(shell: str) -> str:
    if shell not in SHELLS:
        raise MachineError(f"Unknown shell '{shell}' (known: {', '.join(SHELLS)})", "Run `pymachine env --help`")
    return shell


def variables(name: str, docker_port: int, cert_path: str) -> list[tuple[str, str]]:
    return [
        ("DOCKER_TLS_VERIFY", "1"),
        ("DOCKER_HOST", f"tcp://127.0.0.1:{docker_port}"),
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
    return f'export {key}="{_quote_double(value)}"'


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
    return f"unset {key}"
