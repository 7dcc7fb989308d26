"""`pymachine env`: the shell code for every shell, its fast path, and its errors."""

from __future__ import annotations

import os
import pty
import shutil
import subprocess
from pathlib import Path

import pytest

from pymachine.cli import shellenv
from pymachine.cli.fastpath import try_fast_env
from pymachine.cli.main import run_cli
from pymachine.errors import MachineError
from pymachine.store import STATUS_READY, MachineConfig, Store

ROOT = Path(__file__).resolve().parent.parent
PYMACHINE = ROOT / ".venv" / "bin" / "pymachine"
#: A folder name with every character the shells treat specially.
ODD = "we ird $HOME `id` \"dq\" 'sq' \\back !bang"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, restored_logging):
    for key in ("NO_PROXY", "no_proxy", "PYMACHINE_STORAGE_PATH", "DOCKER_HOST"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("SHELL", "/bin/bash")
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))


def make_machine(root: Path, name: str = "dev", status: str = STATUS_READY, docker_port: int = 42376, error: str = "") -> Path:
    store = Store(root)
    with store.reserve(MachineConfig(name=name, driver="qemu", status=status, docker_port=docker_port, ssh_port=42022, error=error)):
        pass
    return store.machine_dir(name)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    root = tmp_path / "home"
    make_machine(root)
    return root


