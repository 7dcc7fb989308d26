"""A small, deterministic ISO 9660 writer with El Torito boot: BIOS (isolinux), UEFI, or both.

pymachine writes two kinds of ISO: the boot image (kernel, initrd, boot loaders) and each
machine's config medium (hostname and keys). Every hypervisor we drive can attach an
ISO as a CD, which is why both are ISOs. The writer is ours because the same inputs
must give the same bytes: every date is the `timestamp` given, entries are sorted, and
nothing depends on the host.

UEFI firmware boots a CD from a FAT image, the EFI system partition, named by an El
Torito entry of platform 0xEF. `add_fat_image` puts a `FatImage` into the ISO as a file,
`set_efi_boot` names it, and `add_file_from_fat` makes ISO 9660 files whose extents are
files inside it: isolinux reads boot/vmlinuz from the ISO tree, systemd-boot reads
/vmlinuz from the FAT, and both are the same sectors, stored once.

Names are ISO 9660 level 2 (A-Z, 0-9, '_', '.', up to 30 characters); Linux shows them
lower-cased with the ';1' version removed. No Rock Ridge, no Joliet: not needed here.
"""

from __future__ import annotations

import io
import re
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from pymachine.arch import AMD64, ARM64
from pymachine.guest.fat import FatExtent, FatImage, FatReader

SECTOR = 2048
#: El Torito platform ids.
PLATFORM_X86 = 0x00
PLATFORM_EFI = 0xEF
#: The removable-media boot file UEFI firmware looks for, per architecture.
EFI_BOOT_FILES = {"BOOTX64.EFI": AMD64, "BOOTAA64.EFI": ARM64}
# \Z, not $: "$" also matches before a trailing newline.
_NAME_OK = re.compile(r"^[A-Z0-9_]{1,30}\Z|^[A-Z0-9_]*\.[A-Z0-9_]*\Z")


def _both16(value: int) -> bytes:
    return struct.pack("<H", value) + struct.pack(">H", value)


def _both32(value: int) -> bytes:
    return struct.pack("<I", value) + struct.pack(">I", value)


def _pad(data: bytes, size: int, fill: bytes = b" ") -> bytes:
    if len(data) > size:
        raise ValueError(f"{data!r} is longer than {size} bytes")
    return data + fill * (size - len(data))


def _sectors(length: int) -> int:
    return (length + SECTOR - 1) // SECTOR


def iso_name(name: str, directory: bool = False) -> str:
    """The ISO 9660 level 2 form of a file or directory name."""
    upper = name.upper().replace("-", "_")
    if not directory and "." not in upper:
        upper += "."
    if not name or len(upper) > 31 or not _NAME_OK.match(upper) or (directory and "." in upper):
        raise ValueError(f"'{name}' cannot be an ISO 9660 name (use letters, digits and '_', up to 30 characters)")
    return upper


@dataclass
class _File:
    data: bytes
    lba: int = 0
    #: The FAT image this file is (its bytes are written when the ISO is).
    fat: FatImage | None = None
    #: (the FAT image, a path in it): this file is that file's data, not data of its own.
    shared: tuple[FatImage, str] | None = None
    size: int = -1

    def __post_init__(self) -> None:
        if self.size < 0:
            self.size = len(self.data)


@dataclass
class _Dir:
    name: str
    parent: _Dir | None
    dirs: dict[str, _Dir] = field(default_factory=dict)
    files: dict[str, _File] = field(default_factory=dict)
    lba: int = 0
    size: int = 0
    number: int = 0


