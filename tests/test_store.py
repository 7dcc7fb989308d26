"""The store: machine names, config.json on disk, versions, and the per-machine lock."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from pymachine import store as store_module
from pymachine.errors import InvalidName, MachineExists, MachineNotFound, StoreError
from pymachine.store import (
    CONFIG_VERSION,
    STATUS_ERROR,
    MachineConfig,
    Store,
    atomic_write,
    validate_name,
)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "home")


def write_raw(store: Store, name: str, text: str) -> Path:
    directory = store.machines_dir / name
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "config.json"
    path.write_text(text)
    return path


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


# -- names ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["dev", "a", "Dev-2", "0day", "web.example", "a-b.c-d", "x" * 63, "1.2.3"])
def test_valid_names_are_returned_unchanged(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "-dev",
        ".dev",
        "dev.",
        "a..b",
        "x" * 64,
        "has space",
        "under_score",
        "slash/name",
        "../escape",
        "dev\n",
        "dev\nrm",
        "ünicode",
        "semi;colon",
    ],
)
def test_invalid_names_are_refused_with_the_rules_and_a_next_step(name: str) -> None:
    with pytest.raises(InvalidName) as caught:
        validate_name(name)
    message = str(caught.value)
    assert "at most 63 characters" in message
    assert "`pymachine create --help`" in message
    # Whatever the user typed, the message stays on one line.
    assert "\n" not in message


def test_store_paths_refuse_invalid_names(store: Store) -> None:
    with pytest.raises(InvalidName):
        store.machine_dir("../../etc")
    with pytest.raises(InvalidName):
        store.load("bad name")


def test_names_lists_machine_folders_only_sorted(store: Store) -> None:
    assert store.names() == []
    for name in ("zeta", "alpha", "mid.dle"):
        with store.reserve(MachineConfig(name=name, driver="qemu")):
            pass
    (store.machines_dir / "stray-file").write_text("not a machine")
    (store.machines_dir / ".hidden").mkdir()
    assert store.names() == ["alpha", "mid.dle", "zeta"]


# -- reserve, save, load -------------------------------------------------------------


def test_reserve_save_load_round_trip(store: Store) -> None:
    config = MachineConfig(
        name="dev",
        driver="qemu",
        driver_options={"accel": "tcg", "restrict_network": True},
        cpus=4,
        memory_mb=4096,
        engine_labels=["env=test"],
        ssh_port=40022,
        docker_port=42376,
    )
    with store.reserve(config) as directory:
        pass
    assert directory == store.machines_dir / "dev"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert store.exists("dev")
    assert store.load("dev") == config

    config.status = "ready"
    config.engine_version = "20.10.24"
    store.save(config)
    assert store.load("dev") == config
    data = json.loads(store.config_path("dev").read_text())
    assert data["version"] == CONFIG_VERSION
    assert data["status"] == "ready"


def test_reserve_twice_fails_and_keeps_the_first(store: Store) -> None:
    with store.reserve(MachineConfig(name="dev", driver="qemu", cpus=3)):
        pass
    with pytest.raises(MachineExists) as caught:
        with store.reserve(MachineConfig(name="dev", driver="virtualbox")):
            pass
    assert "`pymachine rm dev`" in str(caught.value)
    assert store.load("dev").cpus == 3
    assert store.load("dev").driver == "qemu"


def test_unknown_keys_in_config_are_ignored(store: Store) -> None:
    data = MachineConfig(name="dev", driver="qemu").to_json()
    data["from_a_plugin"] = {"x": 1}
    write_raw(store, "dev", json.dumps(data))
    assert store.load("dev").driver == "qemu"


def test_remove_deletes_the_folder(store: Store) -> None:
    with store.reserve(MachineConfig(name="dev", driver="qemu")):
        pass
    (store.machine_dir("dev") / "data.qcow2").write_bytes(b"disk")
    store.remove("dev")
    assert not store.exists("dev")
    with pytest.raises(MachineNotFound):
        store.load("dev")


def test_missing_machine_raises_machine_not_found(store: Store) -> None:
    with pytest.raises(MachineNotFound) as caught:
        store.load("ghost")
    assert str(caught.value) == "Machine 'ghost' does not exist. Run `pymachine ls` to see your machines"


def test_half_created_machine_loads_as_error(store: Store) -> None:
    (store.machines_dir / "half").mkdir(parents=True)
    config = store.load("half")
    assert config.status == STATUS_ERROR
    assert config.driver == ""
    assert "no config.json" in config.error


# -- config.json on disk -------------------------------------------------------------


def test_config_is_written_0600_through_a_temp_file_and_os_replace(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    with store.reserve(MachineConfig(name="dev", driver="qemu")):
        pass
    path = store.config_path("dev")
    before = path.stat().st_ino
    replaced: list[tuple[str, str]] = []
    real_replace = os.replace

    def spy(src, dst):
        replaced.append((os.fspath(src), os.fspath(dst)))
        # The temp file is complete and already 0600 when it takes the real name.
        assert stat.S_IMODE(os.stat(src).st_mode) == 0o600
        assert json.loads(Path(src).read_text())["cpus"] == 8
        return real_replace(src, dst)

    monkeypatch.setattr(store_module.os, "replace", spy)
    store.save(MachineConfig(name="dev", driver="qemu", cpus=8))
    assert len(replaced) == 1
    src, dst = replaced[0]
    assert Path(dst) == path
    assert Path(src).parent == path.parent and Path(src).name.endswith(".tmp")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.stat().st_ino != before  # a new file took the name; the old one was not rewritten
    assert leftovers(path.parent) == []


def test_atomic_write_mode_even_with_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        atomic_write(tmp_path / "secret", b"key")
        atomic_write(tmp_path / "public", "cert", mode=0o644)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "secret").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "public").stat().st_mode) == 0o644
    assert (tmp_path / "public").read_text() == "cert"
    assert leftovers(tmp_path) == []


def test_a_failed_write_keeps_the_old_config_and_leaves_no_temp_file(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    with store.reserve(MachineConfig(name="dev", driver="qemu", cpus=2)):
        pass
    path = store.config_path("dev")
    old_bytes = path.read_bytes()

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store_module.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        store.save(MachineConfig(name="dev", driver="qemu", cpus=16))
    monkeypatch.undo()
    assert path.read_bytes() == old_bytes
    assert store.load("dev").cpus == 2
    assert leftovers(path.parent) == []


def test_a_process_killed_mid_write_leaves_the_old_config_intact(store: Store, tmp_path: Path) -> None:
    """A real crash: the writer dies after writing half the temp file, before os.replace."""
    with store.reserve(MachineConfig(name="dev", driver="qemu", cpus=2)):
        pass
    path = store.config_path("dev")
    old_bytes = path.read_bytes()
    script = f"""
