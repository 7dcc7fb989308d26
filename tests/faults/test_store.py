"""Fault tests for the store and a machine's identity (issue 11: defects 1, 2, 4, 8, the
kill -9 of create, and the small fixes of the store).

Each injects its fault for real: folders copied with `cp -a`, config.json files broken
on disk, `create` killed -9 in its own process, a full tmpfs and a read-only bind mount
in a mount namespace of their own. Each checks that nothing that must stay is lost (the
store hashed before and after), that no traceback is printed, that no process is left,
and that the one-line message names the next command.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from pymachine.driver import BootMedia
from pymachine.drivers.parallels import ParallelsDriver, ParallelsOptions
from pymachine.home import Home
from pymachine.machine import Machine
from pymachine.machines import Machines
from pymachine.procs import alive, read_pidfile
from pymachine.progress import RecordingProgress

from ..contract import make_spec, wait_for
from ..fake_harnesses import parallels_driver
from ..fakes import vbox_model
from ..fakes.parallels_model import FakeParallels
from ..fakes.tools import install
from ..fakes.vbox_model import FakeVirtualBox
from ..live import program
from ..test_fake_end_to_end import image_cache, world  # noqa: F401 - the fake VirtualBox world fixture
from .store_tool import VOLATILE, seed, store_digest

ROOT = Path(__file__).resolve().parents[2]
PYMACHINE = program("pymachine")


# -- helpers ---------------------------------------------------------------------------


def pm(storage: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """`pymachine -s STORAGE ARGS` as a user runs it, stdin not a terminal."""
    return subprocess.run([PYMACHINE, "-s", str(storage), *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL, check=False)


def clean(result: subprocess.CompletedProcess) -> None:
    """No traceback and no logging error, whatever the command said."""
    text = result.stdout + result.stderr
    assert "Traceback" not in text and "Logging error" not in text, text


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    """No traceback, and exit status 0."""
    clean(result)
    assert result.returncode == 0, result.stderr
    return result


#: How `create` shows its steps on a stderr that is no terminal: progress, not errors.
PROGRESS_MARKS = ("  ", "✔ ", "✘ ", "! ")


def one_error(result: subprocess.CompletedProcess, next_command: str) -> str:
    """Exit status 1 and one `Error:` line on stderr, last, naming `next_command`; before
    it at most the step lines of a command that shows progress."""
    clean(result)
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.rstrip().splitlines()
    assert lines and lines[-1].startswith("Error: "), result.stderr
    assert all(line.startswith(PROGRESS_MARKS) for line in lines[:-1]), result.stderr
    assert f"`{next_command}" in lines[-1], lines[-1]
    return lines[-1]


def rows(storage: Path, env: dict[str, str] | None = None) -> dict[str, dict]:
    result = ok(pm(storage, "ls", "--format", "json", env=env))
    return {row["Name"]: row for row in json.loads(result.stdout)}


def processes_mentioning(text: str) -> list[int]:
    """PIDs (other than ours) whose command line contains `text`: what a test left running."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            if text.encode() in Path(f"/proc/{entry}/cmdline").read_bytes() and alive(int(entry)):
                found.append(int(entry))
        except OSError:
            continue
    return found


class StandIns:
    """Processes that look to pymachine like a machine's QEMU: the argv QemuDriver gives
    (-name pymachine-NAME ... -pidfile FOLDER/qemu.pid), optionally listening on the
    folder's QMP socket. Each is stopped by its PID at the end."""

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen] = []

    def start(self, folder: Path, name: str, pidfile: bool = True, listen: str | None = None) -> int:
        code = "import socket, sys, time\nif sys.argv[1]:\n    s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen()\ntime.sleep(300)\n"
        argv = [sys.executable, "-c", code, listen or "", "-name", f"pymachine-{name}", "-pidfile", str(folder / "qemu.pid")]
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.processes.append(process)
        assert wait_for(lambda: str(folder / "qemu.pid").encode() in Path(f"/proc/{process.pid}/cmdline").read_bytes(), timeout=10)
        if listen:
            assert wait_for(lambda: os.path.exists(listen), timeout=10)
        if pidfile:
            (folder / "qemu.pid").write_text(f"{process.pid}\n")
        return process.pid

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)


@pytest.fixture
def stand_ins() -> Iterator[StandIns]:
    made = StandIns()
    yield made
    made.stop_all()


