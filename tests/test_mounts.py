"""Shared host folders without a VM: parsing `--mount`, the default, the config medium's
`mounts` file, and the QEMU command line that carries them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from pymachine.driver import Mount
from pymachine.errors import MachineError
from pymachine.guest.certs import SSHKeyPair
from pymachine.guest.configmedium import config_medium, mount_lines
from pymachine.guest.iso9660 import read_files
from pymachine.mounts import default_mounts, parse_mount, resolve_mounts, sharing_summary

from .test_qemu_unit import make_driver, value_after


def test_a_folder_alone_appears_at_the_same_path(tmp_path: Path) -> None:
    assert parse_mount(str(tmp_path)) == Mount(str(tmp_path), str(tmp_path), True)


def test_guest_path_and_read_only(tmp_path: Path) -> None:
    assert parse_mount(f"{tmp_path}:/app:ro") == Mount(str(tmp_path), "/app", False)
    assert parse_mount(f"{tmp_path}:/app") == Mount(str(tmp_path), "/app", True)
    assert parse_mount(f"{tmp_path}:rw") == Mount(str(tmp_path), str(tmp_path), True)


def test_relative_and_home_relative_host_paths_are_resolved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "src").mkdir()
    monkeypatch.chdir(tmp_path)
    assert parse_mount("src").host == str(tmp_path / "src")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert parse_mount("~/src:/src").host == str(tmp_path / "src")


@pytest.mark.parametrize(
    "guest, message",
    [
        ("relative", "the guest path must be absolute"),
        ("/a/../etc", "the guest path must be absolute"),
        ("/", "the guest needs / for itself"),
        ("/tmp", "the guest needs /tmp for itself"),
        ("/etc", "the guest needs /etc for itself"),
        ("/root/.ssh", "the guest needs /root for itself"),
        ("/var/lib/docker", "the guest needs /var for itself"),
        ("/mnt/data", "the guest needs /mnt for itself"),
    ],
)
def test_guest_paths_the_guest_needs_are_refused(tmp_path: Path, guest: str, message: str) -> None:
    with pytest.raises(MachineError) as caught:
        parse_mount(f"{tmp_path}:{guest}")
    assert message in str(caught.value)
    assert "`pymachine create" in str(caught.value)


@pytest.mark.parametrize("guest", ["/tmp/work", "/home/alice", "/Users/alice", "/Users/John Smith/code", "/srv", "/app"])
def test_ordinary_guest_paths_are_taken(tmp_path: Path, guest: str) -> None:
    assert parse_mount(f"{tmp_path}:{guest}").guest == guest


def test_a_missing_host_folder_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(MachineError) as caught:
        parse_mount(str(tmp_path / "nope"))
    assert str(caught.value) == f"--mount {tmp_path / 'nope'}: {tmp_path / 'nope'} is not a folder on this host. Create it, or run `pymachine create` with another --mount folder"


@pytest.mark.parametrize("text", ["", ":/app", "/a:/b:/c"])
def test_malformed_mounts(text: str) -> None:
    with pytest.raises(MachineError, match="--mount takes HOST"):
        parse_mount(text)


def test_the_default_is_the_home_folder_where_the_guest_can_take_it(tmp_path: Path) -> None:
    home = tmp_path / "home" / "alice"
    home.mkdir(parents=True)
    assert default_mounts(str(home)) == [Mount(str(home), str(home))]
    # root's home is the guest's own /root: sharing it there would hide the guest's SSH keys
    assert default_mounts("/root") == []
    assert default_mounts(str(tmp_path / "missing")) == []


def test_resolve_mounts(tmp_path: Path) -> None:
    assert resolve_mounts([], supported=True, driver="qemu") == []
    assert resolve_mounts(None, supported=False, driver="parallels") == []
    assert resolve_mounts([str(tmp_path)], supported=True, driver="qemu") == [Mount(str(tmp_path), str(tmp_path))]
    with pytest.raises(MachineError, match="The parallels driver cannot share host folders with amd64 guests yet"):
        resolve_mounts([str(tmp_path)], supported=False, driver="parallels")
    with pytest.raises(MachineError, match="The virtualbox driver cannot share host folders with arm64 guests yet"):
        resolve_mounts([str(tmp_path)], supported=False, driver="virtualbox", arch="arm64")
    with pytest.raises(MachineError, match="two folders would both appear at /app"):
        resolve_mounts([f"{tmp_path}:/app", f"{tmp_path}:/app:ro"], supported=True, driver="qemu")


def test_mount_round_trips_through_the_store_form() -> None:
    mount = Mount("/Users/a", "/Users/a", False)
    assert Mount.from_dict(mount.as_dict()) == mount
    assert Mount.from_dict({"host": "/h", "guest": "/g"}).writable


def test_the_config_medium_lists_the_mounts_path_last() -> None:
    host = SSHKeyPair.generate("root@dev")
    mounts = [Mount("/h/one", "/Users/John Smith"), Mount("/h/two", "/data", False)]
    lines = mount_lines(mounts)
    assert lines == "pmshare0 rw /Users/John Smith\npmshare1 ro /data\n"
    files = read_files(config_medium("dev", "ssh-ed25519 AAAA k", host.private_pem, mounts))
    assert files["mounts"] == lines.encode()
    assert "mounts" not in read_files(config_medium("dev", "ssh-ed25519 AAAA k", host.private_pem))


def test_qemu_shares_each_folder_over_virtio_9p(tmp_path: Path) -> None:
    driver = make_driver(tmp_path, accel="tcg")
    shared = tmp_path / "with,comma"
    driver.spec = dataclasses.replace(driver.spec, mounts=(Mount(str(shared), "/src"), Mount("/data", "/data", False)))
    argv = driver.command_line()
    assert value_after(argv, "-fsdev") == [
        f"local,id=pmshare0,path={tmp_path}/with,,comma,security_model=none",
        "local,id=pmshare1,path=/data,security_model=none,readonly=on",
    ]
    assert "virtio-9p-pci,fsdev=pmshare0,mount_tag=pmshare0" in value_after(argv, "-device")
    assert "virtio-9p-pci,fsdev=pmshare1,mount_tag=pmshare1" in value_after(argv, "-device")


def test_qemu_without_mounts_has_no_9p_device(tmp_path: Path) -> None:
    argv = make_driver(tmp_path, accel="tcg").command_line()
    assert "-fsdev" not in argv
    assert not any("9p" in a for a in argv)


def test_create_says_what_is_shared_and_what_is_not(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One line at create: a home folder that cannot be shared (root's /root is the
    guest's own) is not skipped in silence."""
    home = tmp_path / "user"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    shared = resolve_mounts(None, True, "qemu")
    assert sharing_summary(shared, None, True, "qemu") == (
        f"Shared with the guest: {home}. Other host paths given to `docker run -v` are empty folders in the guest"
    )
    monkeypatch.setenv("HOME", "/root")
    assert resolve_mounts(None, True, "qemu") == []
    assert sharing_summary([], None, True, "qemu") == (
        "No host folder is shared: your home folder /root cannot appear at the same path in the guest. "
        "`docker run -v HOST-PATH:...` will see an empty folder; share one with --mount HOST:/srv/NAME"
    )
    assert sharing_summary([], None, False, "parallels", "arm64").startswith("No host folder is shared: the parallels driver shares no folders with arm64 guests.")
    assert sharing_summary([], [], True, "qemu") == "No host folder is shared (--no-mounts)"
