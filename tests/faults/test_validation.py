"""Fault suite: bad input is refused before anything is made.

Each case runs the real CLI entry (`run_cli`) on a fresh store, with a QEMU that must
never run on the path and a boot image cache as `image build` leaves it. Each checks:
exit 1, exactly one `Error:` line, which is the last line and names the next command,
no traceback, the store unchanged (hashed before and after), no machine folder, no
certificate authority made, and no process left that mentions the test's folder.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from pymachine.cli.main import run_cli
from pymachine.hostlimits import host_cpus, host_memory_mb
from pymachine.image import manifest_name
from pymachine.machine import Machine
from pymachine.store import STATUS_READY, MachineConfig, Store

from ..fakes.isos import write_boot_iso
from ..test_fake_end_to_end import image_cache


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restored_logging) -> Path:
    """A store holding one stopped machine, an image cache, and a QEMU that must not run."""
    root = tmp_path / "store"
    monkeypatch.setenv("PYMACHINE_STORAGE_PATH", str(root))
    monkeypatch.setenv("PYMACHINE_CACHE_PATH", str(image_cache(tmp_path / "cache")))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))
    for key in ("DOCKER_HOST", "DOCKER_CONTEXT", "SHELL"):
        monkeypatch.delenv(key, raising=False)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for program in ("qemu-system-x86_64", "qemu-system-aarch64", "qemu-img"):
        script = bin_dir / program
        script.write_text(f"#!/bin/sh\ntouch '{tmp_path}/ran-{program}'\nexit 99\n")
        script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    store = Store(root)
    with store.reserve(MachineConfig(name="dev", driver="qemu", status=STATUS_READY, docker_port=42376, ssh_port=42022)):
        pass
    (store.machine_dir("dev") / "data.qcow2").write_bytes(b"")  # QEMU's "disk, no process": Stopped
    (store.machine_dir("dev") / "serial.log").write_bytes(b"booted\n")
    return root


def snapshot(root: Path) -> dict[str, str]:
    """Every file of the store and its sha256 (the debug log aside: it is a log; and the
    machine lock's label, which names whichever command held it last)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file() and p.name not in ("debug.log", ".lock")}


def processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{entry.name}: {cmdline}")
    return found


def refused(store: Path, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """Run the CLI; assert the refusal leaves everything as it was; return the error line."""
    before = snapshot(store)
    code = run_cli(list(args))
    out = capsys.readouterr()
    assert code == 1, (out.out, out.err)
    assert out.out == ""
    assert "Traceback" not in out.err
    lines = out.err.splitlines()
    errors = [line for line in lines if line.startswith("Error: ")]
    assert errors == [lines[-1]], out.err
    line = lines[-1]
    assert "`pymachine " in line, line
    assert "\n" not in line
    assert snapshot(store) == before, "the store changed"
    assert Store(store).names() == ["dev"]
    assert not (store / "certs").exists(), "a certificate authority was made"
    tmp = store.parent
    assert not list(tmp.glob("ran-*")), "QEMU was run"
    assert processes_mentioning(str(tmp)) == []
    return line


# -- create: engine options (defect 7) ----------------------------------------------


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--engine-label", "noequals"], "Error: --engine-label 'noequals' is not KEY=VALUE. Run `pymachine create` with --engine-label KEY=VALUE"),
        (["--engine-label", "=value"], "is not KEY=VALUE"),
        (["--engine-label", "provider=mine"], "pymachine sets the label 'provider' itself"),
        (["--engine-label", "a=1", "--engine-label", "a=2"], "gives 'a' two values"),
        (["--engine-registry-mirror", "not-a-url"], "Error: --engine-registry-mirror 'not-a-url' is not an http:// or https:// URL. Run `pymachine create` with a mirror URL"),
        (["--engine-registry-mirror", "ftp://mirror.example"], "is not an http:// or https:// URL"),
        (["--engine-registry-mirror", "https://mirror.example/v2/"], "has a path, query or fragment"),
        (["--engine-registry-mirror", "https://user:pw@mirror.example"], "carries a user name or password"),
        (["--engine-registry-mirror", "https://mirror.example:port"], "is not a URL"),
        (["--engine-insecure-registry", "http://registry.local:5000"], "is not a registry host[:port] or a CIDR"),
        (["--engine-opt", "no-such-flag"], "Error: --engine-opt 'no-such-flag': Docker 26.1's dockerd has no flag --no-such-flag. Run `pymachine create` with a flag from `dockerd --help`"),
        (["--engine-opt", "debugg"], "(did you mean debug?)"),
        (["--engine-opt", "dns"], "Error: --engine-opt 'dns': dockerd's --dns needs a value (ipSlice). Run `pymachine create` with --engine-opt dns=VALUE"),
        (["--engine-opt", "=1"], "names no dockerd flag"),
        (["--engine-opt", "D"], "uses dockerd's short flag -D. Run `pymachine create` with its long name, --engine-opt debug"),
        (["--engine-opt", "host=tcp://0.0.0.0:2375"], "pymachine sets dockerd's --host itself"),
        (["--engine-opt", "H=tcp://0.0.0.0:2375"], "pymachine sets dockerd's --host itself"),
        (["--engine-opt", "tlsverify=false"], "pymachine sets dockerd's --tlsverify itself"),
        (["--engine-opt", "label=a=b"], "Run `pymachine create` with --engine-label KEY=VALUE instead"),
        (["--engine-opt", "--registry-mirror=https://m.example"], "Run `pymachine create` with --engine-registry-mirror instead"),
        (["--engine-opt", "insecure-registry=r:5000"], "Run `pymachine create` with --engine-insecure-registry instead"),
        (["--engine-opt", "storage-driver=vfs"], "pymachine sets dockerd's --storage-driver itself"),
        (["--engine-opt", "log-opt=max-size=1m"], "pymachine sets dockerd's --log-opt itself"),
        (["--engine-opt", "config-file=/x"], "pymachine sets dockerd's --config-file itself"),
        (["--engine-opt", "version"], "dockerd would print its version and exit"),
    ],
)
def test_engine_options_dockerd_would_refuse_are_refused_up_front(args: list[str], expected: str, store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = refused(store, capsys, "create", "x", *args)
    assert line.startswith(expected) if expected.startswith("Error: ") else expected in line


def test_engine_opt_is_checked_against_the_images_own_dockerd(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A manifest that records its dockerd's flags is what --engine-opt is checked against."""
    cache = Path(os.environ["PYMACHINE_CACHE_PATH"])
    manifest_path = cache / manifest_name("amd64")
    manifest = json.loads(manifest_path.read_text())
    manifest["artifacts"]["engine"]["version"] = "99.0"
    manifest["artifacts"]["engine"]["dockerd"] = {"flags": {"debug": "", "mtu": "int", "host": "list"}, "shorthands": {"D": "debug"}}
    manifest_path.write_text(json.dumps(manifest))
    line = refused(store, capsys, "create", "x", "--engine-opt", "dns=1.1.1.1")
    assert line.startswith("Error: --engine-opt 'dns=1.1.1.1': the image's dockerd 99.0 has no flag --dns")


# -- create: sizes, accelerator, ISO ------------------------------------------------


def test_memory_above_the_hosts_is_refused(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    total = host_memory_mb()
    assert total
    line = refused(store, capsys, "create", "x", "--memory", str(total + 1024))
    assert line.startswith(f"Error: --memory {total + 1024} MB is more than this host's {total} MB. Run `pymachine create` with --memory")


def test_cpus_above_the_hosts_are_refused(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cpus = host_cpus()
    assert cpus
    line = refused(store, capsys, "create", "x", "--cpus", str(cpus + 1))
    assert line == f"Error: --cpus {cpus + 1} is more than this host's {cpus} CPUs. Run `pymachine create` with --cpus {cpus} or fewer"


@pytest.mark.parametrize(
    "size, expected",
    [
        ("65T", "is more than the 64 TiB a data disk can be"),
        ("99999999999999999999999T", "is more than the 64 TiB a data disk can be"),
        ("1.5G", "is not a size like 2048, 2048M or 2G"),
        ("twenty", "is not a size like 2048, 2048M or 2G"),
        ("-5G", "is not a size like 2048, 2048M or 2G"),
        ("512", "A machine needs at least 1 CPU, 256 MB of memory and a 1024 MB disk"),
    ],
)
def test_absurd_disk_sizes_are_refused(size: str, expected: str, store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert expected in refused(store, capsys, "create", "x", "--disk-size", size)


@pytest.mark.skipif(os.uname().sysname != "Linux", reason="HVF is refused on Linux hosts")
def test_hvf_on_linux_is_refused(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = refused(store, capsys, "create", "x", "-o", "accel=hvf")
    assert line == "Error: -o accel=hvf is macOS's hypervisor, and this host runs Linux. Run `pymachine create` with -o accel=auto (it picks the fastest this host has) or -o accel=tcg"


def test_kvm_on_a_mac_is_refused(store: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from pymachine.drivers import qemu

    monkeypatch.setattr(qemu.platform, "system", lambda: "Darwin")
    line = refused(store, capsys, "create", "x", "-o", "accel=kvm")
    assert line == "Error: -o accel=kvm is Linux's hypervisor, and this host runs macOS. Run `pymachine create` with -o accel=auto (it picks the fastest this host has) or -o accel=tcg"


def test_kvm_without_dev_kvm_is_refused(store: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from pymachine.drivers import qemu

    real_exists = os.path.exists
    monkeypatch.setattr(qemu.os.path, "exists", lambda path: False if path == "/dev/kvm" else real_exists(path))
    line = refused(store, capsys, "create", "x", "-o", "accel=kvm")
    assert line.startswith("Error: -o accel=kvm cannot work here: /dev/kvm does not exist")


def test_a_truncated_iso_is_refused(store: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    iso = tmp_path / "boot.iso"
    write_boot_iso(iso, "bios")
    data = iso.read_bytes()
    iso.write_bytes(data[: len(data) - 4096])
    line = refused(store, capsys, "create", "x", "--iso", str(iso))
    assert f"{iso} is cut short" in line and "Download or copy the ISO again" in line


# -- other commands ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, expected",
    [
        (["ls", "--format", "bogus"], "Error: Unknown --format 'bogus' (use table or json, or a template like '{{.Name}}'). Run `pymachine ls --help`"),
        (["ls", "--format", "{{.Nope}}"], "Error: Unknown field 'Nope' in --format"),
        (["inspect", "dev", "--format", "yaml"], "Error: Unknown --format 'yaml' (use json, or a template like '{{.Name}}'). Run `pymachine inspect --help`"),
        (["inspect", "ghost", "--format", "yaml"], "Error: Unknown --format 'yaml'"),
        (["ports", "dev", "--format", "yaml"], "Error: Unknown --format 'yaml' (use table or json). Run `pymachine ports --help`"),
        (["doctor", "--format", "yaml"], "Error: Unknown --format 'yaml' (use text or json). Run `pymachine doctor --help`"),
        (["image", "ls", "--format", "yaml"], "Error: Unknown --format 'yaml' (use table or json). Run `pymachine image ls --help`"),
        (["ls", "--timeout", "-1"], "Error: --timeout must be more than 0 seconds, not -1. Run `pymachine ls --help`"),
        (["ls", "--timeout", "0"], "Error: --timeout must be more than 0 seconds, not 0"),
        (["ls", "--filter", "name"], "Error: Unknown filter 'name' (use name=, driver= or state=, such as state=Running). Run `pymachine ls --help`"),
        (["ls", "--filter", "colour=red"], "Error: Unknown filter 'colour=red'"),
        (["logs", "dev", "-n", "-5"], "Error: --lines cannot be negative (-5). Run `pymachine logs --help`"),
        (["stop", "dev", "--timeout", "-1"], "Error: --timeout cannot be negative (-1). Run `pymachine stop --help`"),
        (["env", "--shell", "", "dev"], "Error: Unknown shell '' (known: bash, zsh, sh, fish, powershell, cmd, tcsh, emacs). Run `pymachine env --help`"),
        (["env", "--shell=", "dev"], "Error: Unknown shell ''"),
        (["env", "--unset", "--shell", ""], "Error: Unknown shell ''"),
        (["--debug", "env", "--shell", "", "dev"], "Error: Unknown shell ''"),  # through typer, not the fast path
        (["use", "dev"], "Error: Machine 'dev' is not running (Stopped). Run `pymachine start dev` first"),
        (["lgos", "dev"], "Error: No such command 'lgos'. Did you mean"),
        (["loggs"], "Error: No such command 'loggs'. Did you mean 'logs'? Run `pymachine --help`."),
    ],
)
def test_bad_arguments_of_other_commands(args: list[str], expected: str, store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pymachine.cli.fastpath import try_fast_env

    if args[0] == "env":
        # `env` is answered before typer: the fast path must refuse it the same way.
        before = snapshot(store)
        assert try_fast_env(args) == 1
        fast = capsys.readouterr()
        assert (fast.out, fast.err.splitlines()[0]) == ("", fast.err.strip()) and fast.err.startswith(expected)
        assert snapshot(store) == before
    line = refused(store, capsys, *args)
    assert line.startswith(expected), line
    assert line.count("Did you mean") <= 1


def test_use_of_a_running_machine_that_is_not_ready(store: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A VM that runs but never finished provisioning: docker cannot reach it either."""
    from pymachine.driver import State
    from pymachine.machine import Machine

    config_path = store / "machines" / "dev" / "config.json"
    data = json.loads(config_path.read_text())
    data.update(status="error", error="provisioning failed: dockerd did not start")
    config_path.write_text(json.dumps(data))
    monkeypatch.setattr(Machine, "state", lambda self: State.RUNNING)
    line = refused(store, capsys, "use", "dev")
    assert line == "Error: Machine 'dev' is not ready (provisioning failed: dockerd did not start). Run `pymachine provision dev`, or `pymachine rm dev` and create it again"


# -- provisioning: dockerd's own check before a config replaces the one in use ----------


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from ..test_fake_end_to_end import _world

    yield from _world(tmp_path, monkeypatch, "amd64")


def test_a_config_dockerd_refuses_never_replaces_the_one_in_use(world, tmp_path: Path) -> None:
    """Settings that pass the host's checks but not dockerd's (a number that is not one)
    are refused in the guest by `dockerd --validate`; the running config stays."""
    from pymachine.errors import ProvisionError
    from pymachine.guest.provision import DAEMON_FILES, ENGINE
    from pymachine.machines import CreateOptions

    machines, _fake, farm = world
    options = CreateOptions(driver="virtualbox", cpus=1, memory_mb=512, disk_mb=2048, driver_options={"backend": "vboxmanage"}, force=True, engine_options=["dns=1.1.1.1"])
    machine = machines.create("dev", options)
    guest = farm.guests["dev"]
    good = {path: guest.files[path] for path in DAEMON_FILES}
    assert good[DAEMON_FILES[1]] == b"--dns=1.1.1.1\n"
    # The guest checked the staged files before they replaced the real ones.
    validate = f"{ENGINE} validate {DAEMON_FILES[0]}.new {DAEMON_FILES[1]}.new"
    assert validate in guest.commands
    assert guest.commands.index(validate) < next(i for i, c in enumerate(guest.commands) if c.startswith("mv -f "))

    # An older pymachine, or a hand edit, left settings dockerd cannot take.
    config_path = machine.directory / "config.json"
    data = json.loads(config_path.read_text())
    data["engine_options"] = ["mtu=abc"]
    config_path.write_text(json.dumps(data))
    before = snapshot(machine.directory)
    with pytest.raises(ProvisionError) as caught:
        machine.provision()
    message = str(caught.value)
    assert message == (
        'dockerd refuses the engine settings of machine \'dev\' (invalid argument "abc" for "--mtu" flag: strconv.ParseInt: parsing "abc": invalid syntax); '
        "the daemon config in use was left as it was. Run `pymachine rm dev` and create it again with other --engine-opt, --engine-label or --engine-registry-mirror values"
    )
    assert "\n" not in message
    assert {path: guest.files[path] for path in DAEMON_FILES} == good, "the good config was replaced"
    assert not [p for p in guest.files if p.endswith(".new")], "staged files were left in the guest"
    assert guest.engine_running, "dockerd was stopped for a config it would refuse"
    # nothing changed, so the machine is as ready as before: env and docker still work
    assert Machine(machine.home, "dev").config.status == STATUS_READY
    assert f"{ENGINE} restart" not in guest.commands[guest.commands.index(validate) + 1 :]
    # The host side too: keys, certificates, disks (the watcher's own files aside).
    after = snapshot(machine.directory)

    def lasting(files: dict[str, str]) -> dict[str, str]:
        return {k: v for k, v in files.items() if k != "config.json" and not k.startswith(("watcher.", "watcher-keeper.")) and not k.endswith(".log")}

    assert lasting(after) == lasting(before)


def test_an_engine_script_without_validate_still_provisions(world) -> None:
    """Machines on an image from before `engine validate` provision as they did."""
    from pymachine.guest.provision import DAEMON_FILES, ENGINE
    from pymachine.machines import CreateOptions

    from ..fakes import guest as fake_guest

    machines, _fake, farm = world
    original = fake_guest.ScriptedGuest._answer

    def old_engine(self, command: str):
        if command.startswith(f"{ENGINE} validate "):
            return 1, "", "engine: usage: engine install BUNDLE SHA256 | version | start | stop | restart | status | boot\n"
        return original(self, command)

    fake_guest.ScriptedGuest._answer = old_engine
    try:
        machines.create("dev", CreateOptions(driver="virtualbox", cpus=1, memory_mb=512, disk_mb=2048, driver_options={"backend": "vboxmanage"}, force=True))
    finally:
        fake_guest.ScriptedGuest._answer = original
    guest = farm.guests["dev"]
    assert all(path in guest.files for path in DAEMON_FILES)
    assert guest.engine_running