def fast(capsys: pytest.CaptureFixture[str], args: list[str]) -> tuple[int | None, str, str]:
    code = try_fast_env(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def slow(capsys: pytest.CaptureFixture[str], args: list[str]) -> tuple[int, str, str]:
    code = run_cli(args)
    out = capsys.readouterr()
    return code, out.out, out.err


# -- rendering, shell by shell -------------------------------------------------------


def expected(shell: str, directory: str) -> str:
    port = "42376"
    lines = {
        "bash": ['export DOCKER_TLS_VERIFY="1";', f'export DOCKER_HOST="tcp://127.0.0.1:{port}";', "export DOCKER_CERT_PATH=\"{d}\";", 'export DOCKER_MACHINE_NAME="dev";'],
        "fish": ["set -gx DOCKER_TLS_VERIFY '1';", f"set -gx DOCKER_HOST 'tcp://127.0.0.1:{port}';", "set -gx DOCKER_CERT_PATH '{d}';", "set -gx DOCKER_MACHINE_NAME 'dev';"],
        "powershell": ['$Env:DOCKER_TLS_VERIFY = "1"', f'$Env:DOCKER_HOST = "tcp://127.0.0.1:{port}"', '$Env:DOCKER_CERT_PATH = "{d}"', '$Env:DOCKER_MACHINE_NAME = "dev"'],
        "cmd": ["SET DOCKER_TLS_VERIFY=1", f"SET DOCKER_HOST=tcp://127.0.0.1:{port}", "SET DOCKER_CERT_PATH={d}", "SET DOCKER_MACHINE_NAME=dev"],
        "tcsh": ["setenv DOCKER_TLS_VERIFY '1';", f"setenv DOCKER_HOST 'tcp://127.0.0.1:{port}';", "setenv DOCKER_CERT_PATH '{d}';", "setenv DOCKER_MACHINE_NAME 'dev';"],
        "emacs": ['(setenv "DOCKER_TLS_VERIFY" "1")', f'(setenv "DOCKER_HOST" "tcp://127.0.0.1:{port}")', '(setenv "DOCKER_CERT_PATH" "{d}")', '(setenv "DOCKER_MACHINE_NAME" "dev")'],
    }
    lines["zsh"] = lines["sh"] = lines["bash"]
    return "\n".join(line.replace("{d}", directory) for line in lines[shell]) + "\n"


@pytest.mark.parametrize("shell", shellenv.SHELLS)
def test_env_output_for_every_shell(shell: str, home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = fast(capsys, ["--storage-path", str(home), "env", "--shell", shell, "dev"])
    assert code == 0
    assert out == expected(shell, str(home / "machines" / "dev"))
    assert err == ""  # not a terminal: no hint


@pytest.mark.parametrize(
    "shell, lines",
    [
        ("bash", ["unset DOCKER_TLS_VERIFY;", "unset DOCKER_HOST;", "unset DOCKER_CERT_PATH;", "unset DOCKER_MACHINE_NAME;"]),
        ("zsh", ["unset DOCKER_TLS_VERIFY;", "unset DOCKER_HOST;", "unset DOCKER_CERT_PATH;", "unset DOCKER_MACHINE_NAME;"]),
        ("sh", ["unset DOCKER_TLS_VERIFY;", "unset DOCKER_HOST;", "unset DOCKER_CERT_PATH;", "unset DOCKER_MACHINE_NAME;"]),
        ("fish", ["set -e DOCKER_TLS_VERIFY;", "set -e DOCKER_HOST;", "set -e DOCKER_CERT_PATH;", "set -e DOCKER_MACHINE_NAME;"]),
        (
            "powershell",
            [f"Remove-Item Env:\\{k} -ErrorAction SilentlyContinue" for k in shellenv.DOCKER_VARIABLES],
        ),
        ("cmd", ["SET DOCKER_TLS_VERIFY=", "SET DOCKER_HOST=", "SET DOCKER_CERT_PATH=", "SET DOCKER_MACHINE_NAME="]),
        ("tcsh", ["unsetenv DOCKER_TLS_VERIFY;", "unsetenv DOCKER_HOST;", "unsetenv DOCKER_CERT_PATH;", "unsetenv DOCKER_MACHINE_NAME;"]),
        ("emacs", [f'(setenv "{k}" nil)' for k in shellenv.DOCKER_VARIABLES]),
    ],
)
def test_unset_for_every_shell_needs_no_machine(shell: str, lines: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = fast(capsys, ["--storage-path", str(tmp_path / "empty"), "env", "--unset", "--shell", shell])
    assert code == 0
    assert out == "\n".join(lines) + "\n"
    assert err == ""
    assert not (tmp_path / "empty").exists()


def test_unset_with_no_proxy_also_unsets_no_proxy(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = fast(capsys, ["--storage-path", str(tmp_path), "env", "-u", "--no-proxy", "--shell", "fish"])
    assert code == 0
    assert out.splitlines()[-1] == "set -e NO_PROXY;"
    assert len(out.splitlines()) == 5


def test_shell_is_detected_from_SHELL(home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    assert shellenv.detect_shell({"SHELL": "/usr/local/bin/fish"}) == "fish"
    assert shellenv.detect_shell({"SHELL": "/bin/csh"}) == "tcsh"
    assert shellenv.detect_shell({"SHELL": "/bin/tcsh"}) == "tcsh"
    assert shellenv.detect_shell({"SHELL": "/bin/zsh"}) == "zsh"
    assert shellenv.detect_shell({"SHELL": "/bin/ksh"}) == "bash"
    assert shellenv.detect_shell({}) == "bash"
    monkeypatch.setenv("SHELL", "/usr/bin/fish")
    code, out, _ = fast(capsys, ["--storage-path", str(home), "env", "dev"])
    assert code == 0
    assert out.startswith("set -gx DOCKER_TLS_VERIFY '1';")


def test_unknown_shell_is_an_error_listing_the_known_ones(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = fast(capsys, ["--storage-path", str(home), "env", "--shell=nushell", "dev"])
    assert code == 1
    assert out == ""
    assert err == "Error: Unknown shell 'nushell' (known: bash, zsh, sh, fish, powershell, cmd, tcsh, emacs). Run `pymachine env --help`\n"


# -- quoting -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shell, line",
    [
        ("bash", 'export DOCKER_CERT_PATH="{p}/we ird \\$HOME \\`id\\` \\"dq\\" \'sq\' \\\\back !bang/machines/dev";'),
        ("fish", "set -gx DOCKER_CERT_PATH '{p}/we ird $HOME `id` \"dq\" \\'sq\\' \\\\back !bang/machines/dev';"),
        ("powershell", '$Env:DOCKER_CERT_PATH = "{p}/we ird `$HOME ``id`` `"dq`" \'sq\' \\back !bang/machines/dev"'),
        ("tcsh", "setenv DOCKER_CERT_PATH '{p}/we ird $HOME `id` \"dq\" '\\''sq'\\'' \\back !bang/machines/dev';"),
        ("emacs", '(setenv "DOCKER_CERT_PATH" "{p}/we ird $HOME `id` \\"dq\\" \'sq\' \\\\back !bang/machines/dev")'),
    ],
)
def test_odd_paths_are_quoted_for_each_shell(shell: str, line: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_machine(tmp_path / ODD)
    code, out, _ = fast(capsys, ["--storage-path", str(tmp_path / ODD), "env", "--shell", shell, "dev"])
    assert code == 0
    assert out.splitlines()[2] == line.replace("{p}", str(tmp_path))


def _eval_in(shell: str, code: str, env: dict[str, str]) -> dict[str, str]:
    done = subprocess.run([shell, "-c", 'eval "$(cat)"; env -0'], input=code.encode(), capture_output=True, env=env, timeout=10)
    assert done.returncode == 0, done.stderr
    assert done.stderr == b""
    return dict(item.decode().split("=", 1) for item in done.stdout.split(b"\0") if item)


@pytest.mark.parametrize("shell", ["bash", "sh"])
def test_env_output_evaluated_by_a_real_shell(shell: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if shutil.which(shell) is None:
        pytest.skip(f"no {shell} here")
    root = tmp_path / ODD
    directory = make_machine(root)
    code, out, _ = fast(capsys, ["--storage-path", str(root), "env", "--shell", shell if shell == "bash" else "sh", "dev"])
    assert code == 0
    env = {"PATH": os.environ["PATH"], "HOME": "/nonexistent"}
    seen = _eval_in(shell, out, env)
    assert seen["DOCKER_TLS_VERIFY"] == "1"
    assert seen["DOCKER_HOST"] == "tcp://127.0.0.1:42376"
    assert seen["DOCKER_CERT_PATH"] == str(directory)
    assert seen["DOCKER_MACHINE_NAME"] == "dev"
    # And --unset takes them away again.
    code, unset_code, _ = fast(capsys, ["env", "--unset", "--shell", "bash"])
    after = _eval_in(shell, out + unset_code, env)
    assert not set(shellenv.DOCKER_VARIABLES) & set(after)


def test_no_proxy_evaluated_by_bash_merges_the_users_list(home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_PROXY", "example.com,.corp")
    code, out, _ = fast(capsys, ["--storage-path", str(home), "env", "--shell", "bash", "--no-proxy", "dev"])
    assert code == 0
    seen = _eval_in("bash", out, {"PATH": os.environ["PATH"], "NO_PROXY": "stale"})
    assert seen["NO_PROXY"] == "example.com,.corp,127.0.0.1"


@pytest.mark.parametrize(
    "environ, key, value",
    [
        ({}, "NO_PROXY", "127.0.0.1"),
        ({"NO_PROXY": "a.example,b.example"}, "NO_PROXY", "a.example,b.example,127.0.0.1"),
        ({"no_proxy": "a.example"}, "no_proxy", "a.example,127.0.0.1"),
        ({"NO_PROXY": "upper", "no_proxy": "lower"}, "NO_PROXY", "upper,127.0.0.1"),
        ({"NO_PROXY": "127.0.0.1,x"}, "NO_PROXY", "127.0.0.1,x"),
        ({"NO_PROXY": ",,a,"}, "NO_PROXY", "a,127.0.0.1"),
    ],
)
def test_no_proxy_value_merges_existing(environ: dict[str, str], key: str, value: str) -> None:
    assert shellenv.no_proxy_value(environ) == (key, value)


def test_no_proxy_uses_the_lower_case_variable_when_only_it_is_set(home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("no_proxy", "intranet")
    code, out, _ = fast(capsys, ["--storage-path", str(home), "env", "--shell", "fish", "--no-proxy", "dev"])
    assert code == 0
    assert out.splitlines()[-1] == "set -gx no_proxy 'intranet,127.0.0.1';"


# -- stdout is shell code only; the hint goes to a terminal's stderr -----------------


def test_hint_only_on_a_terminal_and_only_on_stderr(home: Path) -> None:
    env = {**os.environ, "PYMACHINE_STORAGE_PATH": str(home)}
    piped = subprocess.run([str(PYMACHINE), "env", "--shell", "bash", "dev"], capture_output=True, text=True, env=env, timeout=30)
    assert piped.returncode == 0
    assert piped.stderr == ""
    assert piped.stdout == expected("bash", str(home / "machines" / "dev"))

    primary, secondary = pty.openpty()
    try:
        proc = subprocess.run([str(PYMACHINE), "env", "--shell", "fish", "dev"], stdout=secondary, stderr=subprocess.PIPE, env=env, timeout=30)
        os.close(secondary)
        secondary = -1
        chunks = []
        while True:
            try:
                chunk = os.read(primary, 4096)
            except OSError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(primary)
        if secondary != -1:
            os.close(secondary)
    assert proc.returncode == 0
    terminal = b"".join(chunks).decode().replace("\r\n", "\n")
    assert terminal == expected("fish", str(home / "machines" / "dev"))
    assert proc.stderr.decode() == "# Run this command to configure your shell:\n# eval (pymachine env --shell fish dev)\n"


@pytest.mark.parametrize(
    "shell, unset, hint",
    [
        ("bash", False, "# eval $(pymachine env dev)"),
        ("zsh", False, "# eval $(pymachine env dev)"),
        ("fish", True, "# eval (pymachine env --unset --shell fish)"),
        ("powershell", False, "# & pymachine env --shell powershell dev | Invoke-Expression"),
        ("cmd", False, "REM @FOR /f \"tokens=*\" %i IN ('pymachine env --shell cmd dev') DO @%i"),
        ("tcsh", False, "# eval `pymachine env --shell tcsh dev`"),
        ("emacs", False, ';; (with-temp-buffer (shell-command "pymachine env --shell emacs dev" (current-buffer)) (eval-buffer))'),
    ],
)
def test_usage_hint_names_the_command_for_that_shell(shell: str, unset: bool, hint: str) -> None:
    assert shellenv.usage_hint("dev", shell, unset).splitlines()[-1] == hint


# -- errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "status, error, reason",
    [("creating", "", "status creating"), ("error", "provisioning failed: dockerd did not start", "provisioning failed: dockerd did not start")],
)
def test_machine_not_ready_is_one_line_naming_the_next_command(status: str, error: str, reason: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_machine(tmp_path, status=status, error=error)
    code, out, err = fast(capsys, ["--storage-path", str(tmp_path), "env", "dev"])
    assert code == 1
    assert out == ""
    # stopped: `provision` would only say "not running"; `start` provisions it
    assert err == f"Error: Machine 'dev' is not ready ({reason}). Run `pymachine start dev` (it provisions it), or `pymachine rm dev` and create it again\n"
    assert slow(capsys, ["--storage-path", str(tmp_path), "env", "dev"]) == (1, "", err)


def test_ready_machine_without_a_docker_port_is_not_ready(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_machine(tmp_path, docker_port=0)
    code, _, err = fast(capsys, ["--storage-path", str(tmp_path), "env", "dev"])
    assert code == 1
    assert "is not ready" in err and "`pymachine start dev`" in err  # stopped: start provisions it


def test_unknown_and_half_created_machines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = fast(capsys, ["--storage-path", str(tmp_path), "env", "ghost"])
    assert (code, out) == (1, "")
    assert err == "Error: Machine 'ghost' does not exist. Run `pymachine ls` to see your machines\n"
    (tmp_path / "machines" / "half").mkdir(parents=True)
    code, _, err = fast(capsys, ["--storage-path", str(tmp_path), "env", "half"])
    assert code == 1
    assert err.startswith("Error: Machine 'half' is not ready (incomplete: no config.json)")
    assert err.count("\n") == 1


def test_bad_name_through_the_fast_path_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = fast(capsys, ["--storage-path", str(tmp_path), "env", "bad\nname"])
    assert (code, out) == (1, "")
    assert err.startswith("Error: Invalid machine name")
    assert err.count("\n") == 1


# -- fast path and typer agree -------------------------------------------------------


@pytest.mark.parametrize("shell", shellenv.SHELLS)
@pytest.mark.parametrize("extra", [[], ["--no-proxy"], ["--unset"], ["--unset", "--no-proxy"]])
def test_fast_path_and_typer_command_print_the_same(shell: str, extra: list[str], home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_PROXY", "example.com")
    args = ["--storage-path", str(home), "env", "--shell", shell, *extra, "dev"]
    fast_result = fast(capsys, args)
    assert fast_result[0] == 0
    assert slow(capsys, args) == fast_result


def test_fast_path_reads_the_storage_path_from_the_environment(home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYMACHINE_STORAGE_PATH", str(home))
    by_env = fast(capsys, ["env", "--shell", "cmd", "dev"])
    assert by_env[0] == 0
    assert fast(capsys, ["-s", str(home), "env", "--shell", "cmd", "dev"]) == by_env
    assert fast(capsys, [f"--storage-path={home}", "env", "--shell", "cmd", "dev"]) == by_env
    assert slow(capsys, ["env", "--shell", "cmd", "dev"]) == by_env


@pytest.mark.parametrize(
    "args",
    [
        ["env", "--help"],
        ["env", "-h"],
        ["env", "--bogus", "dev"],
        ["env", "--swarm", "dev"],
        ["env"],
        ["env", "a", "b"],
        ["env", "--shell"],
        ["ls"],
        [],
        ["--storage-path"],
        ["--debug", "env", "dev"],
        ["envy", "dev"],
    ],
)
def test_anything_else_falls_through_to_typer(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert try_fast_env(args) is None
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


def test_typer_reports_what_the_fast_path_passed_on(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = slow(capsys, ["--storage-path", str(tmp_path), "env", "--bogus", "dev"])
    assert (code, out) == (1, "")
    assert err == "Error: No such option '--bogus'. Run `pymachine env --help`.\n"
    code, out, err = slow(capsys, ["--storage-path", str(tmp_path), "env"])
    assert (code, out) == (1, "")
    assert err == "Error: env needs a machine name. Run `pymachine env NAME`, or `pymachine ls` to list machines\n"


def test_check_shell_accepts_known_shells_only() -> None:
    for shell in shellenv.SHELLS:
        assert shellenv.check_shell(shell) == shell
    with pytest.raises(MachineError):
        shellenv.check_shell("Bash")


# -- REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE ------------------------------------------------


def _machine_with_ca(tmp_path: Path) -> Path:
    machine = tmp_path / "machine"
    machine.mkdir()
    (machine / "ca.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nOURS\n-----END CERTIFICATE-----\n")
    return machine


def test_a_ca_bundle_variable_is_pointed_at_a_copy_with_the_machines_ca(tmp_path: Path) -> None:
    from pymachine.cli.shellenv import ca_bundle_override

    system = tmp_path / "system.pem"
    system.write_bytes(b"-----BEGIN CERTIFICATE-----\nSYSTEM\n-----END CERTIFICATE-----\n")
    machine = _machine_with_ca(tmp_path)
    [(saved_key, saved), (key, path)] = ca_bundle_override(str(machine), {"REQUESTS_CA_BUNDLE": str(system)})
    assert (saved_key, saved) == ("PYMACHINE_SAVED_REQUESTS_CA_BUNDLE", str(system)), "the user's own value is kept in the shell"
    assert key == "REQUESTS_CA_BUNDLE"
    combined = Path(path).read_bytes()
    assert b"SYSTEM" in combined and b"OURS" in combined, "other sites keep verifying, and so does the machine"
    # Run again from a shell where env already replaced it: still built from the user's
    # own file, and the saved value is not written again.
    [(_, again)] = ca_bundle_override(str(machine), {"REQUESTS_CA_BUNDLE": path, saved_key: str(system)})
    assert Path(again).read_bytes() == combined


def test_no_override_without_such_a_variable(tmp_path: Path) -> None:
    from pymachine.cli.shellenv import ca_bundle_override

    assert ca_bundle_override(str(_machine_with_ca(tmp_path)), {}) == []


def test_unset_gives_the_users_own_bundle_back(tmp_path: Path) -> None:
    from pymachine.cli.shellenv import ca_bundle_override, ca_bundle_restore

    system = tmp_path / "system.pem"
    system.write_bytes(b"SYSTEM\n")
    [(_, _), (key, path)] = ca_bundle_override(str(_machine_with_ca(tmp_path)), {"CURL_CA_BUNDLE": str(system)})
    assert key == "CURL_CA_BUNDLE"
    saved = {"PYMACHINE_SAVED_CURL_CA_BUNDLE": str(system)}
    assert ca_bundle_restore({"CURL_CA_BUNDLE": path, **saved}) == ([("CURL_CA_BUNDLE", str(system))], ["PYMACHINE_SAVED_CURL_CA_BUNDLE"])
    # A shell from before the saved variable: the combined file's first line still knows.
    assert ca_bundle_restore({"CURL_CA_BUNDLE": path}) == ([("CURL_CA_BUNDLE", str(system))], [])
    assert ca_bundle_restore({"CURL_CA_BUNDLE": str(system)}) == ([], []), "a bundle we did not make is left alone"
    # The machine is removed: its combined bundle is gone, the saved value still restores.
    Path(path).unlink()
    assert ca_bundle_restore({"CURL_CA_BUNDLE": path, **saved}) == ([("CURL_CA_BUNDLE", str(system))], ["PYMACHINE_SAVED_CURL_CA_BUNDLE"])
    # Gone, and nothing saved: unset rather than point at a missing file.
    assert ca_bundle_restore({"CURL_CA_BUNDLE": path}) == ([], ["CURL_CA_BUNDLE"])
    # The user pointed the variable elsewhere since: their choice stays, the saved copy goes.
    assert ca_bundle_restore({"CURL_CA_BUNDLE": "/etc/mine.pem", **saved}) == ([], ["PYMACHINE_SAVED_CURL_CA_BUNDLE"])


# -- the whole round trip, evaluated by real shells, quoted and unquoted ---------------

#: (shell program, --shell value, how the shell evaluates `pymachine ARGS`)
REAL_SHELLS = [
    ("bash", "bash", 'eval "$({cmd})"'),
    ("bash", "bash", "eval $({cmd})"),
    ("dash", "sh", 'eval "$({cmd})"'),
    ("dash", "sh", "eval $({cmd})"),
    ("zsh", "zsh", 'eval "$({cmd})"'),
    ("zsh", "zsh", "eval $({cmd})"),
    ("fish", "fish", "eval ({cmd})"),
    ("fish", "fish", "{cmd} | source"),
]


def _run_in(program: str, script: str, env: dict[str, str]) -> tuple[dict[str, str], str]:
    done = subprocess.run([program, "-c", script + "\nenv -0"], capture_output=True, env=env, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    seen = dict(item.decode().split("=", 1) for item in done.stdout.split(b"\0") if item)
    return seen, done.stderr.decode()


@pytest.mark.parametrize("program, shell, form", REAL_SHELLS, ids=[f"{p}:{f.split('(')[0].strip()}{'-quoted' if chr(34) in f else ''}" for p, _, f in REAL_SHELLS])
@pytest.mark.parametrize("user_has_a_bundle", [True, False])
def test_env_then_rm_then_unset_gives_the_users_bundle_back(program: str, shell: str, form: str, user_has_a_bundle: bool, tmp_path: Path) -> None:
    """Defect 10: `eval $(pymachine env --unset)` restores REQUESTS_CA_BUNDLE, quoted or
    not, even after the machine (and its combined bundle) was removed."""
    if shutil.which(program) is None:
        pytest.skip(f"no {program} here (apt-get install {program})")
    root = tmp_path / "store"
    directory = make_machine(root)
    (directory / "ca.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nOURS\n-----END CERTIFICATE-----\n")
    system = tmp_path / "my bundle.pem"
    system.write_bytes(b"-----BEGIN CERTIFICATE-----\nSYSTEM\n-----END CERTIFICATE-----\n")
    env = {"PATH": f"{PYMACHINE.parent}:{os.environ['PATH']}", "HOME": str(tmp_path), "PYMACHINE_STORAGE_PATH": str(root)}
    if user_has_a_bundle:
        env["REQUESTS_CA_BUNDLE"] = str(system)
    pm = f"pymachine env --shell {shell}"
    script = "\n".join(
        [
            form.format(cmd=f"{pm} dev"),
            # docker-machine's users run `rm` while the shell still points at the machine
            f"rm -rf '{directory}'",
            form.format(cmd=f"{pm} --unset"),
        ]
    )
    seen, err = _run_in(program, script, env)
    assert err == ""
    assert not set(shellenv.DOCKER_VARIABLES) & set(seen)
    assert not [k for k in seen if k.startswith("PYMACHINE_SAVED_")]
    if user_has_a_bundle:
        assert seen["REQUESTS_CA_BUNDLE"] == str(system)
    else:
        assert "REQUESTS_CA_BUNDLE" not in seen


@pytest.mark.parametrize("program, shell, form", REAL_SHELLS, ids=[f"{p}:{f.split('(')[0].strip()}{'-quoted' if chr(34) in f else ''}" for p, _, f in REAL_SHELLS])
def test_env_for_two_machines_in_turn_then_unset(program: str, shell: str, form: str, tmp_path: Path) -> None:
    """Switching machines keeps the user's own value saved, not the first machine's copy."""
    if shutil.which(program) is None:
        pytest.skip(f"no {program} here (apt-get install {program})")
    root = tmp_path / "store"
    for name in ("one", "two"):
        (make_machine(root, name) / "ca.pem").write_bytes(f"-----BEGIN CERTIFICATE-----\n{name}\n-----END CERTIFICATE-----\n".encode())
    system = tmp_path / "system.pem"
    system.write_bytes(b"SYSTEM\n")
    env = {"PATH": f"{PYMACHINE.parent}:{os.environ['PATH']}", "HOME": str(tmp_path), "PYMACHINE_STORAGE_PATH": str(root), "REQUESTS_CA_BUNDLE": str(system)}
    pm = f"pymachine env --shell {shell}"
    between, err = _run_in(program, "\n".join([form.format(cmd=f"{pm} one"), form.format(cmd=f"{pm} two")]), env)
    assert err == ""
    assert between["DOCKER_MACHINE_NAME"] == "two"
    assert between["REQUESTS_CA_BUNDLE"] == str(root / "machines" / "two" / shellenv.COMBINED_BUNDLE)
    assert between["PYMACHINE_SAVED_REQUESTS_CA_BUNDLE"] == str(system)
    combined = Path(between["REQUESTS_CA_BUNDLE"]).read_bytes()
    assert b"SYSTEM" in combined and b"two" in combined and b"one" not in combined
    after, err = _run_in(program, "\n".join([form.format(cmd=f"{pm} one"), form.format(cmd=f"{pm} two"), form.format(cmd=f"{pm} --unset")]), env)
    assert err == ""
    assert after["REQUESTS_CA_BUNDLE"] == str(system)
    assert "PYMACHINE_SAVED_REQUESTS_CA_BUNDLE" not in after and "DOCKER_HOST" not in after


def test_env_of_a_running_machine_in_error_names_provision(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from pymachine.driver import State
    from pymachine.machine import Machine

    make_machine(tmp_path, status="error", error="provisioning failed: dockerd did not start")
    monkeypatch.setattr(Machine, "state", lambda self: State.RUNNING)
    code, out, err = fast(capsys, ["--storage-path", str(tmp_path), "env", "dev"])
    assert (code, out) == (1, "")
    assert err.endswith("Run `pymachine provision dev`, or `pymachine rm dev` and create it again\n")


def test_csh_is_taken_for_tcsh_as_shell_detection_takes_it(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = fast(capsys, ["--storage-path", str(home), "env", "--shell", "csh", "dev"])
    assert code == 0, err
    assert out == fast(capsys, ["--storage-path", str(home), "env", "--shell", "tcsh", "dev"])[1]
    assert "setenv DOCKER_HOST" in out
