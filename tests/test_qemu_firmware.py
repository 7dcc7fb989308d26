"""Finding UEFI firmware the way QEMU installs describe it: JSON firmware descriptors
(QEMU's docs/interop/firmware.json), their folders, their precedence, and which one wins.
Descriptor files are written into the test's folders; the images they name are sparse."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pymachine.drivers.qemu_firmware import FirmwareChoice, FirmwareDescriptor, choose_uefi, descriptor_files, read_descriptors, search_folders

#: The size of QEMU virt's flash, and so of an arm64 UEFI code image (AAVMF_CODE.fd).
FLASH_BYTES = 64 * 1024 * 1024


def code_image(path: Path, size: int = FLASH_BYTES) -> Path:
    """A sparse stand-in for a UEFI code image of `size` bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def mask_host_descriptors(xdg: Path, keep: tuple[str, ...] = ()) -> None:
    """Hide this host's own firmware descriptors, as QEMU's rules let a user: an empty file
    of the same name in ~/.config/qemu/firmware."""
    folder = xdg / "qemu" / "firmware"
    folder.mkdir(parents=True, exist_ok=True)
    for system in (Path("/usr/share/qemu/firmware"), Path("/etc/qemu/firmware")):
        for found in system.glob("*.json") if system.is_dir() else ():
            if found.name not in keep:
                (folder / found.name).write_text("")


# /usr/share/qemu/firmware/60-edk2-aarch64.json as Debian 12's qemu-efi-aarch64 ships it.
DEBIAN_AARCH64_DESCRIPTOR = """{
    "description": "UEFI firmware for aarch64",
    "interface-types": [
        "uefi"
    ],
    "mapping": {
        "device": "flash",
        "executable": {
            "filename": "/usr/share/AAVMF/AAVMF_CODE.fd",
            "format": "raw"
        },
        "nvram-template": {
            "filename": "/usr/share/AAVMF/AAVMF_VARS.fd",
            "format": "raw"
        }
    },
    "targets": [
        {
            "architecture": "aarch64",
            "machines": [
                "virt-*"
            ]
        }
    ],
    "features": [
        "verbose-static"
    ],
    "tags": [

    ]
}
"""


def write_descriptor(path: Path, image: Path, architecture: str, machines: list[str], features: list[str], interfaces: tuple[str, ...] = ("uefi",)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "description": f"test firmware at {image}",
        "interface-types": list(interfaces),
        "mapping": {"device": "flash", "executable": {"filename": str(image), "format": "raw"}, "nvram-template": {"filename": str(image) + ".vars", "format": "raw"}},
        "targets": [{"architecture": architecture, "machines": machines}],
        "features": features,
        "tags": [],
    }
    path.write_text(json.dumps(data, indent=4))
    return path


def test_parse_debians_aarch64_descriptor(tmp_path: Path) -> None:
    descriptor = FirmwareDescriptor.parse(tmp_path / "60-edk2-aarch64.json", DEBIAN_AARCH64_DESCRIPTOR)
    assert descriptor.interface_types == ("uefi",)
    assert descriptor.device == "flash"
    assert (descriptor.executable, descriptor.executable_format) == ("/usr/share/AAVMF/AAVMF_CODE.fd", "raw")
    assert descriptor.targets == (("aarch64", ("virt-*",)),)
    assert descriptor.features == frozenset({"verbose-static"})
    assert descriptor.runs_on("aarch64", "virt")
    assert not descriptor.runs_on("x86_64", "q35") and not descriptor.runs_on("aarch64", "sbsa-ref")


@pytest.mark.parametrize("text", ["not json", "[]", '{"mapping": {}}', '{"mapping": {"device": "flash"}}'])
def test_a_broken_descriptor_is_refused(tmp_path: Path, text: str) -> None:
    with pytest.raises(ValueError):
        FirmwareDescriptor.parse(tmp_path / "x.json", text)


def test_machine_globs_match_the_unversioned_names_we_run(tmp_path: Path) -> None:
    q35 = FirmwareDescriptor.parse(tmp_path / "a.json", json.dumps({"interface-types": ["uefi"], "mapping": {"device": "flash", "executable": {"filename": "/x"}}, "targets": [{"architecture": "x86_64", "machines": ["pc-q35-*"]}]}))
    i440fx = FirmwareDescriptor.parse(tmp_path / "b.json", json.dumps({"interface-types": ["uefi"], "mapping": {"device": "flash", "executable": {"filename": "/x"}}, "targets": [{"architecture": "x86_64", "machines": ["pc-i440fx-*"]}]}))
    assert q35.runs_on("x86_64", "q35") and not i440fx.runs_on("x86_64", "q35")
    assert q35.executable_format == "raw"  # format is optional in practice; raw is QEMU's default


