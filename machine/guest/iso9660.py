"""A small, deterministic ISO 9660 writer with optional El Torito (isolinux) boot.

pymachine writes two kinds of ISO: the boot image (kernel, initrd, isolinux) and each
machine's config medium (hostname and keys). Every hypervisor we drive can attach an
ISO as a CD, which is why both are ISOs. The writer is ours because the same inputs
must give the same bytes: every date is the `timestamp` given, entries are sorted, and
nothing depends on the host.

Names are ISO 9660 level 2 (A-Z, 0-9, '_', '.', up to 30 characters); Linux shows them
lower-cased with the ';1' version removed. No Rock Ridge, no Joliet: not needed here.
"""

from __future__ import annotations

import io
import re
import struct
import time
from dataclasses import dataclass, field
from pathlib import PurePosixPath

SECTOR = 2048
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

    def add_file(self, path: str, data: bytes) -> None:
        """Add a file at `path` ("isolinux/isolinux.bin"); directories are made as needed."""
        parts = PurePosixPath(path).parts
        directory = self.root
        for part in parts[:-1]:
            key = iso_name(part, directory=True)
            directory = directory.dirs.setdefault(key, _Dir(key, directory))
        directory.files[iso_name(parts[-1])] = _File(bytes(data))

    def set_boot(self, path: str, load_sectors: int = 4) -> None:
        """Boot with El Torito, no emulation, from the file at `path` (isolinux.bin).

        The file gets an isolinux boot info table, patched in when the image is written.
        """
        self._boot = (path, load_sectors)

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
            entries.append((name, self._record(ident, entry.lba, len(entry.data), False)))
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
        # Sizes of directory extents do not depend on LBAs, so lay them out first.
        for d in dirs:
            d.size = _sectors(len(self._dir_records(d))) * SECTOR
        path_table_size = len(self._path_table(dirs, False))
        pt_sectors = _sectors(path_table_size)

        lba = 16
        pvd_lba = lba
        lba += 1
        if self._boot:
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
        if self._boot:
            catalog_lba = lba
            lba += 1
        files_in_order: list[_File] = []
        for d in dirs:
            for name in sorted(d.files):
                entry = d.files[name]
                entry.lba = lba
                files_in_order.append(entry)
                lba += max(1, _sectors(len(entry.data)))
        total = max(lba, _sectors(min_size))

        boot_file = self._lookup(self._boot[0]) if self._boot else None

        image = io.BytesIO()
        image.write(b"\x00" * SECTOR * 16)
        image.write(self._pvd(total, path_table_size, l_table_lba, m_table_lba, dirs[0]))
        if self._boot:
            image.write(_boot_record(catalog_lba))
        image.write(_terminator())
        image.write(_pad(self._path_table(dirs, False), pt_sectors * SECTOR, b"\x00"))
        image.write(_pad(self._path_table(dirs, True), pt_sectors * SECTOR, b"\x00"))
        for d in dirs:
            image.write(_pad(self._dir_records(d), d.size, b"\x00"))
        if self._boot:
            image.write(_boot_catalog(boot_file.lba, self._boot[1]))
        for entry in files_in_order:
            content = entry.data
            if entry is boot_file:
                content = _boot_info_table(content, pvd_lba, entry.lba)
            image.write(_pad(content, max(1, _sectors(len(content))) * SECTOR, b"\x00"))
        image.write(b"\x00" * SECTOR * (total - lba))
        result = image.getvalue()
        assert len(result) == total * SECTOR
        return result

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


def _boot_catalog(boot_lba: int, load_sectors: int) -> bytes:
    validation = bytearray(32)
    validation[0] = 1  # header
    validation[1] = 0  # x86
    validation[30:32] = b"\x55\xaa"
    checksum = (-sum(struct.unpack("<16H", bytes(validation)))) & 0xFFFF
    validation[28:30] = struct.pack("<H", checksum)
    entry = bytearray(32)
    entry[0] = 0x88  # bootable
    entry[1] = 0  # no emulation
    entry[6:8] = struct.pack("<H", load_sectors)
    entry[8:12] = struct.pack("<I", boot_lba)
    return _pad(bytes(validation + entry), SECTOR, b"\x00")


def _boot_info_table(data: bytes, pvd_lba: int, file_lba: int) -> bytes:
    """isolinux.bin with its boot info table (bytes 8-63) filled in, as mkisofs would."""
    if len(data) < 64:
        raise ValueError("boot file too small for a boot info table")
    body = data[64:] + b"\x00" * (-len(data) % 4)
    checksum = sum(struct.unpack(f"<{len(body) // 4}I", body)) & 0xFFFFFFFF
    table = struct.pack("<IIII", pvd_lba, file_lba, len(data), checksum) + b"\x00" * 40
    return data[:8] + table + data[64:]


def read_files(image: bytes) -> dict[str, bytes]:
    """Every file in an image written by IsoWriter, keyed by lower-case path (for tests and checks)."""
    pvd = image[16 * SECTOR : 17 * SECTOR]
    if pvd[1:6] != b"CD001":
        raise ValueError("not an ISO 9660 image")
    out: dict[str, bytes] = {}

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
                flba = struct.unpack("<I", rec[2:6])[0]
                fsize = struct.unpack("<I", rec[10:14])[0]
                out[prefix + name] = image[flba * SECTOR : flba * SECTOR + fsize]

    walk(pvd[156:190], "")
    return out


def volume_id(image_head: bytes) -> str:
    """The volume id of an ISO image, from its first 17 sectors."""
    return image_head[16 * SECTOR + 40 : 16 * SECTOR + 72].decode(errors="replace").strip()
