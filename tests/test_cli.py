"""The CLI through its real entry: one-line errors with the next command, exit 1, and `ls`."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from pathlib import Path

import pytest

from pymachine import __version__
from pymachine.cli.main import run_cli
from pymachine.store import CONFIG_VERSION, STATUS_READY, MachineConfig, Store

ROOT = Path(__file__).resolve().parent.parent
PYMACHINE = ROOT / ".venv" / "bin" / "pymachine"


@pytest.fixture
def storage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restored_logging):
    """PYMACHINE_STORAGE_PATH on a fresh folder, an empty image cache, no docker state."""
    root = tmp_path / "home"
    monkeypatch.setenv("PYMACHINE_STORAGE_PATH", str(root))
    monkeypatch.setenv("PYMACHINE_CACHE_PATH", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))
    for key in ("DOCKER_HOST", "DOCKER_CONTEXT", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(key, raising=False)
    yield root


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = run_cli(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_one_line_error(code: int, out: str, err: str, *needles: str) -> str:
    assert code == 1, (out, err)
    assert out == ""
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("Error: ")
    for needle in needles:
        assert needle in lines[0]
    return lines[0]


def add_machine(root: Path, name: str, **fields) -> Path:
    store = Store(root)
    fields.setdefault("driver", "qemu")
    with store.reserve(MachineConfig(name=name, **fields)):
        pass
    return store.machine_dir(name)


def add_future_machine(root: Path, name: str) -> None:
    directory = root / "machines" / name
    directory.mkdir(parents=True)
    data = MachineConfig(name=name, driver="qemu").to_json()
    data["version"] = CONFIG_VERSION + 5
    (directory / "config.json").write_text(json.dumps(data))


# -- user errors ---------------------------------------------------------------------

NOT_FOUND = "Error: Machine 'ghost' does not exist. Run `pymachine ls` to see your machines"


@pytest.mark.parametrize(
    "args",
    [
        ["start", "ghost"],
        ["stop", "ghost"],
        ["kill", "ghost"],
        ["restart", "ghost"],
        ["env", "ghost"],
        ["ssh", "ghost"],
        ["ssh", "ghost", "uname", "-a"],
        ["rm", "-y", "ghost"],
        ["rm", "-f", "-y", "ghost"],
        ["inspect", "ghost"],
        ["ip", "ghost"],
        ["url", "ghost"],
        ["status", "ghost"],
        ["config", "ghost"],
        ["provision", "ghost"],
        ["logs", "ghost"],
        ["ports", "ghost"],
        ["version", "ghost"],
    ],
)
def test_unknown_machine(args: list[str], storage: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = assert_one_line_error(*cli(capsys, *args))
    assert line == NOT_FOUND
    assert not (storage / "machines" / "ghost").exists()


@pytest.mark.parametrize(
    "args, line",
    [
        (
            ["create", "bad name!"],
            "Error: Invalid machine name 'bad name!': use letters, digits, '.' and '-', starting with a letter or digit, at most 63 characters. Run `pymachine create --help` for an example",
        ),
        (["create", "-" + "x"], None),  # an option-looking name is a usage error
        (["start", "no_underscores"], "Error: Invalid machine name 'no_underscores'"),
        (["create", "x" * 64], "Error: Invalid machine name"),
        (["create", "x", "-m", "lots"], "Error: --memory 'lots' is not a size like 2048, 2048M or 2G. Run `pymachine create --help`"),
        (["create", "x", "--disk-size", "1.5G"], "Error: --disk-size '1.5G' is not a size like 2048, 2048M or 2G. Run `pymachine create --help`"),
        (["create", "x", "-m", "128"], "Error: A machine needs at least 1 CPU, 256 MB of memory and a 1024 MB disk. Run `pymachine create --help`"),
        (["create", "x", "--cpus", "0"], "Error: A machine needs at least 1 CPU"),
        (["create", "x", "--forward-bind", "10.1.2.3"], "Error: --forward-bind takes 127.0.0.1 or 0.0.0.0, not '10.1.2.3'. Run `pymachine create --help`"),
        (["create", "x", "-o", "novalue"], "Error: --opt 'novalue' is not KEY=VALUE. Run `pymachine create --help`"),
        (
            ["create", "x", "-o", "colour=blue"],
            "Error: Unknown option 'colour' for this driver (it takes: accel, aslr, binary, boot, cpu, firmware, restrict-network). Run `pymachine drivers` to see each driver's options",
        ),
        (["create", "x", "-o", "restrict-network=maybe"], "Error: Option 'restrict-network' takes true or false, not 'maybe'. Run `pymachine drivers`"),
        (["create", "x", "--mount", "/", "--no-mounts"], "Error: --mount and --no-mounts contradict each other. Run `pymachine create` with one of them"),
        (["create", "x", "--mount", "/no/such/folder"], "Error: --mount /no/such/folder: /no/such/folder is not a folder on this host. Create it, or run `pymachine create` with another --mount folder"),
        (["create", "x", "--mount", "/:/etc/x"], "Error: --mount /:/etc/x: the guest needs /etc for itself. Run `pymachine create` with another guest path"),
        (["create", "x", "--mount", "/:rel"], "Error: --mount /:rel: the guest path must be absolute"),
        (["create", "x", "-d", "parallels", "--mount", "/"], "Error: The parallels driver cannot share host folders with amd64 guests yet. Run `pymachine create` without --mount, or use -d qemu"),
        (["rm", "ghost"], "Error: Machine 'ghost' does not exist. Run `pymachine ls`"),
        (["active"], "Error: No machine is active. Run `eval $(pymachine env NAME)` or `pymachine use NAME`"),
        (["env", "--shell", "nu", "x"], "Error: Unknown shell 'nu' (known: bash, zsh, sh, fish, powershell, cmd, tcsh, emacs). Run `pymachine env --help`"),
    ],
)
def test_user_errors_are_one_line_with_the_next_command(args: list[str], line: str | None, storage: Path, capsys: pytest.CaptureFixture[str]) -> None:
    got = assert_one_line_error(*cli(capsys, *args))
    if line is not None:
        assert got.startswith(line)
    assert "`pymachine" in got
    assert Store(storage).names() == []


def test_unknown_driver_lists_the_known_ones(storage: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = assert_one_line_error(*cli(capsys, "create", "x", "--driver", "hyperv"))
    assert line.startswith("Error: Unknown driver 'hyperv' (known drivers: ")
    known = line.split("(known drivers: ", 1)[1].split(")", 1)[0].split(", ")
    assert "qemu" in known and known == sorted(known)
    assert line.endswith("Run `pymachine drivers` to list them")
    assert Store(storage).names() == []


@pytest.fixture
def fake_qemu_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """qemu-system-x86_64 and qemu-img that exist (the precheck looks) but must never run."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for program in ("qemu-system-x86_64", "qemu-img"):
        script = bin_dir / program
        script.write_text(f"#!/bin/sh\necho 'fake {program} must not run' >&2\nexit 99\n")
        script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return bin_dir