@pytest.fixture
def storage(tmp_path: Path) -> Path:
    return tmp_path / "store"


#: What a running machine changes by itself: the watcher's files, the VM's console and logs.
RUNNING_FILES = (*VOLATILE, "watcher.log", "watcher.lock", "watcher.pid", "watcher-keeper.lock", "watcher-keeper.pid", "forwards.json", "serial.log", "Logs")


def machine_digest(folder: Path) -> dict[str, str]:
    """Each file's digest (so that a failure names what changed), minus RUNNING_FILES."""
    found = {}
    for path in sorted(folder.rglob("*")):
        if any(part in RUNNING_FILES for part in path.relative_to(folder).parts):
            continue
        found[str(path.relative_to(folder))] = _file_digest(path)
    return found


def _file_digest(path: Path) -> str:
    import hashlib

    info = path.lstat()
    data = path.read_bytes() if stat.S_ISREG(info.st_mode) else b""
    return f"{stat.filemode(info.st_mode)} {hashlib.sha256(data).hexdigest()}"


# -- defect 1: the folder is the machine's identity -------------------------------------


def test_rm_of_a_copied_qemu_folder_leaves_the_original_running(storage: Path, stand_ins: StandIns) -> None:
    dev = seed(storage, "dev")
    qemu = stand_ins.start(dev, "dev")
    subprocess.run(["cp", "-a", str(dev), str(dev.parent / "devcopy")], check=True)
    before = machine_digest(dev)

    refused = pm(storage, "rm", "-y", "devcopy")
    line = one_error(refused, "pymachine rm -f devcopy")
    assert "the config.json of machine 'dev'" in line
    assert alive(qemu) and machine_digest(dev) == before

    ok(pm(storage, "rm", "-f", "-y", "devcopy"))
    assert not (dev.parent / "devcopy").exists()
    assert alive(qemu), "rm -f of the copy stopped the original's QEMU"
    assert machine_digest(dev) == before, "rm -f of the copy changed the original's folder"


def test_a_copied_folder_is_an_error_row_and_the_original_is_untouched(storage: Path) -> None:
    dev = seed(storage, "dev")
    shutil.copytree(dev, dev.parent / "devcopy", symlinks=True)
    before = store_digest(storage)
    found = rows(storage)
    assert found["dev"]["State"] == "Stopped"
    assert found["devcopy"]["State"] == "Error"
    assert "has the config.json of machine 'dev'" in found["devcopy"]["Error"] and "pymachine rm -f devcopy" in found["devcopy"]["Error"]
    for command in (["start", "devcopy"], ["stop", "devcopy"], ["env", "devcopy"], ["inspect", "devcopy"]):
        one_error(pm(storage, *command), "pymachine rm -f devcopy")
    assert store_digest(storage) == before


@pytest.fixture
def vbox_dev(world) -> tuple[Machines, FakeVirtualBox, Path, int]:  # noqa: F811
    """Machine 'dev' made on the fake VirtualBox and running, with its watcher:
    (machines, the fake, its folder, the watcher's PID)."""
    machines, fake, _ = world
    from pymachine.machines import CreateOptions

    machines.create("dev", CreateOptions(driver="virtualbox", cpus=1, memory_mb=512, disk_mb=2048, driver_options={"backend": "vboxmanage"}, force=True))
    watcher = machines.get("dev").watcher
    assert wait_for(lambda: watcher.pid() is not None, timeout=10)
    watcher_pid = watcher.pid()
    assert watcher_pid is not None
    return machines, fake, machines.store.machine_dir("dev"), watcher_pid


def test_rm_of_a_copied_virtualbox_folder_leaves_the_original_vm_and_disk(vbox_dev: tuple[Machines, FakeVirtualBox, Path, int]) -> None:
    machines, fake, dev, watcher_pid = vbox_dev
    subprocess.run(["cp", "-a", str(dev), str(dev.parent / "devcopy")], check=True)
    before = machine_digest(dev)

    one_error(pm(machines.home.root, "rm", "-y", "devcopy"), "pymachine rm -f devcopy")
    ok(pm(machines.home.root, "rm", "-f", "-y", "devcopy"))

    vm = fake.machine("dev")
    assert vm is not None and vm["state"] == "running", "rm -f of the copy touched the original's VM"
    assert not any(call[1] in ("unregistervm", "controlvm") for call in fake.calls() if "dev" in call), fake.calls()
    assert (dev / "data.vdi").exists() and machine_digest(dev) == before
    assert watcher_pid is not None and alive(watcher_pid), "rm -f of the copy stopped the original's watcher"


