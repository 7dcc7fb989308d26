"""`pymachine completion bash|zsh|fish`: the scripts, sourced by the real shells, and the
answers they get at a Tab press: commands, flags and machine names."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from pymachine.store import MachineConfig, Store

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / ".venv" / "bin"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    store = Store(tmp_path / "home")
    for name in ("dev", "demo", "prod"):
        with store.reserve(MachineConfig(name=name, driver="qemu")):
            pass
    return {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "PYMACHINE_STORAGE_PATH": str(tmp_path / "home")}


def bash_complete(env: dict[str, str], *words: str) -> list[str]:
    """What bash offers after `pymachine WORDS` (the last word is the one being typed)."""
    quoted = " ".join(f"'{w}'" for w in ("pymachine", *words))
    code = f'source <(pymachine completion bash); COMP_WORDS=({quoted}); COMP_CWORD={len(words)}; _pymachine_completion pymachine; printf "%s\\n" "${{COMPREPLY[@]}}"'
    done = subprocess.run(["bash", "-c", code], capture_output=True, text=True, env=env, timeout=60, check=True)
    assert done.stderr == ""
    return [line for line in done.stdout.splitlines() if line]


def test_bash_completes_commands_flags_and_machine_names(env: dict[str, str]) -> None:
    assert bash_complete(env, "st") == ["start", "stop", "status"]
    assert bash_complete(env, "create", "--me") == ["--memory"]
    assert bash_complete(env, "env", "d") == ["demo", "dev"]
    assert bash_complete(env, "ssh", "") == ["demo", "dev", "prod"]
    # several machines: the ones already named are not offered again
    assert bash_complete(env, "stop", "dev", "") == ["demo", "prod"]
    # a new machine's name is not taken from the store
    assert bash_complete(env, "create", "d") == []


def test_machine_names_come_from_the_store_the_command_line_names(env: dict[str, str], tmp_path: Path) -> None:
    other = Store(tmp_path / "other")
    with other.reserve(MachineConfig(name="elsewhere", driver="qemu")):
        pass
    assert bash_complete(env, "--storage-path", str(tmp_path / "other"), "rm", "") == ["elsewhere"]


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_zsh_and_fish_scripts_parse_and_get_answers(env: dict[str, str], shell: str) -> None:
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} is not installed")
    script = subprocess.run([str(BIN / "pymachine"), "completion", shell], capture_output=True, text=True, env=env, timeout=30, check=True).stdout
    assert "_PYMACHINE_COMPLETE" in script
    check = ["zsh", "-n"] if shell == "zsh" else ["fish", "--no-execute"]
    parsed = subprocess.run(check, input=script, capture_output=True, text=True, timeout=30)
    assert parsed.returncode == 0, parsed.stderr
    # what the script asks at a Tab press, and what it is told
    ask = {**env, "_PYMACHINE_COMPLETE": f"{shell}_complete", "COMP_WORDS": "pymachine inspect ", "COMP_CWORD": "2" if shell == "zsh" else ""}
    answer = subprocess.run([str(BIN / "pymachine")], capture_output=True, text=True, env=ask, timeout=30, check=True).stdout
    assert all(name in answer for name in ("dev", "demo", "prod"))


def test_an_unknown_shell_is_one_line_naming_the_help(env: dict[str, str]) -> None:
    done = subprocess.run([str(BIN / "pymachine"), "completion", "tcsh"], capture_output=True, text=True, env=env, timeout=30)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == "Error: No completion script for 'tcsh' (use bash, zsh or fish). Run `pymachine completion --help`\n"