def test_search_folders_follow_qemus_order(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert search_folders(None, {}, home) == [Path("/usr/share/qemu/firmware"), Path("/etc/qemu/firmware"), home / ".config/qemu/firmware"]
    assert search_folders("/opt/homebrew/bin/qemu-system-aarch64", {"XDG_CONFIG_HOME": str(tmp_path / "cfg")}, home) == [
        Path("/usr/share/qemu/firmware"),
        Path("/opt/homebrew/share/qemu/firmware"),
        Path("/etc/qemu/firmware"),
        tmp_path / "cfg/qemu/firmware",
    ]
    # Homebrew links bin/ into its Cellar: the real prefix's folder is searched too.
    cellar = tmp_path / "Cellar" / "qemu" / "9.1.0" / "bin"
    cellar.mkdir(parents=True)
    (cellar / "qemu-system-aarch64").write_text("")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "qemu-system-aarch64").symlink_to(cellar / "qemu-system-aarch64")
    folders = search_folders(str(tmp_path / "bin" / "qemu-system-aarch64"), {}, home)
    assert folders[1:3] == [tmp_path / "share/qemu/firmware", tmp_path / "Cellar/qemu/9.1.0/share/qemu/firmware"]


def test_a_user_descriptor_replaces_a_system_one_of_the_same_name(tmp_path: Path) -> None:
    system, user = tmp_path / "usr-share", tmp_path / "config"
    distro, mine = code_image(tmp_path / "distro.fd"), code_image(tmp_path / "mine.fd")
    write_descriptor(system / "60-edk2-aarch64.json", distro, "aarch64", ["virt-*"], ["verbose-static"])
    write_descriptor(user / "60-edk2-aarch64.json", mine, "aarch64", ["virt-*"], [])
    descriptors, skipped = read_descriptors(descriptor_files([system, user]))
    assert skipped == []
    choice, _ = choose_uefi(descriptors, "aarch64", "virt")
    assert choice == FirmwareChoice(mine, "raw", user / "60-edk2-aarch64.json")
    # An empty file of that name hides the distribution's without offering another.
    (user / "60-edk2-aarch64.json").write_text("")
    choice, _ = choose_uefi(read_descriptors(descriptor_files([system, user]))[0], "aarch64", "virt")
    assert choice is None


def test_the_first_name_wins_across_folders(tmp_path: Path) -> None:
    system, etc = tmp_path / "usr-share", tmp_path / "etc"
    write_descriptor(system / "60-edk2-aarch64.json", code_image(tmp_path / "distro.fd"), "aarch64", ["virt-*"], [])
    write_descriptor(etc / "10-local.json", code_image(tmp_path / "local.fd"), "aarch64", ["virt-*"], [])
    choice, _ = choose_uefi(read_descriptors(descriptor_files([system, etc]))[0], "aarch64", "virt")
    assert choice is not None and choice.path == tmp_path / "local.fd"


def test_secure_boot_firmware_is_not_chosen(tmp_path: Path) -> None:
    # Debian's names: the Secure Boot variants sort first, and are passed over.
    folder = tmp_path / "firmware"
    write_descriptor(folder / "40-edk2-aarch64-secure-enrolled.json", code_image(tmp_path / "ms.fd"), "aarch64", ["virt-*"], ["enrolled-keys", "secure-boot", "verbose-static"])
    write_descriptor(folder / "50-edk2-aarch64-secure.json", code_image(tmp_path / "secboot.fd"), "aarch64", ["virt-*"], ["secure-boot", "verbose-static"])
    write_descriptor(folder / "55-edk2-x86_64.json", code_image(tmp_path / "ovmf.fd"), "x86_64", ["pc-q35-*"], [])
    write_descriptor(folder / "56-edk2-aarch64-bios.json", code_image(tmp_path / "bios.fd"), "aarch64", ["virt-*"], [], interfaces=("bios",))
    write_descriptor(folder / "60-edk2-aarch64.json", code_image(tmp_path / "plain.fd"), "aarch64", ["virt-*"], ["verbose-static"])
    write_descriptor(folder / "61-edk2-x86_64-smm.json", code_image(tmp_path / "smm.fd"), "x86_64", ["pc-q35-*"], ["requires-smm"])
    descriptors, _ = read_descriptors(descriptor_files([folder]))
    assert choose_uefi(descriptors, "aarch64", "virt")[0].path == tmp_path / "plain.fd"
    assert choose_uefi(descriptors, "x86_64", "q35")[0].path == tmp_path / "ovmf.fd"
    # With nothing plainer, a Secure Boot build still boots (no keys without a variables store).
    only_secure = [d for d in descriptors if "secure-boot" in d.features]
    assert choose_uefi(only_secure, "aarch64", "virt")[0].path == tmp_path / "ms.fd"
    # requires-smm needs an SMM set-up we do not make: never chosen.
    assert choose_uefi([d for d in descriptors if "requires-smm" in d.features], "x86_64", "q35")[0] is None


def test_a_descriptor_naming_a_missing_image_is_passed_over_with_the_reason(tmp_path: Path) -> None:
    folder = tmp_path / "firmware"
    write_descriptor(folder / "10-gone.json", tmp_path / "gone.fd", "aarch64", ["virt-*"], [])
    write_descriptor(folder / "60-edk2-aarch64.json", code_image(tmp_path / "plain.fd"), "aarch64", ["virt-*"], [])
    (folder / "05-broken.json").write_text("{")
    descriptors, skipped = read_descriptors(descriptor_files([folder]))
    choice, passed_over = choose_uefi(descriptors, "aarch64", "virt")
    assert choice is not None and choice.path == tmp_path / "plain.fd"
    assert passed_over == [f"{folder / '10-gone.json'} names {tmp_path / 'gone.fd'}, which does not exist"]
    assert len(skipped) == 1 and "05-broken.json is not JSON" in skipped[0]