# -- defect 4: one malformed config.json is contained to its own row --------------------


def _config(name: str, **changes: object) -> dict:
    data = {"version": 2, "name": name, "driver": "qemu", "driver_options": {}, "status": "ready", "ssh_port": 40122, "docker_port": 40476}
    data.update(changes)
    return data


DAMAGES = {
    "wrong type": lambda path: path.write_text(json.dumps(_config("bad", cpus="two"))),
    "wrong type in a list": lambda path: path.write_text(json.dumps(_config("bad", engine_labels=[1, 2]))),
    "wrong driver option type": lambda path: path.write_text(json.dumps(_config("bad", driver_options={"accel": 5}))),
    "missing key": lambda path: path.write_text(json.dumps({k: v for k, v in _config("bad").items() if k != "driver"})),
    "not utf-8": lambda path: path.write_bytes(json.dumps(_config("bad")).encode().replace(b'"ready"', b'"re\xffdy"')),
    "folder in its place": lambda path: path.mkdir(),
    "fifo in its place": lambda path: os.mkfifo(path),
    "symlink loop": lambda path: path.symlink_to(path.name),
    "not an object": lambda path: path.write_text("[1, 2]"),
    "truncated": lambda path: path.write_text(json.dumps(_config("bad"))[:40]),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_malformed_config_is_an_error_row_and_rm_f_removes_it(damage: str, storage: Path) -> None:
    seed(storage, "good")
    bad = storage / "machines" / "bad"
    bad.mkdir()
    DAMAGES[damage](bad / "config.json")
    good_before = store_digest(storage / "machines" / "good")

    found = rows(storage)
    assert found["good"]["State"] == "Stopped", found
    assert found["bad"]["State"] == "Error" and "pymachine rm -f bad" in found["bad"]["Error"], found["bad"]
    commands = [["inspect", "bad"], ["start", "bad"], ["status", "bad"], ["stop", "bad"], ["rm", "-y", "bad"]]
    if damage != "wrong driver option type":
        # env reads only the config's port (its fast path builds no driver): a driver
        # option it never uses does not stop it.
        commands.append(["env", "bad"])
    for command in commands:
        one_error(pm(storage, *command, timeout=30), "pymachine rm -f bad")

    removed = ok(pm(storage, "rm", "-f", "-y", "bad"))
    assert not bad.exists() and not bad.is_symlink(), removed.stderr
    assert store_digest(storage / "machines" / "good") == good_before
    assert list(rows(storage)) == ["good"]


# -- defect 2: rm -f of a running machine whose config is damaged -------------------------


@pytest.mark.parametrize("found_by", ["pidfile", "qmp socket"])
def test_rm_f_stops_the_qemu_of_a_machine_whose_config_is_damaged(found_by: str, storage: Path, stand_ins: StandIns) -> None:
    dev = seed(storage, "dev")
    other = seed(storage, "other")
    other_qemu = stand_ins.start(other, "other")
    qemu = stand_ins.start(dev, "dev", pidfile=found_by == "pidfile", listen=str(dev / "control.qmp") if found_by == "qmp socket" else None)
    (dev / "config.json").write_text('{"name": "dev", "driver": ')
    other_before = machine_digest(other)

    ok(pm(storage, "rm", "-f", "-y", "dev"))
    assert wait_for(lambda: not alive(qemu), timeout=10), f"rm -f left the QEMU of a machine with a damaged config running ({found_by})"
    assert not dev.exists()
    assert alive(other_qemu) and machine_digest(other) == other_before


def test_rm_f_removes_the_virtualbox_vm_of_a_machine_whose_config_is_damaged(vbox_dev: tuple[Machines, FakeVirtualBox, Path, int]) -> None:
    machines, fake, dev, watcher_pid = vbox_dev
    (dev / "config.json").write_bytes(b"\xff\xfe not json")

    ok(pm(machines.home.root, "rm", "-f", "-y", "dev"))
    assert fake.machine("dev") is None, "rm -f left the VM registered"
    assert ["VBoxManage", "list", "vms"] in fake.calls()
    assert not dev.exists()
    assert watcher_pid is not None and wait_for(lambda: not alive(watcher_pid), timeout=10), "rm -f left the watcher running"


def running_parallels(tmp_path: Path) -> tuple[Home, ParallelsDriver, FakeParallels]:
    """Parallels VM 'dev' of the store in tmp_path/store, made and started on the fake
    Parallels host in tmp_path/host: (the store's Home, its driver, the fake)."""
    template, fake = parallels_driver(tmp_path / "host", name="dev")
    home = Home(tmp_path / "store", runner=template.runner, progress=RecordingProgress())
    folder = home.store.machine_dir("dev")
    spec = dataclasses.replace(make_spec(folder, "dev", BootMedia(template.spec.boot.iso)), arch=template.spec.arch)
    driver = ParallelsDriver(spec, ParallelsOptions(), template.runner)
    driver.poll_interval, driver.retry_pause = 0.05, 0.0
    driver.create()
    driver.start()
    return home, driver, fake


def test_rm_f_removes_the_parallels_vm_and_its_nat_rules_when_the_config_is_damaged(tmp_path: Path) -> None:
    home, driver, fake = running_parallels(tmp_path)
    folder = driver.spec.directory
    assert driver._rules(), "the running VM has its ssh and docker rules"
    (folder / "config.json").mkdir()  # a folder in the file's place

    Machine(home, "dev").remove(force=True)
    assert not any(vm["name"] == "dev" for vm in json.loads(fake.path.read_text())["vms"]), "rm -f left the Parallels VM"
    assert not driver._rules(), "rm -f left the VM's NAT rules on the Shared network"
    assert not folder.exists()


def test_reap_never_touches_a_vm_whose_files_lie_outside_the_folder(tmp_path: Path) -> None:
    """The Parallels VM 'dev' of one store; a folder named dev in another store is reaped."""
    _home, driver, _fake = running_parallels(tmp_path)
    folder = driver.spec.directory
    stranger = tmp_path / "other-store" / "machines" / "dev"
    shutil.copytree(folder, stranger, symlinks=True)  # parallels.json and the bundle's name, but not its home
    assert ParallelsDriver.reap(stranger, "dev", driver.runner) == []
    assert driver.state().value == "Running"
    driver.remove()


# -- weakness: kill -9 of create ----------------------------------------------------------


def fake_world(folder: Path) -> tuple[FakeVirtualBox, dict[str, str]]:
    """A fake VirtualBox host and boot image cache in `folder`, for child_create and the CLI."""
    fake = FakeVirtualBox(folder / "vbox.json").initialise()
    bin_dir = install(folder / "bin", "VBoxManage")
    image_cache(folder / "cache")
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", vbox_model.STATE_ENV: str(fake.path), "PYMACHINE_CACHE_PATH": str(folder / "cache")}
    return fake, env


@dataclasses.dataclass
class PausedCreate:
    """A create run by child_create, paused at its step; `out` and `err` once it ended."""

    fake: FakeVirtualBox
    env: dict[str, str]
    child: subprocess.Popen
    out: str = ""
    err: str = ""


@contextmanager
def paused_create(folder: Path, stage: str) -> Iterator[PausedCreate]:
    """`create dev` on a fake VirtualBox world in `folder`, paused at `stage` for the
    block, then let go on to its end, whatever the block did."""
    fake, env = fake_world(folder)
    run = PausedCreate(fake, env, child_create(folder, stage, "pause", env))
    try:
        assert wait_for(lambda: (folder / "paused").exists(), timeout=120), run.child.stderr
        yield run
    finally:
        (folder / "resume").write_text("")
        run.out, run.err = run.child.communicate(timeout=120)


def child_create(folder: Path, stage: str, action: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.faults.child_create", str(folder), stage, action],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize(
    ("stage", "action", "vm_made"),
    [
        ("Preparing keys", "kill", False),  # the folder reserved, nothing made yet
        ("Starting the VM", "kill-after", True),  # the VM runs
        ("Configuring TLS", "kill", True),  # during provisioning
    ],
    ids=["after-reserve", "after-vm-started", "during-provisioning"],
)
def test_kill_9_of_create_leaves_an_error_that_rm_f_cleans(stage: str, action: str, vm_made: bool, tmp_path: Path) -> None:
    fake, env = fake_world(tmp_path)
    child = child_create(tmp_path, stage, action, env)
    out, err = child.communicate(timeout=120)
    assert child.returncode == -signal.SIGKILL, (child.returncode, out, err)
    assert (fake.machine("dev") is not None) == vm_made
    if vm_made:
        assert fake.machine("dev")["state"] == "running"

    storage = tmp_path / "home"
    row = rows(storage, env)["dev"]
    assert row["State"] == "Error", row
    assert "create was interrupted" in row["Error"] and "pymachine rm -f dev" in row["Error"], row
    one_error(pm(storage, "env", "dev", env=env), "pymachine rm -f dev")

    ok(pm(storage, "rm", "-f", "-y", "dev", env=env))
    assert fake.machine("dev") is None, "rm -f left the VM the killed create made"
    assert not (storage / "machines" / "dev").exists()
    assert processes_mentioning(str(tmp_path)) == []


def test_a_live_create_is_starting_not_interrupted(tmp_path: Path) -> None:
    """The creator's record is read as alive while its process runs (the other side of the above)."""
    with paused_create(tmp_path, "Configuring TLS") as run:
        row = rows(tmp_path / "home", run.env)["dev"]
        assert row["State"] == "Starting" and "interrupted" not in row["Error"], row
    assert run.child.returncode == 0
    Machines(Home(tmp_path / "home", cache=tmp_path / "cache", runner=_runner(run.env))).get("dev").remove(force=True)
    assert processes_mentioning(str(tmp_path)) == []


def _runner(env: dict[str, str]):
    from pymachine.runner import Runner

    return Runner(path=env["PATH"].split(os.pathsep)[0], env={vbox_model.STATE_ENV: env[vbox_model.STATE_ENV]})


def test_a_recorded_creator_whose_pid_was_reused_is_gone(storage: Path) -> None:
    seed(storage, "dev")
    folder = storage / "machines" / "dev"
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "status": "creating"}))
    # This test's own PID, alive, but with another start time: a reused PID.
    (folder / "creating.pid").write_text(f"{os.getpid()} 1\n")
    assert rows(storage)["dev"]["State"] == "Error"


