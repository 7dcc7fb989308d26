"""Fault: a hostile QMP socket folder (issue 11, defect 6).

A machine whose folder is too deep for a unix socket path keeps its QMP sockets in
$TMPDIR/pymachine-UID. Another local user who made that folder first (or a symlink in its
place) could answer pymachine's QMP and steer its `stop`. The folder must be ours, a
real folder, closed to others; otherwise every command that needs it refuses in one line
naming the folder and the fix, and nothing is started or changed.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from pathlib import Path

import pytest

from pymachine.driver import BootMedia, MachineSpec
from pymachine.drivers.qemu import MAX_SOCKET_PATH, QemuDriver, QemuOptions, private_folder
from pymachine.errors import DriverError
from pymachine.procs import read_pidfile
from pymachine.runner import Runner
from pymachine.store import STATUS_READY, MachineConfig, Store

ROOT = Path(__file__).resolve().parents[2]
PYMACHINE = ROOT / ".venv" / "bin" / "pymachine"
NAME = "deep"
#: a uid that is not ours (nobody)
FOREIGN_UID = 65534


def tree_digest(root: Path) -> str:
    """One hash of every path, mode and content under `root` but the debug log (and the
    machine lock's label, which names the command that held it last): equal means
    nothing was changed."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        if path.name in ("debug.log", ".lock"):
            continue
        digest.update(f"{path.relative_to(root)} {stat.S_IMODE(info.st_mode):o} {stat.S_IFMT(info.st_mode)}\n".encode())
        if path.is_file() and not path.is_symlink():
            digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture
def deep_store(tmp_path: Path) -> Path:
    """A store so deep that the machine's sockets must fall back to $TMPDIR, holding one
    stopped qemu machine (its data disk a placeholder: nothing may get as far as QEMU)."""
    root = tmp_path / ("s" * 60) / ("t" * 60)
    store = Store(root)
    with store.reserve(MachineConfig(name=NAME, driver="qemu", status=STATUS_READY, ssh_port=0, docker_port=0)):
        pass
    (store.machine_dir(NAME) / "data.qcow2").write_bytes(b"")
    assert len(str(store.machine_dir(NAME) / "control.qmp")) > MAX_SOCKET_PATH
    return root


def run(storage: Path, tmpdir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYMACHINE_STORAGE_PATH": str(storage), "TMPDIR": str(tmpdir), "PYMACHINE_CACHE_PATH": str(tmpdir / "no-cache")}
    return subprocess.run([str(PYMACHINE), *args], check=False, env=env, capture_output=True, text=True, timeout=120)


def hostile(kind: str, folder: Path, elsewhere: Path) -> None:
    """Put what another local user could have put at `folder`."""
    if kind == "open-mode":
        folder.mkdir()
        folder.chmod(0o777)
    elif kind == "group-readable":
        folder.mkdir(mode=0o750)
        folder.chmod(0o750)
    elif kind == "symlink":
        elsewhere.mkdir(mode=0o700)
        folder.symlink_to(elsewhere)
    elif kind == "file":
        folder.write_text("not a folder\n")
    elif kind == "foreign-owner":
        folder.mkdir(mode=0o700)
        os.chown(folder, FOREIGN_UID, FOREIGN_UID)
    else:
        raise AssertionError(kind)


CASES = {
    "open-mode": ("mode 0777 lets others in", "chmod 700"),
    "group-readable": ("mode 0750 lets others in", "chmod 700"),
    "symlink": ("a symbolic link", "rm "),
    "file": ("not a folder", "rm "),
    "foreign-owner": (f"belongs to uid {FOREIGN_UID}", "sudo rm -r"),
}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_start_refuses_a_hostile_socket_folder(kind: str, deep_store: Path, tmp_path: Path) -> None:
    if kind == "foreign-owner" and os.getuid() != 0:
        pytest.skip("giving a folder to another uid needs root")
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    folder = tmpdir / f"pymachine-{os.getuid()}"
    hostile(kind, folder, tmp_path / "attacker")
    before = tree_digest(deep_store)
    done = run(deep_store, tmpdir, "start", NAME)
    assert done.returncode == 1, done
    assert done.stdout == "" and "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and done.stderr.strip().endswith(lines[0]), done.stderr
    said, fix = CASES[kind]
    assert lines[0].startswith("Error: Refusing the QMP socket folder") and str(folder) in lines[0], lines[0]
    assert said in lines[0] and fix in lines[0], lines[0]
    # Nothing changed: the store, the folder itself, and no QEMU was started.
    assert tree_digest(deep_store) == before
    assert read_pidfile(deep_store / "machines" / NAME / "qemu.pid") is None
    assert not any(p.name.endswith(".qmp") for p in tmp_path.rglob("*"))
    assert run(deep_store, tmpdir, "status", NAME).stdout.strip() == "Stopped"


def test_the_folder_is_made_private_when_missing(tmp_path: Path) -> None:
    folder = private_folder(tmp_path / "pymachine-x")
    info = folder.lstat()
    assert stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and stat.S_IMODE(info.st_mode) == 0o700
    assert private_folder(folder) == folder  # ours and private: taken as it is


def test_the_umask_cannot_open_the_folder(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        folder = private_folder(tmp_path / "pymachine-y")
    finally:
        os.umask(old)
    assert stat.S_IMODE(folder.lstat().st_mode) == 0o700


def test_the_driver_refuses_before_connecting_or_removing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every use of the fallback folder goes through the check: the QMP client, and
    remove (which then leaves the folder's contents alone instead of failing)."""
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(tmpdir))
    folder = tmpdir / f"pymachine-{os.getuid()}"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    planted = folder / "planted.qmp"
    planted.write_text("")
    directory = tmp_path / ("d" * 70) / ("e" * 70)
    directory.mkdir(parents=True)
    spec = MachineSpec(NAME, directory, 1, 512, 2048, BootMedia(tmp_path / "boot.iso"), directory / "config.iso", 1, 2)
    driver = QemuDriver(spec, QemuOptions(accel="tcg"), Runner())
    with pytest.raises(DriverError, match="chmod 700"):
        driver.control_socket  # noqa: B018 - the property is what is checked
    driver.remove()
    assert planted.exists() and stat.S_IMODE(folder.lstat().st_mode) == 0o755