import os, sys
sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})
from pymachine import store
real_fdopen = os.fdopen
class Dies:
    def __init__(self, handle): self.handle = handle
    def __enter__(self): return self
    def __exit__(self, *exc): return False
    def write(self, data):
        self.handle.write(data[: len(data) // 2]); self.handle.flush()
        os._exit(9)
store.os.fdopen = lambda fd, mode: Dies(real_fdopen(fd, mode))
s = store.Store({str(store.root)!r})
s.save(store.MachineConfig(name="dev", driver="qemu", cpus=16))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert done.returncode == 9, done.stderr
    assert path.read_bytes() == old_bytes
    assert store.load("dev").cpus == 2
    # The crash left its half-written temp file beside config.json, never in its place.
    partial = leftovers(path.parent)
    assert len(partial) == 1 and partial[0].startswith(".config.json.")
    assert store.names() == ["dev"]


# -- versions ------------------------------------------------------------------------


def test_config_from_the_future_is_refused(store: Store) -> None:
    data = MachineConfig(name="dev", driver="qemu").to_json()
    data["version"] = CONFIG_VERSION + 1
    write_raw(store, "dev", json.dumps(data))
    with pytest.raises(StoreError) as caught:
        store.load("dev")
    message = str(caught.value)
    assert "newer pymachine" in message
    assert f"config version {CONFIG_VERSION + 1}" in message
    assert "`pipx upgrade pymachine-vm`" in message


def test_older_version_without_a_migration_is_refused(store: Store) -> None:
    write_raw(store, "old", json.dumps({"version": 0, "name": "old", "driver": "qemu"}))
    with pytest.raises(StoreError) as caught:
        store.load("old")
    assert "config version 0" in str(caught.value)
    assert "`pymachine rm -f old`" in str(caught.value)


def test_config_without_a_version_counts_as_version_0(store: Store) -> None:
    write_raw(store, "nov", json.dumps({"name": "nov", "driver": "qemu"}))
    with pytest.raises(StoreError, match="config version 0"):
        store.load("nov")


def test_non_integer_version_is_refused(store: Store) -> None:
    write_raw(store, "odd", json.dumps({"version": "1", "name": "odd", "driver": "qemu"}))
    with pytest.raises(StoreError, match="without a valid version") as caught:
        store.load("odd")
    assert "`pymachine rm -f odd`" in str(caught.value)


def test_migrations_run_step_by_step(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []

    def v1_to_v2(data: dict) -> dict:
        seen.append(data["version"])
        data["memory_mb"] = data.pop("memory") * 1024  # version 1 kept GiB under another key
        return data

    def v2_to_v3(data: dict) -> dict:
        seen.append(data["version"])
        data["forward_bind"] = "0.0.0.0" if data.pop("open_ports", False) else "127.0.0.1"
        return data

    monkeypatch.setattr(store_module, "CONFIG_VERSION", 3)
    monkeypatch.setattr(store_module, "MIGRATIONS", {1: v1_to_v2, 2: v2_to_v3})
    write_raw(store, "old", json.dumps({"version": 1, "name": "old", "driver": "qemu", "memory": 4, "open_ports": True}))
    config = store.load("old")
    assert seen == [1, 2]
    assert config.memory_mb == 4096
    assert config.forward_bind == "0.0.0.0"
    # Saving writes the current version, so the next load needs no migration.
    store.save(config)
    assert json.loads(store.config_path("old").read_text())["version"] == 3
    seen.clear()
    assert store.load("old") == config
    assert seen == []


def test_a_missing_step_in_the_middle_stops_the_migration(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "CONFIG_VERSION", 3)
    monkeypatch.setattr(store_module, "MIGRATIONS", {1: lambda d: d})
    write_raw(store, "old", json.dumps({"version": 1, "name": "old", "driver": "qemu"}))
    with pytest.raises(StoreError, match="config version 2"):
        store.load("old")


@pytest.mark.parametrize("text", ["{not json", "", '{"version": 1, "name": "x",', "[1, 2]", "null", '"text"'])
def test_unreadable_config_is_one_line_naming_rm(store: Store, text: str) -> None:
    write_raw(store, "broken", text)
    with pytest.raises(StoreError) as caught:
        store.load("broken")
    message = str(caught.value)
    assert "\n" not in message
    assert "Machine 'broken'" in message
    assert "`pymachine rm -f broken`" in message


# -- the lock ------------------------------------------------------------------------


def test_lock_is_exclusive_and_names_the_next_command(store: Store) -> None:
    with store.reserve(MachineConfig(name="dev", driver="qemu")):
        pass
    with store.lock("dev"):
        with pytest.raises(StoreError) as caught:
            with store.lock("dev", timeout=0.1):
                pass
        assert "busy with another pymachine command" in str(caught.value)
        assert "`pymachine status dev`" in str(caught.value)
    # Released: the next command gets it at once.
    with store.lock("dev", timeout=0.1):
        pass


def test_lock_is_held_across_processes(store: Store) -> None:
    with store.reserve(MachineConfig(name="dev", driver="qemu")):
        pass
    script = f"""
import sys
sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})
from pymachine.store import Store
from pymachine.errors import StoreError
try:
    with Store({str(store.root)!r}).lock("dev", timeout=0.2):
        print("acquired")
except StoreError as exc:
    print("busy:", exc)
"""
    with store.lock("dev"):
        held = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert held.stdout.startswith("busy:"), held.stdout + held.stderr
    free = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert free.stdout.strip() == "acquired", free.stdout + free.stderr


def test_lock_of_a_missing_machine_raises_machine_not_found(store: Store) -> None:
    with pytest.raises(MachineNotFound):
        with store.lock("ghost"):
            pass
    assert not (store.machines_dir / "ghost").exists()


def test_a_version_1_config_is_an_amd64_machine(store: Store) -> None:
    """Version 2 added the guest's architecture; every machine made before was amd64."""
    path = write_raw(store, "old", json.dumps({"version": 1, "name": "old", "driver": "qemu", "docker_port": 42376}))
    config = store.load("old")
    assert (config.arch, config.docker_port) == ("amd64", 42376)
    store.save(config)
    assert json.loads(path.read_text())["version"] == CONFIG_VERSION == 2