class IsoWriter:
    """Collects files, then writes one ISO image with `write()`."""

    def __init__(self, volume_id: str, timestamp: float | None = None) -> None:
        if not re.match(r"^[A-Z0-9_]{1,32}\Z", volume_id):
            raise ValueError("volume id must be 1-32 characters of A-Z, 0-9 and '_'")
        self.volume_id = volume_id
        self.timestamp = time.time() if timestamp is None else timestamp
        self.root = _Dir("", None)
        self._boot: tuple[str, int] | None = None
        self._efi_boot: str | None = None

    def add_file(self, path: str, data: bytes) -> None:
        """Add a file at `path` ("isolinux/isolinux.bin"); directories are made as needed."""
        self._put(path, _File(bytes(data)))

    def add_fat_image(self, path: str, fat: FatImage) -> None:
        """Add a FAT image as the file at `path`; it is written (`fat.write()`) with the ISO.

        Its files can then also appear in the ISO 9660 tree, through `add_file_from_fat`.
        """
        self._put(path, _File(b"", fat=fat))

    def add_file_from_fat(self, path: str, fat: FatImage, fat_path: str) -> None:
        """Add a file at `path` whose data is the file `fat_path` inside `fat`: no copy.

        `fat` must be in this ISO too (`add_fat_image`). Its files start on 2048-byte
        boundaries, so the ISO 9660 entry points straight at their sectors.
        """
        self._put(path, _File(b"", shared=(fat, fat_path)))

    def _put(self, path: str, entry: _File) -> None:
        parts = PurePosixPath(path).parts
        directory = self.root
        for part in parts[:-1]:
            key = iso_name(part, directory=True)
            directory = directory.dirs.setdefault(key, _Dir(key, directory))
        directory.files[iso_name(parts[-1])] = entry

    def set_boot(self, path: str, load_sectors: int = 4) -> None:
        """Boot BIOSes with El Torito, no emulation, from the file at `path` (isolinux.bin).

        The file gets an isolinux boot info table, patched in when the image is written.
        """
        self._boot = (path, load_sectors)

    def set_efi_boot(self, path: str) -> None:
        """Boot UEFI firmware from the FAT image at `path` (an EFI system partition).

        With `set_boot` too, the catalog has the BIOS entry first and this one in a
        section of platform 0xEF; without, this is the only entry.
        """
        self._efi_boot = path

    # -- layout --------------------------------------------------------------------

    def _walk(self) -> list[_Dir]:
        """Directories in path-table order: by depth, then parent number, then name."""
        ordered = [self.root]
        self.root.number = 1
        index = 0
        while index < len(ordered):
            current = ordered[index]
            for name in sorted(current.dirs):
                child = current.dirs[name]
                ordered.append(child)
                child.number = len(ordered)
            index += 1
        return ordered

    def _dir_records(self, directory: _Dir) -> bytes:
        records = [
            self._record(b"\x00", directory.lba, directory.size, True),
            self._record(b"\x01", (directory.parent or directory).lba, (directory.parent or directory).size, True),
        ]
        entries: list[tuple[str, bytes]] = []
        for name, child in directory.dirs.items():
            entries.append((name, self._record(name.encode(), child.lba, child.size, True)))
        for name, entry in directory.files.items():
            ident = (name + ";1").encode()
            entries.append((name, self._record(ident, entry.lba, entry.size, False)))
        for _, record in sorted(entries):
            records.append(record)
        out = bytearray()
        for record in records:
            used = len(out) % SECTOR
            if used + len(record) > SECTOR:
                out += b"\x00" * (SECTOR - used)
            out += record
        return bytes(out)

    def _record(self, ident: bytes, lba: int, size: int, is_dir: bool) -> bytes:
        length = 33 + len(ident) + (1 if len(ident) % 2 == 0 else 0)
        record = bytearray()
        record += bytes([length, 0])
        record += _both32(lba)
        record += _both32(size)
        record += self._record_date()
        record += bytes([2 if is_dir else 0, 0, 0])
        record += _both16(1)
        record += bytes([len(ident)]) + ident
        if len(ident) % 2 == 0:
            record += b"\x00"
        return bytes(record)

    def _record_date(self) -> bytes:
        t = time.gmtime(self.timestamp)
        return bytes([t.tm_year - 1900, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec, 0])

    def _volume_date(self) -> bytes:
        return time.strftime("%Y%m%d%H%M%S00", time.gmtime(self.timestamp)).encode() + b"\x00"

    def _path_table(self, dirs: list[_Dir], big_endian: bool) -> bytes:
        fmt32 = ">I" if big_endian else "<I"
        fmt16 = ">H" if big_endian else "<H"
        out = bytearray()
        for d in dirs:
            ident = d.name.encode() if d.parent else b"\x00"
            out += bytes([len(ident), 0])
            out += struct.pack(fmt32, d.lba)
            out += struct.pack(fmt16, (d.parent or d).number)
            out += ident
            if len(ident) % 2:
                out += b"\x00"
        return bytes(out)

    def write(self, min_size: int = 0) -> bytes:
        """The whole image, padded with zeros to at least `min_size` bytes.

        Padding matters for tiny images: busybox's findfs ignores devices under 64 KiB.
        """
        dirs = self._walk()
        shared = self._prepare_fat_images(dirs)
        # Sizes of directory extents do not depend on LBAs, so lay them out first.
        for d in dirs:
            d.size = _sectors(len(self._dir_records(d))) * SECTOR
        path_table_size = len(self._path_table(dirs, False))
        pt_sectors = _sectors(path_table_size)

        lba = 16
        pvd_lba = lba
        lba += 1
        booting = bool(self._boot or self._efi_boot)
        if booting:
            lba += 1  # the El Torito boot record, right after the primary descriptor
        lba += 1  # terminator
        l_table_lba = lba
        lba += pt_sectors
        m_table_lba = lba
        lba += pt_sectors
        for d in dirs:
            d.lba = lba
            lba += d.size // SECTOR
        catalog_lba = None
        if booting:
            catalog_lba = lba
            lba += 1
        files_in_order: list[_File] = []
        for d in dirs:
            for name in sorted(d.files):
                entry = d.files[name]
                if entry.shared:
                    continue
                entry.lba = lba
                files_in_order.append(entry)
                lba += max(1, _sectors(len(entry.data)))
        for entry, image_file, extent in shared:
            entry.lba = image_file.lba + extent.offset // SECTOR
            entry.size = extent.length
        total = max(lba, _sectors(min_size))

        boot_file = self._lookup(self._boot[0]) if self._boot else None
        catalog_entries = []
        if boot_file is not None:
            catalog_entries.append((PLATFORM_X86, boot_file.lba, self._boot[1]))
        if self._efi_boot:
            esp = self._lookup(self._efi_boot)
            catalog_entries.append((PLATFORM_EFI, esp.lba, efi_load_sectors(esp.size)))

        image = io.BytesIO()
        image.write(b"\x00" * SECTOR * 16)
        image.write(self._pvd(total, path_table_size, l_table_lba, m_table_lba, dirs[0]))
        if booting:
            image.write(_boot_record(catalog_lba))
        image.write(_terminator())
        image.write(_pad(self._path_table(dirs, False), pt_sectors * SECTOR, b"\x00"))
        image.write(_pad(self._path_table(dirs, True), pt_sectors * SECTOR, b"\x00"))
        for d in dirs:
            image.write(_pad(self._dir_records(d), d.size, b"\x00"))
        if booting:
            image.write(_boot_catalog(catalog_entries))
        for entry in files_in_order:
            content = entry.data
            if entry is boot_file:
                content = _boot_info_table(content, pvd_lba, entry.lba)
            image.write(_pad(content, max(1, _sectors(len(content))) * SECTOR, b"\x00"))
        image.write(b"\x00" * SECTOR * (total - lba))
        result = image.getvalue()
        assert len(result) == total * SECTOR
        return result

    def _prepare_fat_images(self, dirs: list[_Dir]) -> list[tuple[_File, _File, FatExtent]]:
        """Write each FAT image's bytes; pair each shared file with its image and extent."""
        holders: dict[int, _File] = {}
        for d in dirs:
            for entry in d.files.values():
                if entry.fat is not None:
                    entry.data = entry.fat.write()
                    entry.size = len(entry.data)
                    holders[id(entry.fat)] = entry
        shared = []
        for d in dirs:
            for name, entry in d.files.items():
                if entry.shared is None:
                    continue
                fat, fat_path = entry.shared
                if id(fat) not in holders:
                    raise ValueError(f"{name} comes from a FAT image that is not in the ISO: add it with add_fat_image first")
                shared.append((entry, holders[id(fat)], fat.extent(fat_path)))
        return shared

    def _lookup(self, path: str) -> _File:
        parts = PurePosixPath(path).parts
        directory = self.root
        for part in parts[:-1]:
            directory = directory.dirs[iso_name(part, directory=True)]
        return directory.files[iso_name(parts[-1])]

    def _pvd(self, total: int, pt_size: int, l_lba: int, m_lba: int, root: _Dir) -> bytes:
        date = self._volume_date()
        pvd = bytearray()
        pvd += b"\x01CD001\x01\x00"
        pvd += _pad(b"LINUX", 32)
        pvd += _pad(self.volume_id.encode(), 32)
        pvd += b"\x00" * 8
        pvd += _both32(total)
        pvd += b"\x00" * 32
        pvd += _both16(1) + _both16(1) + _both16(SECTOR)
        pvd += _both32(pt_size)
        pvd += struct.pack("<I", l_lba) + struct.pack("<I", 0)
        pvd += struct.pack(">I", m_lba) + struct.pack(">I", 0)
        pvd += self._record(b"\x00", root.lba, root.size, True)
        pvd += _pad(b"", 128)  # volume set
        pvd += _pad(b"", 128)  # publisher
        pvd += _pad(b"", 128)  # preparer
        pvd += _pad(b"PYMACHINE", 128)
        pvd += _pad(b"", 37) * 3
        pvd += date + date + b"0" * 16 + b"\x00" + date
        pvd += b"\x01\x00"
        return _pad(bytes(pvd), SECTOR, b"\x00")


