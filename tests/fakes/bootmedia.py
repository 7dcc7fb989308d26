"""What a firmware finds on a boot ISO: its El Torito entries and, for EFI, the FAT inside.

The fake hypervisors "boot" a VM only when the ISO it would boot from holds something
that VM's firmware can start, as the real firmwares do:

    x86 with BIOS firmware   a bootable El Torito entry for platform 0x00 (80x86)
    x86 with EFI firmware    an entry for platform 0xEF whose FAT holds \\EFI\\BOOT\\BOOTX64.EFI
    ARM (always EFI)         an entry for platform 0xEF whose FAT holds \\EFI\\BOOT\\BOOTAA64.EFI

Written from the specifications, not from any writer in this repository: ECMA-119 (the
ISO 9660 volume descriptors from sector 16, 2048-byte sectors), the El Torito Bootable
CD-ROM Format Specification 1.0 (the boot record volume descriptor naming the catalog;
a validation entry, a default entry, then section headers 0x90/0x91 each followed by
its section entries, all 32 bytes), the UEFI specification 2.x section 13.3 (removable
media boot from an El Torito entry of platform 0xEF holding a FAT image, default file
\\EFI\\BOOT\\BOOT{machine}.EFI) and Microsoft's FAT specification (the BPB, FAT12/16/32
told apart by cluster count, 8.3 and long-name directory entries).

Standard library only: the fake VBoxManage and prlctl import it with `python -S`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

SECTOR = 2048
VIRTUAL_SECTOR = 512
EL_TORITO = b"EL TORITO SPECIFICATION"
PLATFORM_X86 = 0x00
PLATFORM_EFI = 0xEF
BOOTABLE = 0x88
#: The removable-media file each EFI machine type starts (UEFI spec, 13.3.1.3).
EFI_DEFAULT_FILE = {"x64": "EFI/BOOT/BOOTX64.EFI", "aa64": "EFI/BOOT/BOOTAA64.EFI"}


class MediaError(Exception):
    """The image is not what it claims to be (truncated, no CD001, a broken catalog)."""


@dataclass(frozen=True)
class BootEntry:
    """One El Torito boot entry."""

    platform: int
    bootable: bool
    media_type: int
    sector_count: int  # in 512-byte virtual sectors; 0 or 1 often means "see the image"
    load_rba: int  # 2048-byte sector where the boot image starts


def boot_entries(path: Path | str) -> list[BootEntry]:
    """The El Torito entries of an ISO image; [] when it has no boot record."""
    with open(path, "rb") as handle:
        catalog_lba = _catalog_lba(handle)
        if catalog_lba is None:
            return []
        handle.seek(catalog_lba * SECTOR)
        catalog = handle.read(SECTOR)
    if len(catalog) < 64:
        raise MediaError("the boot catalog lies beyond the end of the image")
    return _parse_catalog(catalog)


def _catalog_lba(handle) -> int | None:  # noqa: ANN001 - a binary file
    sector = 16
    while True:
        handle.seek(sector * SECTOR)
        descriptor = handle.read(SECTOR)
        if len(descriptor) < 7 or descriptor[1:6] != b"CD001":
            if sector == 16:
                raise MediaError("no ISO 9660 volume descriptor at sector 16")
            return None
        kind = descriptor[0]
        if kind == 255:  # the set terminator
            return None
        if kind == 0 and descriptor[7:39].rstrip(b"\0") == EL_TORITO:
            return struct.unpack_from("<I", descriptor, 0x47)[0]
        sector += 1


def _parse_catalog(catalog: bytes) -> list[BootEntry]:
    validation = catalog[:32]
    if validation[0] != 0x01 or validation[30:32] != b"\x55\xaa":
        raise MediaError("the boot catalog has no validation entry")
    if sum(struct.unpack("<16H", validation)) & 0xFFFF:
        raise MediaError("the boot catalog's validation entry has a bad checksum")
    entries = [_entry(validation[1], catalog[32:64])]
    offset = 64
    while offset + 32 <= len(catalog):
        header = catalog[offset : offset + 32]
        if header[0] not in (0x90, 0x91):
            break
        platform = header[1]
        count = struct.unpack_from("<H", header, 2)[0]
        offset += 32
        taken = 0
        while taken < count and offset + 32 <= len(catalog):
            raw = catalog[offset : offset + 32]
            offset += 32
            if raw[0] == 0x44:  # a section entry extension belongs to the entry before
                continue
            entries.append(_entry(platform, raw))
            taken += 1
        if header[0] == 0x91:  # the final header
            break
    return entries


def _entry(platform: int, raw: bytes) -> BootEntry:
    sector_count, load_rba = struct.unpack_from("<HI", raw, 6)
    return BootEntry(platform, raw[0] == BOOTABLE, raw[1] & 0x0F, sector_count, load_rba)


# -- FAT --------------------------------------------------------------------------------


class FatImage:
    """A FAT12, FAT16 or FAT32 file system inside a larger file, read-only."""

    def __init__(self, path: Path | str, base: int) -> None:
        self.path = Path(path)
        self.base = base
        boot = self._read(0, 512)
        if len(boot) < 512:
            raise MediaError("the FAT image is truncated")
        (self.bytes_per_sector, self.sectors_per_cluster, reserved, fats, root_entries,
         total16, _media, fat16) = struct.unpack_from("<HBHBHHBH", boot, 11)  # fmt: skip
        if self.bytes_per_sector not in (512, 1024, 2048, 4096) or self.sectors_per_cluster == 0 or fats == 0:
            raise MediaError("no FAT boot sector (BPB) where the El Torito entry points")
        total = total16 or struct.unpack_from("<I", boot, 32)[0]
        fat_size = fat16 or struct.unpack_from("<I", boot, 36)[0]
        root_sectors = (root_entries * 32 + self.bytes_per_sector - 1) // self.bytes_per_sector
        self.fat_start = reserved
        self.root_start = reserved + fats * fat_size
        self.root_sectors = root_sectors
        self.data_start = self.root_start + root_sectors
        clusters = (total - self.data_start) // self.sectors_per_cluster
        # The FAT type follows from the cluster count alone (Microsoft's FAT spec, 3.5).
        self.bits = 12 if clusters < 4085 else 16 if clusters < 65525 else 32
        self.root_cluster = struct.unpack_from("<I", boot, 44)[0] if self.bits == 32 else 0

    def _read(self, offset: int, length: int) -> bytes:
        with open(self.path, "rb") as handle:
            handle.seek(self.base + offset)
            return handle.read(length)

    def _sector(self, number: int, count: int = 1) -> bytes:
        return self._read(number * self.bytes_per_sector, count * self.bytes_per_sector)

    def _next(self, cluster: int) -> int | None:
        if self.bits == 12:
            offset = cluster + cluster // 2
            pair = struct.unpack("<H", self._read(self.fat_start * self.bytes_per_sector + offset, 2))[0]
            value = pair >> 4 if cluster & 1 else pair & 0x0FFF
            end = 0xFF8
        elif self.bits == 16:
            value = struct.unpack("<H", self._read(self.fat_start * self.bytes_per_sector + cluster * 2, 2))[0]
            end = 0xFFF8
        else:
            value = struct.unpack("<I", self._read(self.fat_start * self.bytes_per_sector + cluster * 4, 4))[0] & 0x0FFFFFFF
            end = 0x0FFFFFF8
        return None if value >= end or value < 2 else value

    def _chain(self, first: int) -> bytes:
        data = b""
        cluster: int | None = first
        seen: set[int] = set()
        while cluster is not None and cluster not in seen:
            seen.add(cluster)
            data += self._sector(self.data_start + (cluster - 2) * self.sectors_per_cluster, self.sectors_per_cluster)
            cluster = self._next(cluster)
        return data

    def _entries(self, directory: bytes) -> list[tuple[str, str, int, int, bool]]:
        """(short name, long name, first cluster, size, is a directory) per entry."""
        found = []
        long_parts: list[tuple[int, str]] = []
        for offset in range(0, len(directory) - 31, 32):
            raw = directory[offset : offset + 32]
            if raw[0] == 0x00:
                break
            if raw[0] == 0xE5:
                long_parts = []
                continue
            attributes = raw[11]
            if attributes == 0x0F:  # a long-name piece, 13 UCS-2 characters
                chars = raw[1:11] + raw[14:26] + raw[28:32]
                text = chars.decode("utf-16-le", "replace").split("\0", 1)[0].replace("\uffff", "")
                long_parts.append((raw[0] & 0x1F, text))
                continue
            if attributes & 0x08:  # the volume label
                long_parts = []
                continue
            base, ext = raw[0:8].decode("ascii", "replace").rstrip(), raw[8:11].decode("ascii", "replace").rstrip()
            short = f"{base}.{ext}" if ext else base
            long_name = "".join(text for _, text in sorted(long_parts))
            long_parts = []
            first = struct.unpack_from("<H", raw, 26)[0] | (struct.unpack_from("<H", raw, 20)[0] << 16 if self.bits == 32 else 0)
            size = struct.unpack_from("<I", raw, 28)[0]
            found.append((short, long_name, first, size, bool(attributes & 0x10)))
        return found

    def find(self, path: str) -> int | None:
        """The size of the file at `path` ("EFI/BOOT/BOOTAA64.EFI"), None when it is not there.
        FAT names compare without regard to case."""
        directory = self._chain(self.root_cluster) if self.bits == 32 else self._sector(self.root_start, self.root_sectors)
        parts = [p for p in path.replace("\\", "/").split("/") if p]
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            match = next(
                (e for e in self._entries(directory) if part.upper() in (e[0].upper(), e[1].upper()) and e[4] != last),
                None,
            )
            if match is None:
                return None
            if last:
                return match[3]
            directory = self._chain(match[2])
        return None


def efi_files(path: Path | str, entry: BootEntry) -> FatImage:
    """The FAT file system an EFI boot entry points at."""
    return FatImage(path, entry.load_rba * SECTOR)


def boot_medium_kind(path: Path | str, firmware: str) -> str | None:
    """What `firmware` ("bios", "efi-x64" or "efi-aa64") would start from this ISO:
    "bios", or the EFI file's path; None when nothing on it boots with that firmware."""
    try:
        entries = boot_entries(path)
    except (OSError, MediaError, struct.error):
        return None
    for entry in entries:
        if firmware == "bios":
            if entry.platform == PLATFORM_X86 and entry.bootable:
                return "bios"
            continue
        if entry.platform != PLATFORM_EFI:
            continue
        wanted = EFI_DEFAULT_FILE[firmware.removeprefix("efi-")]
        try:
            size = efi_files(path, entry).find(wanted)
        except (OSError, MediaError, struct.error):
            continue
        if size:
            return "\\" + wanted.replace("/", "\\")
    return None