@pytest.mark.live
def test_kill_9_of_a_live_qemu_create_after_the_vm_started(tmp_path: Path) -> None:
    """The real QEMU driver: create is killed once its VM runs; ls says Error, rm -f stops QEMU."""
    from ..conftest import image_cache as live_cache

    storage = tmp_path / "store"
    env = {"PYMACHINE_CACHE_PATH": str(live_cache())}
    child = subprocess.Popen(
        [PYMACHINE, "-s", str(storage), "create", "dev", "--cpus", "1", "--memory", "1024", "--disk-size", "2G", "--no-mounts", "-o", "restrict-network=true"],
        env={**os.environ, **env},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    pidfile = storage / "machines" / "dev" / "qemu.pid"
    qemu = None
    try:
        assert child.stderr is not None
        for line in child.stderr:
            if "Starting the VM" in line and "✔" in line:
                break
        else:
            pytest.fail("create ended before its VM started")
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        qemu = read_pidfile(pidfile)
        assert qemu is not None and alive(qemu), "the VM should still run after create was killed"

        row = rows(storage, env)["dev"]
        assert row["State"] == "Error" and "create was interrupted" in row["Error"] and "pymachine rm -f dev" in row["Error"], row
        ok(pm(storage, "rm", "-f", "-y", "dev", env=env))
        assert wait_for(lambda: not alive(qemu), timeout=15), "rm -f left QEMU running"
        assert not (storage / "machines" / "dev").exists()
        assert processes_mentioning(str(storage)) == []
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if qemu is not None and alive(qemu):
            os.kill(qemu, signal.SIGKILL)


# -- small fix: rm -f during create ---------------------------------------------------------


def test_rm_f_during_create_makes_create_say_one_line(tmp_path: Path) -> None:
    with paused_create(tmp_path, "Creating the virtualbox VM") as run:
        removed = ok(pm(tmp_path / "home", "rm", "-f", "-y", "dev", env=run.env))
        assert "busy with another command; removing it anyway" in removed.stderr
    assert run.child.returncode == 1
    assert run.err.strip().splitlines() == ["Error: Machine 'dev' was removed while it was being created. Run `pymachine create dev` to make it again"], run.err
    assert "Traceback" not in run.out + run.err
    assert not (tmp_path / "home" / "machines" / "dev").exists(), "create made the removed folder anew"
    assert run.fake.machine("dev") is None
    assert processes_mentioning(str(tmp_path)) == []


# -- defect 8: a full or read-only store ------------------------------------------------------


def _namespace_ok() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-m", "true"], capture_output=True, check=False).returncode == 0


needs_mounts = pytest.mark.skipif(not _namespace_ok(), reason="needs root and `unshare -m` to mount a tmpfs or a read-only bind mount")

#: Run inside `unshare -m`: make STORE the fault, seed a machine, hash, run the command, ls, hash.
SCRIPT = r"""
set -e
store="$1"; fault="$2"; shift 2
mkdir -p "$store"
if [ "$fault" = full ]; then
    mount -t tmpfs -o size=256k,mode=0700 tmpfs "$store"
    python -m tests.faults.store_tool seed "$store" good
    cat /dev/zero > "$store/fill" 2>/dev/null || true
else
    python -m tests.faults.store_tool seed "$store" good
    mount --bind "$store" "$store"
    mount -o remount,bind,ro "$store"
fi
echo "before $(python -m tests.faults.store_tool hash "$store")"
set +e
"$@" > "$store.create.out" 2> "$store.create.err"; echo "create-status $?"
"$PYMACHINE" -s "$store" ls > "$store.ls.out" 2> "$store.ls.err"; echo "ls-status $?"
echo "after $(python -m tests.faults.store_tool hash "$store")"
"""


def run_in_namespace(tmp_path: Path, fault: str) -> tuple[dict[str, str], Path]:
    fake, env = fake_world(tmp_path / "world")
    store = tmp_path / "store"
    create = [PYMACHINE, "-s", str(store), "create", "dev", "-d", "virtualbox", "-o", "backend=vboxmanage", "--force", "--cpus", "1", "--memory", "512", "--disk-size", "2048"]
    bin_dir = Path(sys.executable).parent
    done = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", SCRIPT, "sh", str(store), fault, *create],
        cwd=ROOT,
        env={**os.environ, **env, "PATH": f"{bin_dir}{os.pathsep}{env['PATH']}", "PYMACHINE": PYMACHINE},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    facts = dict(line.split(" ", 1) for line in done.stdout.splitlines() if " " in line)
    assert fake.calls() and not any(call[1] == "createvm" for call in fake.calls()), "nothing may be made on a store that takes no writes"
    return facts, store


def _outputs(store: Path, command: str, facts: dict[str, str]) -> subprocess.CompletedProcess:
    status = int(facts[f"{command}-status"])
    return subprocess.CompletedProcess([command], status, Path(f"{store}.{command}.out").read_text(), Path(f"{store}.{command}.err").read_text())


def refused_create(tmp_path: Path, fault: str, next_command: str) -> tuple[str, Path]:
    """create on a store with `fault` fails in one line naming `next_command`; ls still
    lists the machine there, quietly; the store is unchanged. (create's line, the store)"""
    facts, store = run_in_namespace(tmp_path, fault)
    assert facts["create-status"] == "1"
    line = one_error(_outputs(store, "create", facts), next_command)
    assert facts["ls-status"] == "0"
    ls = _outputs(store, "ls", facts)
    clean(ls)
    assert "good" in ls.stdout and ls.stderr == ""
    assert facts["before"] == facts["after"], f"a failed create on a {fault} store changed the store"
    return line, store


@needs_mounts
def test_a_full_store_disk_is_one_line_naming_the_store_and_the_fix(tmp_path: Path) -> None:
    line, store = refused_create(tmp_path, "full", "df -h")
    assert line == f"Error: No space left on the disk that holds {store}. Free some space there (`df -h {store}` shows it), then run the command again"


@needs_mounts
def test_a_read_only_store_is_one_line_saying_so(tmp_path: Path) -> None:
    line, store = refused_create(tmp_path, "read-only", "pymachine")
    assert line == f"Error: {store} is on a read-only file system. Remount it read-write, or run `pymachine --storage-path FOLDER ...` with a writable FOLDER"


# -- small fix: modes of the store and the debug log ---------------------------------------------


def test_a_new_store_is_0700_and_its_debug_log_0600(tmp_path: Path) -> None:
    storage = tmp_path / "fresh"
    old = os.umask(0o022)
    try:
        result = pm(storage, "ls")
    finally:
        os.umask(old)
    clean(result)
    assert stat.S_IMODE(storage.stat().st_mode) == 0o700
    assert stat.S_IMODE((storage / "debug.log").stat().st_mode) == 0o600


def test_an_existing_world_readable_debug_log_is_made_0600(tmp_path: Path) -> None:
    storage = tmp_path / "old"
    storage.mkdir(mode=0o700)
    (storage / "debug.log").write_text("older lines\n")
    (storage / "debug.log").chmod(0o644)
    clean(pm(storage, "ls"))
    assert stat.S_IMODE((storage / "debug.log").stat().st_mode) == 0o600
    assert (storage / "debug.log").read_text().startswith("older lines\n")


def test_the_qemu_of_a_folder_is_told_apart_from_a_longer_named_one(tmp_path: Path, stand_ins: StandIns) -> None:
    """machines/dev's QEMU is not machines/devcopy's, although "pymachine-dev" is in "pymachine-devcopy"."""
    from pymachine.drivers.qemu import qemu_of

    store = tmp_path / "s" / "machines"
    dev, devcopy = store / "dev", store / "devcopy"
    dev.mkdir(parents=True)
    devcopy.mkdir()
    pid = stand_ins.start(devcopy, "devcopy", pidfile=False)
    (dev / "qemu.pid").write_text(f"{pid}\n")  # dev's stale pidfile, its PID now devcopy's QEMU
    (devcopy / "qemu.pid").write_text(f"{pid}\n")
    assert qemu_of(dev) is None
    assert qemu_of(devcopy) == pid


def test_a_socket_in_the_folder_answered_by_another_program_is_not_reaped(tmp_path: Path) -> None:
    folder = tmp_path / "machines" / "dev"
    folder.mkdir(parents=True)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(folder / "control.qmp"))  # this test process: not a QEMU of the folder
    listener.listen()
    try:
        from pymachine.drivers.qemu import QemuDriver

        assert QemuDriver.reap(folder, "dev", None) == []  # type: ignore[arg-type]
    finally:
        listener.close()