def _boot_record(catalog_lba: int) -> bytes:
    record = b"\x00CD001\x01" + _pad(b"EL TORITO SPECIFICATION", 32, b"\x00") + b"\x00" * 32
    record += struct.pack("<I", catalog_lba)
    return _pad(record, SECTOR, b"\x00")


def _terminator() -> bytes:
    return _pad(b"\xffCD001\x01", SECTOR, b"\x00")


def efi_load_sectors(size: int) -> int:
    """The El Torito sector count for an EFI system partition of `size` bytes.

    The specification counts 512-byte sectors in 16 bits: 32 MiB at most, and an arm64
    ESP (its kernel alone is 37 MB) is bigger. edk2, the firmware of OVMF, AAVMF and
    VirtualBox, reads a count below 2 as "from the image to the end of the medium" (the
    FAT inside bounds itself), and any other count as 2048-byte CD sectors, so a true
    count gives a partition larger than the image, never smaller. A count cut to 16 bits
    gives one too small, and AAVMF then finds nothing to boot. So: the true count when it
    fits, as the specification wants, else 0.
    """
    count = -(-size // 512)
    return count if count <= 0xFFFF else 0


def _boot_catalog(entries: list[tuple[int, int, int]]) -> bytes:
    """The catalog: (platform, lba, sectors) of the default entry, then one section each."""
    validation = bytearray(32)
    validation[0] = 1  # header
    validation[1] = entries[0][0]
    validation[30:32] = b"\x55\xaa"
    checksum = (-sum(struct.unpack("<16H", bytes(validation)))) & 0xFFFF
    validation[28:30] = struct.pack("<H", checksum)
    catalog = bytes(validation) + _catalog_entry(entries[0][1], entries[0][2])
    for index, (platform, lba, sectors) in enumerate(entries[1:], 2):
        header = bytearray(32)
        header[0] = 0x91 if index == len(entries) else 0x90  # final section, or more to come
        header[1] = platform
        header[2:4] = struct.pack("<H", 1)
        catalog += bytes(header) + _catalog_entry(lba, sectors)
    return _pad(catalog, SECTOR, b"\x00")


def _catalog_entry(lba: int, sectors: int) -> bytes:
    entry = bytearray(32)
    entry[0] = 0x88  # bootable
    entry[1] = 0  # no emulation
    entry[6:8] = struct.pack("<H", sectors)
    entry[8:12] = struct.pack("<I", lba)
    return bytes(entry)


def _boot_info_table(data: bytes, pvd_lba: int, file_lba: int) -> bytes:
    """isolinux.bin with its boot info table (bytes 8-63) filled in, as mkisofs would."""
    if len(data) < 64:
        raise ValueError("boot file too small for a boot info table")
    body = data[64:] + b"\x00" * (-len(data) % 4)
    checksum = sum(struct.unpack(f"<{len(body) // 4}I", body)) & 0xFFFFFFFF
    table = struct.pack("<IIII", pvd_lba, file_lba, len(data), checksum) + b"\x00" * 40
    return data[:8] + table + data[64:]


def _entries(image) -> dict[str, tuple[int, int]]:
    """path (lower case) -> (first sector, size) of every file of an ISO 9660 image."""
    pvd = image[16 * SECTOR : 17 * SECTOR]
    if pvd[1:6] != b"CD001":
        raise ValueError("not an ISO 9660 image")
    out: dict[str, tuple[int, int]] = {}

    def walk(record: bytes, prefix: str) -> None:
        lba = struct.unpack("<I", record[2:6])[0]
        size = struct.unpack("<I", record[10:14])[0]
        extent = image[lba * SECTOR : lba * SECTOR + size]
        pos = 0
        while pos < len(extent):
            length = extent[pos]
            if length == 0:
                pos = (pos // SECTOR + 1) * SECTOR
                continue
            rec = extent[pos : pos + length]
            ident = rec[33 : 33 + rec[32]]
            pos += length
            if ident in (b"\x00", b"\x01"):
                continue
            name = ident.decode().split(";")[0].rstrip(".").lower()
            if rec[25] & 2:
                walk(rec, f"{prefix}{name}/")
            else:
                out[prefix + name] = (struct.unpack("<I", rec[2:6])[0], struct.unpack("<I", rec[10:14])[0])

    walk(pvd[156:190], "")
    return out


def read_files(image: bytes) -> dict[str, bytes]:
    """Every file in an image written by IsoWriter, keyed by lower-case path (for tests and checks)."""
    return {path: image[lba * SECTOR : lba * SECTOR + size] for path, (lba, size) in _entries(image).items()}


def read_file(iso: Path, path: str) -> bytes:
    """One file of the ISO at `iso`, read without loading the rest (KeyError if absent)."""
    import mmap

    with open(iso, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as image:
        lba, size = _entries(image)[path.lower()]
        return bytes(image[lba * SECTOR : lba * SECTOR + size])


def volume_id(image_head: bytes) -> str:
    """The volume id of an ISO image, from its first 17 sectors."""
    return image_head[16 * SECTOR + 40 : 16 * SECTOR + 72].decode(errors="replace").strip()


# -- El Torito, read back ---------------------------------------------------------------


@dataclass(frozen=True)
class BootEntry:
    """One El Torito boot entry of an ISO image."""

    platform: int  # PLATFORM_X86 (BIOS) or PLATFORM_EFI
    lba: int  # the 2048-byte sector where the boot file (or the EFI system partition) starts
    sectors: int  # the catalog's count of 512-byte sectors (0: to the end, see efi_load_sectors)
    bootable: bool
    media: int  # 0: no emulation


def boot_entries(image) -> list[BootEntry]:
    """The El Torito entries of an ISO image, the default entry first; [] if it has none.

    `image` is the image's bytes (or anything that slices into bytes, like a memoryview).
    """
    catalog_lba = None
    for number in range(16, 16 + 64):
        descriptor = bytes(image[number * SECTOR : number * SECTOR + 0x4B])
        if len(descriptor) < 0x4B or descriptor[1:6] != b"CD001" or descriptor[0] == 0xFF:
            break
        if descriptor[0] == 0 and descriptor[7:30] == b"EL TORITO SPECIFICATION":
            catalog_lba = struct.unpack_from("<I", descriptor, 0x47)[0]
            break
    if catalog_lba is None:
        return []
    catalog = bytes(image[catalog_lba * SECTOR : (catalog_lba + 1) * SECTOR])
    if len(catalog) < 64 or catalog[0] != 1 or catalog[30:32] != b"\x55\xaa":
        return []

    def entry(at: int, platform: int) -> BootEntry:
        sectors, lba = struct.unpack_from("<HI", catalog, at + 6)
        return BootEntry(platform, lba, sectors, catalog[at] == 0x88, catalog[at + 1] & 0x0F)

    found = [entry(32, catalog[1])]
    at = 64
    while at + 32 <= len(catalog) and catalog[at] in (0x90, 0x91):
        platform, count = catalog[at + 1], struct.unpack_from("<H", catalog, at + 2)[0]
        final = catalog[at] == 0x91
        at += 32
        while count and at + 32 <= len(catalog):
            if catalog[at] == 0x44:  # an extension of the entry before
                at += 32
                continue
            found.append(entry(at, platform))
            count -= 1
            at += 32
        if final:
            break
    return found


def efi_boot_arches(source) -> set[str]:
    """The architectures ("amd64", "arm64") whose UEFI firmware can boot this ISO image.

    `source` is the image's bytes or a path to it. Each EFI entry's FAT image is read for
    the removable-media boot file firmware looks for: /EFI/BOOT/BOOTX64.EFI boots amd64,
    /EFI/BOOT/BOOTAA64.EFI arm64. An ISO without EFI entries gives an empty set (it may
    still boot by BIOS: see boot_entries). From a path, only the volume descriptors, the
    catalog and the FAT's own tables and directories are read, not its files.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _efi_arches(memoryview(source))
    with open(source, "rb") as file:
        return _efi_arches(_FileBytes(file))


def _efi_arches(image) -> set[str]:
    arches: set[str] = set()
    for entry in boot_entries(image):
        if entry.platform != PLATFORM_EFI or not entry.bootable:
            continue
        try:
            reader = FatReader(_Offset(image, entry.lba * SECTOR))
            names = {e.path.upper() for e in reader.entries()}
        except (ValueError, struct.error):
            continue  # not a FAT image: no firmware boots it either
        for name, arch in EFI_BOOT_FILES.items():
            if f"EFI/BOOT/{name}" in names:
                arches.add(arch)
    return arches


class _FileBytes:
    """An open file that slices like bytes, reading only the slice asked for."""

    def __init__(self, file) -> None:
        self.file = file

    def __getitem__(self, key: slice) -> bytes:
        start = key.start or 0
        self.file.seek(start)
        return self.file.read(max(0, key.stop - start))


class _Offset:
    """A view of `image` from `offset` on, for slicing (a FAT image inside an ISO)."""

    def __init__(self, image, offset: int) -> None:
        self.image = image
        self.offset = offset

    def __getitem__(self, key: slice) -> bytes:
        return bytes(self.image[self.offset + (key.start or 0) : self.offset + key.stop])