def _error_line_last(code: int, out: str, err: str) -> str:
    """create prints its progress steps on stderr before failing: the error is the last line."""
    assert code == 1
    assert out == ""
    assert "Traceback" not in err
    lines = err.splitlines()
    errors = [line for line in lines if line.startswith("Error: ")]
    assert errors == [lines[-1]], err
    return lines[-1]


def test_create_without_a_boot_image_says_how_to_get_one_and_leaves_nothing(storage: Path, fake_qemu_on_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = _error_line_last(*cli(capsys, "create", "dev"))
    assert line == (
        "Error: No amd64 boot image here. Install it with `pipx inject pymachine-vm pymachine-vm-image-amd64` "
        "(or `pip install pymachine-vm-image-amd64`), or build it on Debian with `pymachine image build --arch amd64`"
    )
    assert Store(storage).names() == []
    assert not (storage / "machines" / "dev").exists()
    assert not (storage / "certs").exists()


def test_create_with_a_missing_iso_path(storage: Path, fake_qemu_on_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = _error_line_last(*cli(capsys, "create", "dev", "--iso", str(tmp_path / "nope.iso")))
    assert f"No ISO at {tmp_path / 'nope.iso'}" in line and "--iso" in line
    assert Store(storage).names() == []


def test_create_with_a_file_that_is_not_an_iso(storage: Path, fake_qemu_on_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fake = tmp_path / "fake.iso"
    fake.write_bytes(b"\0" * 40000)
    line = _error_line_last(*cli(capsys, "create", "dev", "--iso", str(fake)))
    assert "is not an ISO 9660 image" in line
    assert Store(storage).names() == []


def test_create_of_an_existing_machine_is_refused(storage: Path, capsys: pytest.CaptureFixture[str]) -> None:
    add_machine(storage, "dev", cpus=3)
    line = assert_one_line_error(*cli(capsys, "create", "dev"))
    assert line == "Error: Machine 'dev' already exists. Run `pymachine start dev`, or `pymachine rm dev` first to make it anew"
    assert Store(storage).load("dev").cpus == 3


@pytest.mark.parametrize("args", [["start", "future"], ["env", "future"], ["inspect", "future"], ["status", "future"], ["rm", "-y", "future"], ["stop", "future"]])
def test_config_from_the_future_is_refused_in_one_line(args: list[str], storage: Path, capsys: pytest.CaptureFixture[str]) -> None:
    add_future_machine(storage, "future")
    line = assert_one_line_error(*cli(capsys, *args))
    assert line == (
        f"Error: Machine 'future' was saved by a newer pymachine (config version {CONFIG_VERSION + 5}; "
        f"this one reads up to {CONFIG_VERSION}). Upgrade pymachine with `pipx upgrade pymachine-vm` (or `pip install -U pymachine-vm`)"
    )
    assert (storage / "machines" / "future" / "config.json").exists()


def test_rm_of_an_existing_machine_needs_confirmation_without_a_terminal(storage: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pymachine.store import MachineConfig, Store

    with Store(storage).reserve(MachineConfig(name="keep", driver="qemu")):
        pass
    got = assert_one_line_error(*cli(capsys, "rm", "keep"))
    assert got == "Error: rm needs confirmation. Run `pymachine rm -y keep`"
    assert (storage / "machines" / "keep").is_dir(), "nothing is removed without confirmation"


def test_rm_force_removes_a_machine_it_cannot_read(storage: Path, capsys: pytest.CaptureFixture[str]) -> None:
    add_future_machine(storage, "future")
    (storage / "machines" / "broken").mkdir()
    (storage / "machines" / "broken" / "config.json").write_text("{oops")
    (storage / "machines" / "half").mkdir()
    for name in ("future", "broken", "half"):
        code, out, err = cli(capsys, "rm", "-f", "-y", name)
        assert (code, out) == (0, "")
        assert err == f"Removed machine '{name}'.\n"
    assert Store(storage).names() == []


def test_unreadable_config_names_rm(storage: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (storage / "machines" / "broken").mkdir(parents=True)
    (storage / "machines" / "broken" / "config.json").write_text('{"version": 1,')
    line = assert_one_line_error(*cli(capsys, "start", "broken"))
    assert "unreadable config.json" in line and line.endswith("Run `pymachine rm -f broken` to remove it")


@pytest.mark.parametrize(
    "args, line",
    [
        (["--bogus"], "Error: No such option '--bogus'. Run `pymachine --help`."),
        (["ls", "--bogus"], "Error: No such option '--bogus'. Run `pymachine ls --help`."),
        (["create", "x", "--memroy", "2G"], "Error: No such option '--memroy'"),
        (["start"], "Error: Missing argument 'NAMES...'. Run `pymachine start --help`."),
        (["create"], "Error: Missing argument 'NAME'. Run `pymachine create --help`."),
        (["nosuch"], "Error: No such command 'nosuch'. Run `pymachine --help`."),
        (["ls", "--timeout", "soon"], "Error: Invalid value for '--timeout' / '-t': 'soon' is not a valid float. Run `pymachine ls --help`."),
        (["create", "x", "--cpus", "two"], "Error: Invalid value for '--cpus': 'two' is not a valid integer. Run `pymachine create --help`."),
        (["image", "fetch"], "Error: No such command 'fetch'. Run `pymachine image --help`."),
        (["ls", "--format"], "Error: Option '--format' requires an argument."),
    ],
)
def test_usage_errors_are_one_line(args: list[str], line: str, storage: Path, capsys: pytest.CaptureFixture[str]) -> None:
    got = assert_one_line_error(*cli(capsys, *args))
    assert got.startswith(line)
    assert got.endswith("--help`.")


def test_unexpected_errors_are_one_line_and_logged_with_the_traceback(storage: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from pymachine.machines import Machines

    def broken(self, timeout: float = 10.0):
        raise RuntimeError("boom")

    monkeypatch.setattr(Machines, "list", broken)
    line = assert_one_line_error(*cli(capsys, "ls"))
    assert line == f"Error: Unexpected RuntimeError: boom. The details are in {storage / 'debug.log'}; please report them."
    for handler in logging.getLogger().handlers:
        handler.flush()
    log = (storage / "debug.log").read_text()
    assert "Traceback" in log and "RuntimeError: boom" in log


# -- ls ------------------------------------------------------------------------------

HEADER = "NAME   ACTIVE   DRIVER   ARCH   STATE   URL   DOCKER   ERRORS"


def test_ls_on_an_empty_store(storage: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(capsys, "ls") == (0, HEADER + "\n", "")
    assert cli(capsys, "ls", "-q") == (0, "", "")
    assert cli(capsys, "ls", "--format", "json") == (0, "[]\n", "")
    assert cli(capsys, "ls", "--format", "{{.Name}}") == (0, "", "")


@pytest.fixture
def three_machines(storage: Path) -> Path:
    """dev: stopped qemu machine; half: a create that died early; future: a newer config."""
    dev = add_machine(storage, "dev", status=STATUS_READY, docker_port=42376, ssh_port=42022, engine_version="20.10.24")
    (dev / "data.qcow2").write_bytes(b"")  # the QEMU driver reads "disk, no process" as Stopped
    (storage / "machines" / "half").mkdir()
    add_future_machine(storage, "future")
    return storage


def test_ls_table(three_machines: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "ls")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "ACTIVE", "DRIVER", "ARCH", "STATE", "URL", "DOCKER", "ERRORS"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert sorted(rows) == ["dev", "future", "half"]
    assert rows["dev"].split() == ["dev", "-", "qemu", "amd64", "Stopped", "v20.10.24"]
    assert rows["half"].split()[:3] == ["half", "-", "Error"]
    assert rows["half"].endswith("incomplete: no config.json")
    assert "newer pymachine" in rows["future"]
    # Columns line up under the header.
    column = lines[0].index("STATE")
    assert rows["dev"][column:].startswith("Stopped")


def test_ls_quiet_json_and_template(three_machines: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(capsys, "ls", "-q") == (0, "dev\nfuture\nhalf\n", "")
    code, out, _ = cli(capsys, "ls", "--format", "json")
    assert code == 0
    rows = json.loads(out)
    assert [r["Name"] for r in rows] == ["dev", "future", "half"]
    assert rows[0] == {"Name": "dev", "Active": False, "Driver": "qemu", "Arch": "amd64", "State": "Stopped", "URL": "", "Docker": "v20.10.24", "Error": "", "HostMemoryMB": None}
    assert rows[2]["State"] == "Error" and rows[2]["Error"] == "incomplete: no config.json"
    code, out, _ = cli(capsys, "ls", "--format", "{{.Name}}\\t{{.State}} {{json .Active}} {{ .Driver }}")
    assert code == 0
    assert out.splitlines()[0] == "dev\tStopped false qemu"
    assert out.splitlines()[2] == "half\tError false "


def test_ls_active_follows_docker_host(three_machines: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:42376")
    code, out, _ = cli(capsys, "ls", "--format", "{{.Name}} {{.Active}}")
    assert out.splitlines()[0] == "dev true"
    assert cli(capsys, "active") == (0, "dev\n", "")


@pytest.mark.parametrize(
    "filters, names",
    [
        (["state=stopped"], ["dev"]),
        (["state=Error"], ["future", "half"]),
        (["name=d*"], ["dev"]),
        (["name=*f*"], ["future", "half"]),
        (["driver=qemu"], ["dev"]),
        (["driver=QEMU", "state=running"], []),
        (["name=dev", "state=stopped"], ["dev"]),
    ],
)
def test_ls_filter(filters: list[str], names: list[str], three_machines: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["ls", "-q"]
    for item in filters:
        args += ["--filter", item]
    assert cli(capsys, *args) == (0, "".join(f"{n}\n" for n in names), "")


def test_ls_does_not_wait_past_its_timeout_for_a_hung_hypervisor(three_machines: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from pymachine.machine import Machine

    answer = Machine.status

    def hangs_for_dev(self) -> str:
        if self.name == "dev":
            time.sleep(3)  # VBoxManage stuck on a locked VM, say
        return answer(self)

    monkeypatch.setattr(Machine, "status", hangs_for_dev)
    started = time.monotonic()
    code, out, _ = cli(capsys, "ls", "--timeout", "0.3", "--format", "{{.Name}} {{.State}} {{.Error}}")
    assert time.monotonic() - started < 1.5
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "dev Timeout no answer within 0.3s"
    assert lines[1].startswith("future Error Machine 'future' was saved by a newer pymachine")
    assert lines[2] == "half Error incomplete: no config.json"


def test_ls_bad_filter_and_bad_template_field(three_machines: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = assert_one_line_error(*cli(capsys, "ls", "--filter", "colour=red"))
    assert line == "Error: Unknown filter 'colour=red' (use name=, driver= or state=, such as state=Running). Run `pymachine ls --help`"
    line = assert_one_line_error(*cli(capsys, "ls", "--format", "{{.Colour}}"))
    assert line == "Error: Unknown field 'Colour' in --format (fields: Active, Arch, Docker, Driver, Error, HostMemoryMB, Name, State, URL). Run `pymachine ls --help`"


def test_queries_of_a_stopped_machine(three_machines: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(capsys, "ip", "dev") == (0, "127.0.0.1\n", "")
    assert cli(capsys, "url", "dev") == (0, "tcp://127.0.0.1:42376\n", "")
    assert cli(capsys, "status", "dev") == (0, "Stopped\n", "")
    assert cli(capsys, "status", "half") == (0, "Error\n", "")
    code, out, _ = cli(capsys, "inspect", "dev")
    data = json.loads(out)
    assert (code, data["name"], data["state"], data["docker_context"], data["forwards"]) == (0, "dev", "Stopped", "pymachine-dev", [])
    assert cli(capsys, "inspect", "dev", "--format", "{{.driver}}:{{.docker_port}}") == (0, "qemu:42376\n", "")
    code, out, _ = cli(capsys, "config", "dev")
    assert out.splitlines()[0] == "--tlsverify" and out.splitlines()[-1] == "-H=tcp://127.0.0.1:42376"


def test_version(storage: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(capsys, "--version") == (0, f"pymachine {__version__}\n", "")
    assert cli(capsys, "version") == (0, f"pymachine {__version__}\n", "")


# -- the installed entry point, as users run it ---------------------------------------


def run(storage: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYMACHINE_STORAGE_PATH": str(storage)}
    env.pop("DOCKER_HOST", None)
    return subprocess.run([str(PYMACHINE), *args], capture_output=True, text=True, env=env, timeout=30)


@pytest.mark.parametrize(
    "args, line",
    [
        (["start", "ghost"], NOT_FOUND),
        (["env", "ghost"], NOT_FOUND),  # answered by the fast path, without typer
        (["--bogus"], "Error: No such option '--bogus'. Run `pymachine --help`."),
        (["create", "bad/name"], "Error: Invalid machine name 'bad/name'"),
    ],
)
def test_entry_point_errors_and_exit_status(args: list[str], line: str, tmp_path: Path) -> None:
    done = run(tmp_path, *args)
    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith(line), done.stderr


def test_entry_point_version(tmp_path: Path) -> None:
    done = run(tmp_path, "--version")
    assert (done.returncode, done.stdout, done.stderr) == (0, f"pymachine {__version__}\n", "")


def test_entry_point_ls_json_on_an_empty_store(tmp_path: Path) -> None:
    done = run(tmp_path, "ls", "--format", "json")
    assert (done.returncode, done.stdout, done.stderr) == (0, "[]\n", "")


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_an_interrupted_command_says_so(storage: Path, sig: str) -> None:
    """Ctrl-C or `kill` of `logs -f`: exit status 130 and "Error: Interrupted." (typer
    alone would exit 130 in silence)."""
    import signal
    import time

    directory = add_machine(storage, "dev", status=STATUS_READY)
    (directory / "serial.log").write_text("booting\n")
    proc = subprocess.Popen([str(PYMACHINE), "logs", "-f", "dev"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "booting\n"
        time.sleep(0.3)
        proc.send_signal(getattr(signal, sig))
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert err == "Error: Interrupted.\n"


def test_doctor_tells_this_stores_machines_from_other_vms(storage: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A running VM of one of our machines is not "another VM"; a pymachine-named VM
    that is not in this store (another store's) still is."""
    import sys

    add_machine(storage, "dev", status=STATUS_READY)
    sleeper = 'import time; time.sleep(60)'
    procs = [
        subprocess.Popen(["bash", "-c", f'exec -a qemu-system-x86_64 {sys.executable} -c "{sleeper}" -name pymachine-{vm},debug-threads=on'])
        for vm in ("dev", "elsewhere")
    ]
    try:
        time.sleep(0.5)
        code, out, err = cli(capsys, "doctor", "--format", "json")
        assert code == 0, err
        report = json.loads(out)
        assert f"dev (QEMU, pid {procs[0].pid})" in report["own_vms"]
        assert not any("pymachine-dev'" in vm for vm in report["running_vms"])
        assert any(f"'pymachine-elsewhere' (pid {procs[1].pid};" in vm for vm in report["running_vms"])
        code, out, err = cli(capsys, "doctor")
        assert f"machines:   dev (QEMU, pid {procs[0].pid})" in out
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def test_create_of_an_existing_running_machine_names_env_not_start(storage: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from pymachine.driver import State
    from pymachine.machine import Machine

    add_machine(storage, "dev", status=STATUS_READY)
    monkeypatch.setattr(Machine, "state", lambda self: State.RUNNING)
    line = assert_one_line_error(*cli(capsys, "create", "dev"))
    assert line == "Error: Machine 'dev' already exists and is running. Run `eval $(pymachine env dev)` to use it, or `pymachine rm dev` first to make it anew"
