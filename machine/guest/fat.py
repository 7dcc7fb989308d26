"""A small, deterministic FAT filesystem writer (and reader), for EFI system partitions.

UEFI firmware boots a CD through an El Torito entry that points at a FAT image, the EFI
system partition (ESP); `IsoWriter.add_fat_image` puts one into the boot ISO. The
writer is ours for the reason the ISO writer is: the same inputs give the same bytes.
Every date is the `timestamp` given, the volume serial is made from it, entries are
sorted, and nothing depends on the host.

What the layout is, and why:

- Sectors of 512 bytes, 4 to a cluster: clusters of 2048 bytes, a CD sector. The data
  region starts on a 2048-byte boundary of the image, and every file is one contiguous
  run of clusters, so a file's data is a whole run of CD sectors. `extent()` says where:
  the ISO 9660 tree can then point at the same sectors, and the kernel and initrd are
  stored once for both the BIOS and the UEFI path.
- FAT12, FAT16 or FAT32 by the count of data clusters, the only thing readers go by
  (Microsoft's FAT specification, fatgen103): below 4085 FAT12, below 65525 FAT16,
  else FAT32. At 2048-byte clusters that is FAT12 below about 8 MiB, FAT16 up to about
  128 MiB. Two FATs; FAT32 adds the FSInfo sector and the backup boot sector.
- Names as Windows writes them: a name that is its own upper-case 8.3 short name
  ("EFI", "BOOTX64.EFI") gets a short entry only; any other ("loader.conf", "vmlinuz")
  gets VFAT long-name entries, which keep its case, in front of a valid short name
  ("LOADER~1.CON", "VMLINUZ"). Names are unique without regard to case, as on FAT.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath

SECTOR_SIZE = 512
SECTORS_PER_CLUSTER = 4
CLUSTER_SIZE = SECTOR_SIZE * SECTORS_PER_CLUSTER  # 2048: one CD sector
MEDIA = 0xF8  # a fixed disk, as mkfs.fat and Windows write for anything but floppies

#: Fewer clusters than this makes FAT12, then FAT16 (fatgen103, "FAT type determination").
FAT12_LIMIT = 4085
FAT16_LIMIT = 65525

_DIR_ENTRY = 32
_ATTR_VOLUME_ID = 0x08
_ATTR_DIRECTORY = 0x10
_ATTR_ARCHIVE = 0x20
_ATTR_LONG_NAME = 0x0F
_LFN_CHARS = 13
_SHORT_SPECIAL = set("$%'-_@~`!(){}^#&")
_LONG_FORBIDDEN = set('"*/:<>?\\|')
#: Root directory slots of FAT12/16 at least (fatgen103 recommends 512 for FAT16).
_MIN_ROOT_ENTRIES = 512
_FAT32_RESERVED = 32
_FAT32_FSINFO = 1
_FAT32_BACKUP_BOOT = 6


def fat_kind(clusters: int) -> int:
    """12, 16 or 32: the FAT type a volume with this many data clusters has."""
    if clusters < FAT12_LIMIT:
        return 12
    if clusters < FAT16_LIMIT:
        return 16
    return 32


@dataclass(frozen=True)
class FatExtent:
    """Where a file's data lies in the image: `offset` bytes in, `length` bytes long.

    `offset` is a multiple of 2048 (0 for an empty file, which has no data).
    """

    offset: int
    length: int


@dataclass
class _Node:
    name: str
    data: bytes | None = None  # None: a directory
    children: dict[str, _Node] = field(default_factory=dict)  # by upper-case name
    short: bytes = b""  # the 11-byte short name, once planned
    cluster: int = 0  # first cluster, once planned (0: root of FAT12/16, or empty file)

    @property
    def is_dir(self) -> bool:
        return self.data is None

    def sorted_children(self) -> list[_Node]:
        return sorted(self.children.values(), key=lambda node: node.name)


@dataclass(frozen=True)
class _Geometry:
    kind: int
    sectors: int
    reserved: int
    fat_sectors: int
    root_entries: int  # 0 on FAT32
    clusters: int

    @property
    def root_sectors(self) -> int:
        return self.root_entries * _DIR_ENTRY // SECTOR_SIZE

    @property
    def data_sector(self) -> int:
        return self.reserved + 2 * self.fat_sectors + self.root_sectors


@dataclass
class _Plan:
    geometry: _Geometry
    dirs: list[_Node]  # breadth first, the root first
    files: list[_Node]
    extents: dict[str, FatExtent]
    used_clusters: int


class FatImage:
    """Collects files, then writes one FAT image with `write()`.

    `label` is the volume label (up to 11 of A-Z, 0-9, space, '_' and '-'); `min_size`
    pads the image to at least that many bytes (its FAT type follows the size).
    """

    def __init__(self, label: str, timestamp: float | None = None, min_size: int = 0) -> None:
        if not label or len(label) > 11 or label[0] == " " or any(not (c.isascii() and (c.isupper() or c.isdigit() or c in " _-")) for c in label):
            raise ValueError("FAT volume label must be 1-11 characters of A-Z, 0-9, ' ', '_' and '-'")
        self.label = label
        self.timestamp = time.time() if timestamp is None else timestamp
        self.min_size = min_size
        self.root = _Node("")

    def add_file(self, path: str, data: bytes) -> None:
        """Add a file at `path` ("EFI/BOOT/BOOTX64.EFI"); directories are made as needed."""
        parent, name = self._parent(path)
        key = name.upper()
        if key in parent.children:
            raise ValueError(f"'{path}' is already in the FAT image (names on FAT ignore case)")
        parent.children[key] = _Node(name, bytes(data))

    def add_directory(self, path: str) -> None:
        """Add an empty directory (and its parents)."""
        parent, name = self._parent(path)
        existing = parent.children.setdefault(name.upper(), _Node(name))
        if not existing.is_dir:
            raise ValueError(f"'{path}' is a file in the FAT image")

    def _parent(self, path: str) -> tuple[_Node, str]:
        parts = PurePosixPath(path.strip("/")).parts
        if not parts:
            raise ValueError("a path in the FAT image needs a name")
        for part in parts:
            _check_long_name(part)
        node = self.root
        for part in parts[:-1]:
            node = node.children.setdefault(part.upper(), _Node(part))
            if not node.is_dir:
                raise ValueError(f"'{part}' in '{path}' is a file in the FAT image")
        return node, parts[-1]

    # -- what the layout will be -------------------------------------------------------

    @property
    def fat_bits(self) -> int:
        """12, 16 or 32."""
        return self._plan().geometry.kind

    @property
    def size(self) -> int:
        """The image's size in bytes (a multiple of 2048)."""
        return self._plan().geometry.sectors * SECTOR_SIZE

    def extent(self, path: str) -> FatExtent:
        """Where the data of the file at `path` lies in the written image."""
        key = "/".join(part.upper() for part in PurePosixPath(path.strip("/")).parts)
        found = self._plan().extents.get(key)
        if found is None:
            raise KeyError(f"'{path}' is not a file in the FAT image")
        return found

    def _plan(self) -> _Plan:
        dirs = [self.root]
        index = 0
        while index < len(dirs):
            dirs.extend(child for child in dirs[index].sorted_children() if child.is_dir)
            index += 1
        for directory in dirs:
            _assign_short_names(directory)

        root_slots = _slots(self.root, is_root=True)
        root_entries = max(_MIN_ROOT_ENTRIES, -(-root_slots // 64) * 64)
        root_clusters = _clusters(root_slots * _DIR_ENTRY)
        subdir_clusters = sum(_clusters(_slots(d, is_root=False) * _DIR_ENTRY) for d in dirs[1:])
        files: list[_Node] = []
        paths: dict[int, str] = {id(self.root): ""}
        for directory in dirs:
            for child in directory.sorted_children():
                paths[id(child)] = f"{paths[id(directory)]}{child.name.upper()}" + ("/" if child.is_dir else "")
                if not child.is_dir:
                    files.append(child)
        file_clusters = sum(_clusters(len(f.data or b"")) for f in files)

        geometry = _choose_geometry(subdir_clusters + file_clusters, root_entries, root_clusters, self.min_size)
        # Clusters: the root (FAT32 only), the other directories, then the files.
        next_cluster = 2
        for directory in dirs:
            if directory is self.root and geometry.kind != 32:
                directory.cluster = 0
                continue
            directory.cluster = next_cluster
            next_cluster += _clusters(_slots(directory, directory is self.root) * _DIR_ENTRY)
        extents = {}
        data_offset = geometry.data_sector * SECTOR_SIZE
        for node in files:
            length = len(node.data or b"")
            node.cluster = next_cluster if length else 0
            offset = data_offset + (next_cluster - 2) * CLUSTER_SIZE if length else 0
            extents[paths[id(node)]] = FatExtent(offset, length)
            next_cluster += _clusters(length)
        return _Plan(geometry, dirs, files, extents, next_cluster - 2)

    # -- writing ---------------------------------------------------------------------------

    def write(self) -> bytes:
        """The whole image."""
        plan = self._plan()
        g = plan.geometry
        image = bytearray(g.sectors * SECTOR_SIZE)
        boot = self._boot_sector(g)
        image[0:SECTOR_SIZE] = boot
        if g.kind == 32:
            free = g.clusters - plan.used_clusters
            fsinfo = _fsinfo(free, 2 + plan.used_clusters if free else 0xFFFFFFFF)
            image[_FAT32_FSINFO * SECTOR_SIZE : (_FAT32_FSINFO + 1) * SECTOR_SIZE] = fsinfo
            backup = _FAT32_BACKUP_BOOT * SECTOR_SIZE
            image[backup : backup + SECTOR_SIZE] = boot
            image[backup + SECTOR_SIZE : backup + 2 * SECTOR_SIZE] = fsinfo

        table = self._fat(plan)
        for copy in range(2):
            start = (g.reserved + copy * g.fat_sectors) * SECTOR_SIZE
            image[start : start + len(table)] = table

        def cluster_offset(cluster: int) -> int:
            return (g.data_sector + (cluster - 2) * SECTORS_PER_CLUSTER) * SECTOR_SIZE

        for directory in plan.dirs:
            records = self._dir_records(directory, parent_cluster=self._parent_cluster(plan, directory))
            if directory is self.root and g.kind != 32:
                start = (g.reserved + 2 * g.fat_sectors) * SECTOR_SIZE
            else:
                start = cluster_offset(directory.cluster)
            image[start : start + len(records)] = records
        for node in plan.files:
            if node.data:
                start = cluster_offset(node.cluster)
                image[start : start + len(node.data)] = node.data
        return bytes(image)

    def _parent_cluster(self, plan: _Plan, directory: _Node) -> int:
        for candidate in plan.dirs:
            if any(child is directory for child in candidate.children.values()):
                # ".." of a directory in the root names cluster 0, on FAT32 too.
                return 0 if candidate is self.root else candidate.cluster
        return 0

    def _boot_sector(self, g: _Geometry) -> bytes:
        sector = bytearray(SECTOR_SIZE)
        # A jump over the BPB to `int 18h` (the BIOS: "not bootable, try the next device").
        code_at = 0x5A if g.kind == 32 else 0x3E
        sector[0:3] = bytes([0xEB, code_at - 2, 0x90])
        sector[3:11] = b"MSWIN4.1"  # fatgen103's recommended OEM name, the one drivers expect
        total16 = g.sectors if g.sectors < 0x10000 and g.kind != 32 else 0
        total32 = 0 if total16 else g.sectors
        struct.pack_into(
            "<HBHBHHBHHHII",
            sector,
            11,
            SECTOR_SIZE,
            SECTORS_PER_CLUSTER,
            g.reserved,
            2,  # FATs
            g.root_entries,
            total16,
            MEDIA,
            0 if g.kind == 32 else g.fat_sectors,
            32,  # sectors per track, heads: only for CHS, which nothing uses here
            64,
            0,  # hidden sectors: the image starts at its own sector 0
            total32,
        )
        tail = 36
        if g.kind == 32:
            struct.pack_into("<IHHIHH", sector, 36, g.fat_sectors, 0, 0, 2, _FAT32_FSINFO, _FAT32_BACKUP_BOOT)
            tail = 64
        struct.pack_into("<BBBI", sector, tail, 0x80, 0, 0x29, self.serial)
        sector[tail + 7 : tail + 18] = self.label.encode().ljust(11)
        sector[tail + 18 : tail + 26] = f"FAT{g.kind}".encode().ljust(8)
        sector[code_at : code_at + 4] = b"\xcd\x18\xeb\xfe"  # int 18h; jmp $
        sector[510:512] = b"\x55\xaa"
        return bytes(sector)

    @property
    def serial(self) -> int:
        """The volume serial number: the timestamp's DOS date and time, as DOS made it."""
        date, clock = _dos_datetime(self.timestamp)
        return (date << 16) | clock

    def _fat(self, plan: _Plan) -> bytes:
        g = plan.geometry
        last = {12: 0xFFF, 16: 0xFFFF, 32: 0x0FFFFFFF}[g.kind]
        entries = [(last & ~0xFF) | MEDIA, last]
        for node in [*plan.dirs, *plan.files]:
            if node is self.root and g.kind != 32:
                continue
            size = _slots(node, node is self.root) * _DIR_ENTRY if node.is_dir else len(node.data or b"")
            count = _clusters(size)
            for i in range(count):
                entries.append(last if i == count - 1 else node.cluster + i + 1)
        table = bytearray(g.fat_sectors * SECTOR_SIZE)
        if g.kind == 12:
            for n, value in enumerate(entries):
                at = n * 3 // 2
                pair = struct.unpack_from("<H", table, at)[0]
                pair = (pair & 0x000F) | (value << 4) if n % 2 else (pair & 0xF000) | value
                struct.pack_into("<H", table, at, pair)
        else:
            fmt = "<H" if g.kind == 16 else "<I"
            width = g.kind // 8
            for n, value in enumerate(entries):
                struct.pack_into(fmt, table, n * width, value)
        return bytes(table)

    def _dir_records(self, directory: _Node, parent_cluster: int) -> bytes:
        date, clock = _dos_datetime(self.timestamp)
        out = bytearray()
        if directory is self.root:
            out += _short_entry(self.label.encode().ljust(11), _ATTR_VOLUME_ID, 0, 0, date, clock)
        else:
            out += _short_entry(b".".ljust(11), _ATTR_DIRECTORY, directory.cluster, 0, date, clock)
            out += _short_entry(b"..".ljust(11), _ATTR_DIRECTORY, parent_cluster, 0, date, clock)
        for child in directory.sorted_children():
            if _needs_long_name(child.name, child.short):
                out += _long_entries(child.name, child.short)
            attr = _ATTR_DIRECTORY if child.is_dir else _ATTR_ARCHIVE
            out += _short_entry(child.short, attr, child.cluster, len(child.data or b""), date, clock)
        return bytes(out)


def _choose_geometry(data_clusters: int, root_entries: int, root_clusters: int, min_size: int) -> _Geometry:
    """The smallest layout with room for the data (and at least `min_size` bytes).

    Readers take the FAT type from the count of clusters, and the count depends on the
    FATs' size, which depends on the type. So: try each type at a size, keep the first
    whose own count of clusters gives that type back and holds the data, else grow.
    """
    sectors = max(-(-min_size // SECTOR_SIZE), SECTORS_PER_CLUSTER * (data_clusters + 1))
    sectors += -sectors % SECTORS_PER_CLUSTER  # whole CD sectors
    while True:
        for kind in (12, 16, 32):
            g = _fit(kind, sectors, 0 if kind == 32 else root_entries)
            if g is None or fat_kind(g.clusters) != kind:
                continue
            wanted = data_clusters + (root_clusters if kind == 32 else 0)
            if g.clusters >= wanted:
                return g
            sectors += SECTORS_PER_CLUSTER * (wanted - g.clusters)
            break
        else:
            # Between types (a FAT12 count too big, the bigger FAT16 leaves too few):
            # a few more clusters settle it.
            sectors += SECTORS_PER_CLUSTER


def _fit(kind: int, sectors: int, root_entries: int) -> _Geometry | None:
    """The layout of a `kind` volume of `sectors`, FATs just big enough, data 2048-aligned."""
    base_reserved = _FAT32_RESERVED if kind == 32 else 1
    root_sectors = root_entries * _DIR_ENTRY // SECTOR_SIZE
    fat_sectors = 1
    while True:
        reserved = base_reserved
        reserved += -(reserved + 2 * fat_sectors + root_sectors) % SECTORS_PER_CLUSTER
        data_sector = reserved + 2 * fat_sectors + root_sectors
        if sectors <= data_sector:
            return None
        clusters = (sectors - data_sector) // SECTORS_PER_CLUSTER
        fat_bytes = ((clusters + 2) * 3 + 1) // 2 if kind == 12 else (clusters + 2) * kind // 8
        needed = -(-fat_bytes // SECTOR_SIZE)
        if needed <= fat_sectors:
            return _Geometry(kind, sectors, reserved, fat_sectors, root_entries, clusters)
        fat_sectors = needed


def _clusters(size: int) -> int:
    return -(-size // CLUSTER_SIZE)


def _slots(directory: _Node, is_root: bool) -> int:
    """Directory entries the directory needs: "." and ".." (or the label), long names included."""
    count = 1 if is_root else 2
    for child in directory.children.values():
        count += 1
        if _needs_long_name(child.name, child.short):
            count += -(-_utf16_units(child.name) // _LFN_CHARS)
    return count


def _utf16_units(name: str) -> int:
    return len(name.encode("utf-16-le")) // 2


def _dos_datetime(timestamp: float) -> tuple[int, int]:
    """(date, time) in DOS form, UTC, clamped to what FAT can hold (1980-2107)."""
    t = time.gmtime(min(max(timestamp, 315532800), 4354819198))  # 1980-01-01 .. 2107-12-31 23:59:58
    return ((t.tm_year - 1980) << 9) | (t.tm_mon << 5) | t.tm_mday, (t.tm_hour << 11) | (t.tm_min << 5) | (t.tm_sec // 2)


def _short_entry(name: bytes, attr: int, cluster: int, size: int, date: int, clock: int) -> bytes:
    return name + struct.pack("<BBBHHHHHHHI", attr, 0, 0, clock, date, date, cluster >> 16, clock, date, cluster & 0xFFFF, size)


# -- names ---------------------------------------------------------------------------------


def _check_long_name(name: str) -> None:
    if name in (".", "..") or name.endswith((".", " ")) or _utf16_units(name) > 255 or any(c in _LONG_FORBIDDEN or ord(c) < 0x20 for c in name):
        raise ValueError(f"'{name}' cannot be a FAT name (no control characters, none of {''.join(sorted(_LONG_FORBIDDEN))}, no trailing '.' or space, up to 255 characters)")


def _short_char(char: str) -> tuple[str, bool]:
    """The character in a short name, and whether that lost anything."""
    if char.isascii() and (char.isupper() or char.isdigit() or char in _SHORT_SPECIAL):
        return char, False
    if char.isascii() and char.islower():
        return char.upper(), False
    return "_", True


def _basis(name: str) -> tuple[str, str, bool]:
    """fatgen103's basis name: (base up to 8, extension up to 3, lossy)."""
    lossy = False
    stripped = name.replace(" ", "").lstrip(".")
    if stripped != name:
        lossy = True
    base, dot, ext = stripped.rpartition(".")
    if not dot:
        base, ext = stripped, ""
    converted = []
    for part in (base.replace(".", ""), ext):
        chars = []
        for c in part:
            short, lost = _short_char(c)
            chars.append(short)
            lossy = lossy or lost
        converted.append("".join(chars))
    if base.count(".") or len(converted[0]) > 8 or len(converted[1]) > 3:
        lossy = True
    return converted[0][:8] or "_", converted[1][:3], lossy


def _assign_short_names(directory: _Node) -> None:
    """8.3 names for the directory's children: exact ones first, then numeric tails (~1)."""
    taken: set[bytes] = set()
    pending = []
    for child in directory.sorted_children():
        base, ext, lossy = _basis(child.name)
        if lossy:
            pending.append((child, base, ext))
            continue
        child.short = base.ljust(8).encode() + ext.ljust(3).encode()
        taken.add(child.short)
    for child, base, ext in pending:
        for number in range(1, 1_000_000):
            tail = f"~{number}"
            short = (base[: 8 - len(tail)] + tail).ljust(8).encode() + ext.ljust(3).encode()
            if short not in taken:
                break
        else:  # pragma: no cover - a million names in one folder
            raise ValueError("too many similar names in one FAT directory")
        child.short = short
        taken.add(short)


def _short_display(short: bytes, case_flags: int = 0) -> str:
    """The name an 11-byte short name stands for ("NAME.EXT"); NT's case flags may lower either half."""
    base, ext = short[:8].decode("latin-1").rstrip(), short[8:].decode("latin-1").rstrip()
    if case_flags & 0x08:
        base = base.lower()
    if case_flags & 0x10:
        ext = ext.lower()
    return f"{base}.{ext}" if ext else base


def _needs_long_name(name: str, short: bytes) -> bool:
    return _short_display(short) != name


def short_name_checksum(short: bytes) -> int:
    """The checksum a long-name entry carries of its 11-byte short name (fatgen103)."""
    total = 0
    for byte in short:
        total = (((total & 1) << 7) + (total >> 1) + byte) & 0xFF
    return total


def _long_entries(name: str, short: bytes) -> bytes:
    units = list(struct.unpack(f"<{len(name.encode('utf-16-le')) // 2}H", name.encode("utf-16-le")))
    if len(units) % _LFN_CHARS:
        units.append(0)
        units += [0xFFFF] * (-len(units) % _LFN_CHARS)
    checksum = short_name_checksum(short)
    count = len(units) // _LFN_CHARS
    out = bytearray()
    for ordinal in range(count, 0, -1):
        chunk = units[(ordinal - 1) * _LFN_CHARS : ordinal * _LFN_CHARS]
        entry = struct.pack("<B5H", ordinal | (0x40 if ordinal == count else 0), *chunk[:5])
        entry += struct.pack("<BBB6HH2H", _ATTR_LONG_NAME, 0, checksum, *chunk[5:11], 0, *chunk[11:13])
        out += entry
    return bytes(out)


def _fsinfo(free: int, next_free: int) -> bytes:
    sector = bytearray(SECTOR_SIZE)
    struct.pack_into("<I", sector, 0, 0x41615252)
    struct.pack_into("<IIII", sector, 484, 0x61417272, free, next_free, 0)
    struct.pack_into("<I", sector, 508, 0xAA550000)
    return bytes(sector)


# -- reading -------------------------------------------------------------------------------


@dataclass(frozen=True)
class FatEntry:
    """A file or directory found in a FAT image."""

    path: str  # "EFI/BOOT/BOOTX64.EFI", "loader/loader.conf": long names where present
    is_dir: bool
    cluster: int
    size: int


class FatReader:
    """Reads any FAT12/16/32 image (ours or another's): its entries and its files.

    `image` is anything that slices into bytes from the image's first byte on: bytes, a
    memoryview into a larger image, or an object that reads a file on demand.
    """

    def __init__(self, image) -> None:
        self.image = image
        boot = self._bytes(0, SECTOR_SIZE)
        if len(boot) < SECTOR_SIZE or boot[510:512] != b"\x55\xaa":
            raise ValueError("not a FAT image (no boot sector signature)")
        (self.sector_size, self.per_cluster, self.reserved, self.fats, self.root_entries, total16, _media, fat16) = struct.unpack_from("<HBHBHHBH", boot, 11)
        total32 = struct.unpack_from("<I", boot, 32)[0]
        self.fat_sectors = fat16 or struct.unpack_from("<I", boot, 36)[0]
        self.sectors = total16 or total32
        if self.sector_size not in (512, 1024, 2048, 4096) or not self.per_cluster or not self.fats or not self.fat_sectors:
            raise ValueError("not a FAT image (bad BIOS parameter block)")
        root_sectors = -(-self.root_entries * _DIR_ENTRY // self.sector_size)
        self.data_sector = self.reserved + self.fats * self.fat_sectors + root_sectors
        if self.sectors <= self.data_sector:
            raise ValueError("not a FAT image (no room for data)")
        self.clusters = (self.sectors - self.data_sector) // self.per_cluster
        self.kind = fat_kind(self.clusters)
        self.root_cluster = struct.unpack_from("<I", boot, 44)[0] if self.kind == 32 else 0

    def _bytes(self, offset: int, length: int) -> bytes:
        return bytes(self.image[offset : offset + length])

    def _next(self, cluster: int) -> int:
        base = self.reserved * self.sector_size
        if self.kind == 12:
            pair = struct.unpack("<H", self._bytes(base + cluster * 3 // 2, 2))[0]
            return pair >> 4 if cluster % 2 else pair & 0xFFF
        if self.kind == 16:
            return struct.unpack("<H", self._bytes(base + cluster * 2, 2))[0]
        return struct.unpack("<I", self._bytes(base + cluster * 4, 4))[0] & 0x0FFFFFFF

    def _chain(self, cluster: int) -> Iterator[int]:
        end = {12: 0xFF8, 16: 0xFFF8, 32: 0x0FFFFFF8}[self.kind]
        seen = 0
        while 2 <= cluster < end and seen <= self.clusters:
            yield cluster
            cluster = self._next(cluster)
            seen += 1

    def _read_chain(self, cluster: int, size: int | None = None) -> bytes:
        """The clusters of a chain, read in contiguous runs."""
        span = self.per_cluster * self.sector_size
        runs: list[list[int]] = []
        for c in self._chain(cluster):
            if runs and runs[-1][1] == c:
                runs[-1][1] = c + 1
            else:
                runs.append([c, c + 1])
        parts = []
        for first, stop in runs:
            start = (self.data_sector + (first - 2) * self.per_cluster) * self.sector_size
            parts.append(self._bytes(start, (stop - first) * span))
        data = b"".join(parts)
        return data if size is None else data[:size]

    def _directory(self, cluster: int) -> bytes:
        if cluster == 0 and self.kind != 32:
            start = (self.reserved + self.fats * self.fat_sectors) * self.sector_size
            return self._bytes(start, self.root_entries * _DIR_ENTRY)
        return self._read_chain(cluster)

    def entries(self) -> Iterator[FatEntry]:
        """Every file and directory, depth first, each directory's entries in their order."""
        return self._entries(self.root_cluster, "", {self.root_cluster})

    def _entries(self, cluster: int, prefix: str, visited: set[int]) -> Iterator[FatEntry]:
        records = self._directory(cluster)
        long_parts: list[tuple[int, str]] = []
        checksum = -1
        for at in range(0, len(records), _DIR_ENTRY):
            record = records[at : at + _DIR_ENTRY]
            if record[0] == 0:
                break
            if record[0] == 0xE5:
                long_parts = []
                continue
            attr = record[11]
            if attr & 0x3F == _ATTR_LONG_NAME:
                if record[0] & 0x40:
                    long_parts = []
                checksum = record[13]
                units = struct.unpack_from("<5H", record, 1) + struct.unpack_from("<6H", record, 14) + struct.unpack_from("<2H", record, 28)
                text = "".join(chr(u) for u in units).split("\x00", 1)[0]
                long_parts.append((record[0] & 0x1F, text))
                continue
            short = record[:11]
            if long_parts and checksum == short_name_checksum(short):
                name = "".join(text for _, text in sorted(long_parts))
            else:
                name = _short_display(b"\xe5" + short[1:] if short[0] == 5 else short, record[12])
            long_parts = []
            if attr & _ATTR_VOLUME_ID or name in (".", ".."):
                continue
            first = struct.unpack_from("<H", record, 26)[0] | (struct.unpack_from("<H", record, 20)[0] << 16 if self.kind == 32 else 0)
            size = struct.unpack_from("<I", record, 28)[0]
            entry = FatEntry(prefix + name, bool(attr & _ATTR_DIRECTORY), first, size)
            yield entry
            if entry.is_dir and first not in visited:  # a damaged image may loop
                visited.add(first)
                yield from self._entries(first, entry.path + "/", visited)

    def read(self, entry: FatEntry) -> bytes:
        """The data of a file entry."""
        return self._read_chain(entry.cluster, entry.size) if entry.size else b""

    def files(self) -> dict[str, bytes]:
        """Every file, by path."""
        return {e.path: self.read(e) for e in self.entries() if not e.is_dir}
