"""The ISO 9660 writer (boot image and config medium) and the config medium itself."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import struct
import subprocess
from pathlib import Path

import pytest

from pymachine.guest.certs import SSHKeyPair
from pymachine.guest.configmedium import (
    SIZE,
    VOLUME_ID,
    config_medium,
    write_config_medium,
)
from pymachine.guest.fat import FatImage, FatReader
from pymachine.guest.iso9660 import (
    PLATFORM_EFI,
    PLATFORM_X86,
    SECTOR,
    BootEntry,
    IsoWriter,
    boot_entries,
    efi_boot_arches,
    efi_load_sectors,
    iso_name,
    read_files,
    volume_id,
)

STAMP = 1_700_000_000  # 2023-11-14 22:13:20 UTC
BOOT = bytes(range(256)) * 9 + b"odd"  # 2307 bytes: not a multiple of 4, spans two sectors


def files() -> dict[str, bytes]:
    out = {
        "hostname": b"dev\n",
        "a/top.bin": b"\x00\x01\x02",
        "a/b/c/deep.txt": b"deep down\n",
        "a/b/sibling": b"s" * 5000,  # three sectors
        "empty": b"",
        "my-key": b"hyphen becomes underscore",
        "isolinux/isolinux.bin": BOOT,
        "isolinux/isolinux.cfg": b"default linux\n",
    }
    # Enough entries that the folder's records need more than one sector.
    for i in range(90):
        out[f"many/file_{i:03d}.dat"] = f"content {i}".encode()
    return out


def build(volume: str = "PYMACHINE", boot: bool = True, order: list[str] | None = None, timestamp: float = STAMP, **write) -> bytes:
    writer = IsoWriter(volume, timestamp=timestamp)
    content = files()
    for path in order or list(content):
        writer.add_file(path, content[path])
    if boot:
        writer.set_boot("isolinux/isolinux.bin", load_sectors=4)
    return writer.write(**write)


def u32(data: bytes, offset: int) -> int:
    return struct.unpack_from("<I", data, offset)[0]


def pvd(image: bytes) -> bytes:
    return image[16 * SECTOR : 17 * SECTOR]


# -- reading back --------------------------------------------------------------------


def test_files_in_nested_folders_read_back() -> None:
    image = build(boot=False)
    found = read_files(image)
    expected = {path.replace("-", "_"): data for path, data in files().items()}
    assert found == expected


def test_boot_file_reads_back_with_its_info_table_patched_in() -> None:
    found = read_files(build())
    boot = found.pop("isolinux/isolinux.bin")
    assert len(boot) == len(BOOT)
    assert boot[:8] == BOOT[:8] and boot[64:] == BOOT[64:]
    assert boot[8:64] != BOOT[8:64]
    assert found["a/b/c/deep.txt"] == b"deep down\n"


def test_same_inputs_give_the_same_bytes_in_any_order() -> None:
    names = list(files())
    first = build()
    assert build() == first
    assert build(order=list(reversed(names))) == first
    assert build(timestamp=STAMP + 60) != first


def test_volume_id_and_primary_descriptor_fields() -> None:
    image = build(volume="PMCONFIG", boot=False)
    assert volume_id(image[: 17 * SECTOR]) == "PMCONFIG"
    descriptor = pvd(image)
    assert descriptor[:8] == b"\x01CD001\x01\x00"
    assert descriptor[40:72] == b"PMCONFIG".ljust(32)
    # Both-endian fields: volume space size, block size.
    sectors = u32(descriptor, 80)
    assert descriptor[84:88] == struct.pack(">I", sectors)
    assert sectors * SECTOR == len(image)
    assert struct.unpack_from("<H", descriptor, 128)[0] == SECTOR
    assert descriptor[813:829] == b"2023111422132000"  # creation date from the timestamp
    assert descriptor[881] == 1
    # The set terminator follows.
    assert image[17 * SECTOR : 17 * SECTOR + 6] == b"\xffCD001"


@pytest.mark.parametrize("min_size, sectors", [(0, None), (64 * 1024, 32), (1 << 20, 512), (1 + (1 << 20), 513)])
def test_min_size_pads_with_zeros(min_size: int, sectors: int | None) -> None:
    plain = build(volume="PMCONFIG", boot=False)
    image = build(volume="PMCONFIG", boot=False, min_size=min_size)
    if sectors is None or sectors * SECTOR <= len(plain):
        assert image == plain
        return
    assert len(image) == sectors * SECTOR
    assert image[: len(plain)][: 16 * SECTOR] == plain[: 16 * SECTOR]
    assert u32(pvd(image), 80) == sectors  # the volume size covers the padding
    assert image[len(plain) :] == b"\0" * (len(image) - len(plain))
    assert read_files(image) == read_files(plain)


def test_small_image_smaller_than_min_size_keeps_its_content() -> None:
    writer = IsoWriter("TINY", timestamp=STAMP)
    writer.add_file("x", b"1")
    tiny = writer.write()
    assert len(tiny) < 64 * 1024
    writer = IsoWriter("TINY", timestamp=STAMP)
    writer.add_file("x", b"1")
    assert read_files(writer.write(min_size=64 * 1024)) == {"x": b"1"}


# -- El Torito -----------------------------------------------------------------------


def test_el_torito_boot_record_and_catalog() -> None:
    image = build()
    record = image[17 * SECTOR : 18 * SECTOR]
    assert record[:7] == b"\x00CD001\x01"
    assert record[7:39] == b"EL TORITO SPECIFICATION".ljust(32, b"\0")
    catalog_lba = u32(record, 0x47)
    assert image[18 * SECTOR : 18 * SECTOR + 6] == b"\xffCD001"  # terminator after the boot record

    catalog = image[catalog_lba * SECTOR : (catalog_lba + 1) * SECTOR]
    validation, entry = catalog[:32], catalog[32:64]
    assert validation[0] == 1  # header id
    assert validation[1] == 0  # platform: x86
    assert validation[30:32] == b"\x55\xaa"
    assert sum(struct.unpack("<16H", validation)) & 0xFFFF == 0
    assert entry[0] == 0x88  # bootable
    assert entry[1] == 0  # no emulation
    assert struct.unpack_from("<H", entry, 6)[0] == 4  # sectors loaded
    boot_lba = u32(entry, 8)
    assert catalog[64:] == b"\0" * (SECTOR - 64)

    # The catalog points at isolinux.bin.
    boot = image[boot_lba * SECTOR : boot_lba * SECTOR + len(BOOT)]
    assert boot[:8] == BOOT[:8] and boot[64:] == BOOT[64:]


def test_boot_info_table_values_and_checksum() -> None:
    image = build()
    catalog_lba = u32(image, 17 * SECTOR + 0x47)
    boot_lba = u32(image, catalog_lba * SECTOR + 32 + 8)
    boot = image[boot_lba * SECTOR : boot_lba * SECTOR + len(BOOT)]
    pvd_lba, file_lba, length, checksum = struct.unpack_from("<IIII", boot, 8)
    assert pvd_lba == 16
    assert file_lba == boot_lba
    assert length == len(BOOT)
    body = BOOT[64:] + b"\0" * (-len(BOOT) % 4)
    assert checksum == sum(struct.unpack(f"<{len(body) // 4}I", body)) & 0xFFFFFFFF
    assert boot[24:64] == b"\0" * 40


def test_boot_file_too_small_for_a_boot_info_table() -> None:
    writer = IsoWriter("BOOT", timestamp=STAMP)
    writer.add_file("isolinux/isolinux.bin", b"\xfa" * 63)
    writer.set_boot("isolinux/isolinux.bin")
    with pytest.raises(ValueError, match="too small"):
        writer.write()


# -- names ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, directory, expected",
    [
        ("hostname", False, "HOSTNAME."),
        ("ssh_host_ed25519_key", False, "SSH_HOST_ED25519_KEY."),
        ("isolinux.cfg", False, "ISOLINUX.CFG"),
        ("my-file.tar", False, "MY_FILE.TAR"),
        ("isolinux", True, "ISOLINUX"),
        ("x" * 30, True, "X" * 30),
        ("x" * 30, False, "X" * 30 + "."),
    ],
)
def test_iso_names(name: str, directory: bool, expected: str) -> None:
    assert iso_name(name, directory=directory) == expected


@pytest.mark.parametrize(
    "name, directory",
    [
        ("has space", False),
        ("two.dots.txt", False),
        ("ünïcode", False),
        ("x" * 31, False),
        ("x" * 31, True),
        ("dir.d", True),
        ("", False),
        ("semi;1", False),
        ("name.\n", False),
        ("dir\n", True),
    ],
)
def test_bad_names_are_rejected(name: str, directory: bool) -> None:
    with pytest.raises(ValueError, match="ISO 9660 name"):
        iso_name(name, directory=directory)


def test_bad_paths_are_rejected_when_added() -> None:
    writer = IsoWriter("X")
    with pytest.raises(ValueError):
        writer.add_file("bad dir/file", b"")
    with pytest.raises(ValueError):
        writer.add_file("dir/bad name", b"")


@pytest.mark.parametrize("volume", ["", "pmconfig", "PM CONFIG", "X" * 33, "PMCONFIG\n", "PM-CONFIG"])
def test_bad_volume_ids_are_rejected(volume: str) -> None:
    with pytest.raises(ValueError, match="volume id"):
        IsoWriter(volume)


# -- cross-checks with independent readers ---------------------------------------------


def test_pycdlib_reads_the_image() -> None:
    pycdlib = pytest.importorskip("pycdlib")
    image = build()
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(image))
    try:
        assert iso.pvd.volume_identifier.strip() == b"PYMACHINE"
        for path, iso_path in [("a/b/c/deep.txt", "/A/B/C/DEEP.TXT;1"), ("a/b/sibling", "/A/B/SIBLING.;1"), ("many/file_089.dat", "/MANY/FILE_089.DAT;1")]:
            out = io.BytesIO()
            iso.get_file_from_iso_fp(out, iso_path=iso_path)
            assert out.getvalue() == files()[path]
        assert iso.eltorito_boot_catalog is not None
        assert iso.eltorito_boot_catalog.initial_entry.load_rba == u32(image, u32(image, 17 * SECTOR + 0x47) * SECTOR + 40)
        names = sorted(c.file_identifier() for c in iso.list_children(iso_path="/MANY"))
        assert len(names) == 92  # 90 files, "." and ".."
    finally:
        iso.close()


@pytest.mark.skipif(shutil.which("xorriso") is None, reason="xorriso is not installed")
def test_xorriso_agrees(tmp_path: Path) -> None:
    path = tmp_path / "boot.iso"
    path.write_bytes(build())
    done = subprocess.run(["xorriso", "-indev", str(path), "-report_el_torito", "plain", "-find", "/"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "Volume id    : 'PYMACHINE'" in done.stderr + done.stdout
    listing = done.stdout
    assert "'/A/B/C/DEEP.TXT'" in listing and "'/ISOLINUX/ISOLINUX.BIN'" in listing
    report = done.stdout + done.stderr
    assert "El Torito img path :   1  /ISOLINUX/ISOLINUX.BIN" in report
    assert "boot-info-table" in report


# -- the config medium ---------------------------------------------------------------


def test_config_medium_contents_and_size() -> None:
    pair = SSHKeyPair.generate("pymachine@dev")
    host = SSHKeyPair.generate("root@dev")
    image = config_medium("dev", pair.public_line + "\n\n", host.private_pem)
    assert VOLUME_ID == "PMCONFIG"
    assert volume_id(image[: 17 * SECTOR]) == "PMCONFIG"
    assert len(image) >= 64 * 1024  # busybox findfs ignores smaller devices
    assert len(image) == SIZE
    assert read_files(image) == {
        "hostname": b"dev\n",
        "authorized_keys": pair.public_line.encode() + b"\n",
        "ssh_host_ed25519_key": host.private_pem,
    }


def test_config_medium_on_disk_is_0600(tmp_path: Path) -> None:
    host = SSHKeyPair.generate("root@dev")
    path = tmp_path / "config.iso"
    write_config_medium(path, "dev", "ssh-ed25519 AAAA test", host.private_pem)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_files(path.read_bytes())["ssh_host_ed25519_key"] == host.private_pem
    assert [p.name for p in tmp_path.iterdir()] == ["config.iso"]


# -- UEFI: the EFI system partition and shared extents ---------------------------------

KERNEL = os.urandom(3 * SECTOR + 5)  # random: found in the image only where it was put
INITRD = os.urandom(2 * SECTOR)


def esp(boot_file: str = "BOOTX64.EFI", min_size: int = 0, kernel: bytes = KERNEL) -> FatImage:
    image = FatImage("PYMACHINE", timestamp=STAMP, min_size=min_size)
    image.add_file(f"EFI/BOOT/{boot_file}", b"MZ" + b"\x90" * 3000)
    image.add_file("loader/loader.conf", b"timeout 0\ndefault pymachine.conf\n")
    image.add_file("loader/entries/pymachine.conf", b"title pymachine\nlinux /vmlinuz\ninitrd /initrd\noptions console=ttyS0\n")
    image.add_file("vmlinuz", kernel)
    image.add_file("initrd", INITRD)
    return image


def efi_iso(bios: bool = True, kernel_in_tree: str = "shared", fat: FatImage | None = None) -> bytes:
    """The boot ISO as the build makes it: isolinux beside the ESP, or the ESP alone.

    `kernel_in_tree`: how boot/vmlinuz and boot/initrd get into the ISO 9660 tree,
    "shared" with the ESP, "copied", or "none".
    """
    writer = IsoWriter("PYMACHINE", timestamp=STAMP)
    fat = fat or esp()
    if bios:
        writer.add_file("isolinux/isolinux.bin", BOOT)
        writer.add_file("isolinux/isolinux.cfg", b"default linux\n")
        writer.set_boot("isolinux/isolinux.bin")
    writer.add_fat_image("boot/esp.img", fat)
    if kernel_in_tree == "shared":
        writer.add_file_from_fat("boot/vmlinuz", fat, "vmlinuz")
        writer.add_file_from_fat("boot/initrd", fat, "initrd")
    elif kernel_in_tree == "copied":
        writer.add_file("boot/vmlinuz", KERNEL)
        writer.add_file("boot/initrd", INITRD)
    writer.set_efi_boot("boot/esp.img")
    return writer.write()


def test_bios_and_efi_entries_in_the_catalog() -> None:
    image = efi_iso()
    fat = esp()
    files = read_files(image)
    esp_lba = next(e.lba for e in boot_entries(image) if e.platform == PLATFORM_EFI)
    isolinux_lba = u32(image, u32(image, 17 * SECTOR + 0x47) * SECTOR + 40)
    assert boot_entries(image) == [
        BootEntry(PLATFORM_X86, isolinux_lba, 4, True, 0),
        BootEntry(PLATFORM_EFI, esp_lba, len(fat.write()) // 512, True, 0),
    ]
    assert image[esp_lba * SECTOR : esp_lba * SECTOR + fat.size] == fat.write() == files["boot/esp.img"]
    catalog = image[u32(image, 17 * SECTOR + 0x47) * SECTOR :][:SECTOR]
    validation, default, header, section = catalog[:32], catalog[32:64], catalog[64:96], catalog[96:128]
    assert validation[1] == 0 and sum(struct.unpack("<16H", validation)) & 0xFFFF == 0
    assert default[0] == 0x88 and u32(default, 8) == isolinux_lba
    assert header[0] == 0x91 and header[1] == 0xEF and struct.unpack_from("<H", header, 2)[0] == 1  # final section, one entry
    assert section[0] == 0x88 and section[1] == 0  # bootable, no emulation
    assert catalog[128:] == b"\0" * (SECTOR - 128)
    # isolinux still gets its boot info table.
    assert files["isolinux/isolinux.bin"][8:12] == struct.pack("<I", 16)


def test_efi_only_catalog_for_arm64() -> None:
    image = efi_iso(bios=False, fat=esp("BOOTAA64.EFI"))
    (entry,) = boot_entries(image)
    assert entry.platform == PLATFORM_EFI and entry.bootable
    catalog = image[u32(image, 17 * SECTOR + 0x47) * SECTOR :][:SECTOR]
    assert catalog[1] == 0xEF  # the validation entry names the platform of the default entry
    assert sum(struct.unpack("<16H", catalog[:32])) & 0xFFFF == 0
    assert catalog[64:] == b"\0" * (SECTOR - 64)
    assert efi_boot_arches(image) == {"arm64"}


def test_shared_files_read_back_from_the_iso_9660_tree() -> None:
    image = efi_iso()
    files = read_files(image)
    assert files["boot/vmlinuz"] == KERNEL
    assert files["boot/initrd"] == INITRD
    # The same bytes are the ESP's /vmlinuz: stored once.
    assert image.count(KERNEL) == 1
    fat = FatReader(files["boot/esp.img"]).files()
    assert fat["vmlinuz"] == KERNEL and fat["initrd"] == INITRD
    assert fat["loader/entries/pymachine.conf"].startswith(b"title pymachine")


def test_a_shared_file_costs_no_sectors() -> None:
    shared = efi_iso(kernel_in_tree="shared")
    assert len(shared) == len(efi_iso(kernel_in_tree="none"))
    # A plain copy, by contrast, costs the kernel's and the initrd's sectors again.
    copied = efi_iso(kernel_in_tree="copied")
    assert len(copied) - len(shared) == (4 + 2) * SECTOR  # 3 sectors and 5 bytes, 2 sectors
    assert copied.count(KERNEL) == 2 and shared.count(KERNEL) == 1


def test_the_efi_iso_is_reproducible() -> None:
    first = efi_iso()
    assert efi_iso() == first
    assert hashlib.sha256(first).digest() == hashlib.sha256(efi_iso()).digest()
    other_kernel = efi_iso(fat=esp(kernel=KERNEL[::-1]))
    assert other_kernel != first and len(other_kernel) == len(first)


def test_pycdlib_sees_both_entries_and_reads_the_shared_kernel() -> None:
    pycdlib = pytest.importorskip("pycdlib")
    image = efi_iso()
    entries = boot_entries(image)
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(image))
    try:
        catalog = iso.eltorito_boot_catalog
        assert catalog.validation_entry.platform_id == 0
        assert catalog.initial_entry.load_rba == entries[0].lba
        assert catalog.initial_entry.sector_count == 4
        (section,) = catalog.sections
        assert section.platform_id == 0xEF
        (efi_entry,) = section.section_entries
        assert efi_entry.load_rba == entries[1].lba
        assert efi_entry.sector_count == esp().size // 512
        for iso_path, expected in [("/BOOT/VMLINUZ.;1", KERNEL), ("/BOOT/INITRD.;1", INITRD), ("/BOOT/ESP.IMG;1", esp().write())]:
            out = io.BytesIO()
            iso.get_file_from_iso_fp(out, iso_path=iso_path)
            assert out.getvalue() == expected
        record = iso.get_record(iso_path="/BOOT/VMLINUZ.;1")
        assert entries[1].lba < record.extent_location() < entries[1].lba + esp().size // SECTOR
    finally:
        iso.close()


def test_pycdlib_reads_the_efi_only_catalog() -> None:
    pycdlib = pytest.importorskip("pycdlib")
    image = efi_iso(bios=False, fat=esp("BOOTAA64.EFI"))
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(image))
    try:
        catalog = iso.eltorito_boot_catalog
        assert catalog.validation_entry.platform_id == 0xEF
        assert catalog.initial_entry.load_rba == boot_entries(image)[0].lba
        assert catalog.sections == []
    finally:
        iso.close()


@pytest.mark.skipif(shutil.which("mdir") is None or shutil.which("fsck.fat") is None, reason="mtools and dosfstools are not installed: scripts/setup.sh installs them")
def test_mtools_and_fsck_read_the_esp_where_the_catalog_points(tmp_path: Path) -> None:
    image = efi_iso()
    path = tmp_path / "boot.iso"
    path.write_bytes(image)
    lba = boot_entries(image)[1].lba
    env = {**os.environ, "LC_ALL": "C.UTF-8"}
    done = subprocess.run(["mtype", "-i", f"{path}@@{lba * SECTOR}", "::/loader/entries/pymachine.conf"], capture_output=True, env=env, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(b"title pymachine")
    out = tmp_path / "vmlinuz"
    subprocess.run(["mcopy", "-i", f"{path}@@{lba * SECTOR}", "::/vmlinuz", str(out)], check=True, env=env, timeout=30)
    assert out.read_bytes() == KERNEL
    part = tmp_path / "esp.img"
    part.write_bytes(image[lba * SECTOR : lba * SECTOR + esp().size])
    assert subprocess.run(["fsck.fat", "-n", str(part)], capture_output=True, timeout=30, check=False).returncode == 0


@pytest.mark.parametrize("size, count", [(512, 1), (14_389_248, 28_104), (0xFFFF * 512, 0xFFFF), (0xFFFF * 512 + 1, 0), (40 << 20, 0)])
def test_efi_load_sectors(size: int, count: int) -> None:
    assert efi_load_sectors(size) == count


def test_an_esp_over_32_mib_gets_count_zero() -> None:
    """edk2 reads 0 as "to the end of the medium"; 16 bits cannot hold the true count."""
    fat = esp("BOOTAA64.EFI", min_size=33 << 20)
    image = efi_iso(bios=False, fat=fat)
    (entry,) = boot_entries(image)
    assert fat.size > 0xFFFF * 512
    assert entry.sectors == 0
    assert read_files(image)["boot/vmlinuz"] == KERNEL
    assert efi_boot_arches(image) == {"arm64"}


def test_efi_boot_arches_from_bytes_and_from_a_path(tmp_path: Path) -> None:
    amd64 = efi_iso()
    path = tmp_path / "amd64.iso"
    path.write_bytes(amd64)
    assert efi_boot_arches(amd64) == {"amd64"}
    assert efi_boot_arches(path) == {"amd64"}
    assert efi_boot_arches(str(path)) == {"amd64"}
    assert efi_boot_arches(efi_iso(bios=False, fat=esp("BOOTAA64.EFI"))) == {"arm64"}
    # A lower-case name is the same file to firmware (FAT ignores case).
    assert efi_boot_arches(efi_iso(fat=esp("bootaa64.efi"))) == {"arm64"}
    # No EFI entry, or an EFI entry without a boot file the firmware would look for.
    assert efi_boot_arches(build()) == set()
    assert efi_boot_arches(build(volume="PMCONFIG", boot=False)) == set()
    assert efi_boot_arches(efi_iso(fat=esp("BOOTIA32.EFI"))) == set()
    writer = IsoWriter("NOTFAT", timestamp=STAMP)
    writer.add_file("boot/esp.img", b"not a FAT image" * 100)
    writer.set_efi_boot("boot/esp.img")
    assert efi_boot_arches(writer.write()) == set()


def test_boot_entries_of_a_bios_image_and_of_a_plain_one() -> None:
    image = build()
    (entry,) = boot_entries(image)
    assert entry == BootEntry(PLATFORM_X86, entry.lba, 4, True, 0)
    assert boot_entries(build(boot=False)) == []


def test_a_shared_file_needs_its_fat_image_in_the_iso() -> None:
    writer = IsoWriter("X", timestamp=STAMP)
    writer.add_file_from_fat("boot/vmlinuz", esp(), "vmlinuz")
    with pytest.raises(ValueError, match="add_fat_image"):
        writer.write()
    writer = IsoWriter("X", timestamp=STAMP)
    fat = esp()
    writer.add_fat_image("boot/esp.img", fat)
    writer.add_file_from_fat("boot/missing", fat, "no-such-file")
    with pytest.raises(KeyError, match="no-such-file"):
        writer.write()


# -- bytes pinned ----------------------------------------------------------------------


def test_bytes_are_pinned_for_the_bios_boot_image_and_a_plain_medium() -> None:
    """Images written before EFI support existed must keep their exact bytes.

    A released boot image is checked against its manifest's sha256, and a machine's
    config medium is compared byte for byte: a writer change that moves one byte of an
    image that uses no new feature is a regression, not a refactor.
    """
    assert hashlib.sha256(build()).hexdigest() == "0f5820c5f05c3b70e46769dcd41d85491a8da254f3dca04de40df15880048f1c"
    medium = build(volume="PMCONFIG", boot=False, min_size=1 << 20)
    assert hashlib.sha256(medium).hexdigest() == "dc4bcacc50d46a3a6428c99b8917307e06ddc8fcb544799cc11e7dac7196e7ef"
