"""The fakes' reader of boot media, checked against writers it did not come from.

The fake hypervisors decide whether a VM boots by reading its ISO's El Torito catalog and,
for EFI, the FAT inside (tests/fakes/bootmedia.py). Here the reader meets pycdlib's
catalogs and file systems made by mkfs.fat and mcopy (dosfstools, mtools), and the test
ISO writer's FAT12 image meets fsck.fat.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from .fakes import bootmedia
from .fakes.isos import KINDS, fat12_image, write_boot_iso

#: kind -> what each firmware starts from it
EXPECTED = {
    "bios": {"bios": "bios", "efi-x64": None, "efi-aa64": None},
    "amd64-efi": {"bios": None, "efi-x64": "\\EFI\\BOOT\\BOOTX64.EFI", "efi-aa64": None},
    "amd64-hybrid": {"bios": "bios", "efi-x64": "\\EFI\\BOOT\\BOOTX64.EFI", "efi-aa64": None},
    "arm64": {"bios": None, "efi-x64": None, "efi-aa64": "\\EFI\\BOOT\\BOOTAA64.EFI"},
    "none": {"bios": None, "efi-x64": None, "efi-aa64": None},
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_firmware_finds_what_it_can_start(tmp_path: Path, kind: str) -> None:
    iso = write_boot_iso(tmp_path / "boot.iso", kind)
    assert {firmware: bootmedia.boot_medium_kind(iso, firmware) for firmware in EXPECTED[kind]} == EXPECTED[kind]


def test_the_catalog_of_a_hybrid_iso(tmp_path: Path) -> None:
    iso = write_boot_iso(tmp_path / "boot.iso", "amd64-hybrid")
    entries = bootmedia.boot_entries(iso)
    assert [(e.platform, e.bootable) for e in entries] == [(bootmedia.PLATFORM_X86, True), (bootmedia.PLATFORM_EFI, True)]


def test_things_that_are_not_boot_media(tmp_path: Path) -> None:
    blank = tmp_path / "blank.iso"
    blank.write_bytes(b"\0" * 65536)
    assert bootmedia.boot_medium_kind(blank, "bios") is None
    with pytest.raises(bootmedia.MediaError, match="no ISO 9660 volume descriptor"):
        bootmedia.boot_entries(blank)
    assert bootmedia.boot_medium_kind(tmp_path / "missing.iso", "efi-aa64") is None


def _mkfs(image: Path, fat: str, kib: int, name: str) -> None:
    subprocess.run(["mkfs.fat", "-F", fat, "-C", str(image), str(kib)], check=True, capture_output=True)
    source = image.with_name("payload.efi")
    source.write_bytes(b"MZ" + b"x" * 5000)
    subprocess.run(["mmd", "-i", str(image), "::/EFI", "::/EFI/BOOT"], check=True, capture_output=True)
    subprocess.run(["mcopy", "-i", str(image), str(source), f"::/EFI/BOOT/{name}"], check=True, capture_output=True)


@pytest.mark.skipif(not (shutil.which("mkfs.fat") and shutil.which("mcopy")), reason="dosfstools and mtools are not installed")
@pytest.mark.parametrize(("fat", "kib", "bits"), [("12", 2048, 12), ("16", 20000, 16), ("32", 70000, 32)])
def test_the_fat_reader_reads_mkfs_fat_images(tmp_path: Path, fat: str, kib: int, bits: int) -> None:
    image = tmp_path / "esp.img"
    # A lower-case name: mcopy stores a long name beside the 8.3 one; FAT compares without case.
    _mkfs(image, fat, kib, "bootaa64.efi")
    fs = bootmedia.FatImage(image, 0)
    assert fs.bits == bits
    assert fs.find("EFI/BOOT/BOOTAA64.EFI") == 5002
    assert fs.find("EFI/BOOT/BOOTX64.EFI") is None
    assert fs.find("EFI/BOOTAA64.EFI") is None


@pytest.mark.skipif(not shutil.which("fsck.fat"), reason="dosfstools is not installed")
def test_the_test_writers_fat12_passes_fsck(tmp_path: Path) -> None:
    image = tmp_path / "esp.img"
    image.write_bytes(fat12_image({"EFI/BOOT/BOOTAA64.EFI": b"MZ" + b"y" * 1500}))
    checked = subprocess.run(["fsck.fat", "-n", str(image)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert bootmedia.FatImage(image, 0).find("efi/boot/bootaa64.efi") == 1502