def test_a_virtualbox_vm_of_the_same_name_made_from_another_folder_is_left_alone(tmp_path: Path) -> None:
    """VirtualBox VM 'dev' was made from store A; a machine folder 'dev' in store B never acts on it."""
    from pymachine.drivers.virtualbox import VirtualBoxDriver, VirtualBoxOptions
    from pymachine.errors import MachineStateError

    from ..fake_harnesses import virtualbox_driver

    owner, fake = virtualbox_driver(tmp_path / "a", "vboxmanage", name="dev")
    owner.create()
    owner.start()
    spec = make_spec(tmp_path / "b" / "machines" / "dev", "dev", owner.spec.boot)
    stranger = VirtualBoxDriver(spec, VirtualBoxOptions(backend="vboxmanage"), owner.runner)
    stranger.retry_pause = 0.0
    with pytest.raises(MachineStateError, match=r"is not machine 'dev''s: its settings are in .*Run `pymachine rm -f dev`"):
        stranger.state()
    with pytest.raises(MachineStateError):
        stranger.remove()
    assert VirtualBoxDriver.reap(spec.directory, "dev", owner.runner) == []
    vm = fake.machine("dev")
    assert vm is not None and vm["state"] == "running"
    assert not any(call[1] in ("controlvm", "unregistervm") for call in fake.calls())
    owner.remove()


def test_a_parallels_vm_of_the_same_name_made_from_another_folder_is_not_deleted(tmp_path: Path) -> None:
    owner, fake = parallels_driver(tmp_path / "a", name="dev")
    owner.create()
    spec = make_spec(tmp_path / "b" / "machines" / "dev", "dev", owner.spec.boot)
    stranger = ParallelsDriver(spec, ParallelsOptions(), owner.runner)
    stranger.retry_pause = 0.0
    from pymachine.errors import MachineStateError

    with pytest.raises(MachineStateError, match=r"is not machine 'dev''s: its bundle is"):
        stranger.remove()
    assert any(vm["name"] == "dev" for vm in json.loads(fake.path.read_text())["vms"])
    owner.remove()
