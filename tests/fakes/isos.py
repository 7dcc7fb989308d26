"""Boot ISOs for the fakes: what an amd64 (BIOS or EFI) or arm64 (EFI) image carries.

The ISO itself is written by pycdlib (a third-party writer, so the fakes' El Torito
reader in bootmedia.py is checked against something it did not write); the EFI system
partition inside is a FAT12 image written here, small and deterministic. Used by the
harnesses and tests only; the fake programs never import this module.
"""

from __future__ import annotations

import functools
import io
import struct
from pathlib import Path

BYTES_PER_SECTOR = 512
FAT12_SECTORS = 256  # a 128 KiB file system: FAT12 (fewer than 4085 clusters)
ROOT_ENTRIES = 16
#: Enough of a PE file to be recognisable; the fakes look only for the file.
EFI_STUB = b"MZ" + b"\0" * 62 + b"PE\0\0" + b"\0" * 440

#: What each kind of boot image holds (see bootmedia.py for what boots what).
KINDS = {
    "bios": {"bios": True, "efi": ()},  # isolinux only, as pymachine's amd64 image today
    "amd64-efi": {"bios": False, "efi": ("x64",)},
    "amd64-hybrid": {"bios": True, "efi": ("x64",)},
    "arm64": {"bios": False, "efi": ("aa64",)},
    "none": {"bios": False, "efi": ()},  # an ISO without any El Torito record
}


def fat12_image(files: dict[str, bytes]) -> bytes:
    """A FAT12 file system holding `files` ({"EFI/BOOT/BOOTAA64.EFI": data}), 8.3 names."""
    fat_sectors = 1
    data_start = 1 + 2 * fat_sectors + (ROOT_ENTRIES * 32) // BYTES_PER_SECTOR
    image = bytearray(FAT12_SECTORS * BYTES_PER_SECTOR)
    struct.pack_into(
        "<3s8sHBHBHHBHHHII",
        image,
        0,
        b"\xeb\x3c\x90",
        b"PYMTEST ",
        BYTES_PER_SECTOR,
        1,  # sectors per cluster
        1,  # reserved sectors
        2,  # FATs
        ROOT_ENTRIES,
        FAT12_SECTORS,
        0xF8,
        fat_sectors,
        32,  # sectors per track (mtools refuses 0)
        1,  # heads
        0,  # hidden sectors
        0,  # total sectors (32-bit)
    )
    # The extended BPB (FAT12/16): drive 0x80, signature 0x29, volume id, label, type.
    struct.pack_into("<BBBI11s8s", image, 36, 0x80, 0, 0x29, 0x504D4143, b"NO NAME    ", b"FAT12   ")
    image[510:512] = b"\x55\xaa"
    fat: dict[int, int] = {0: 0xFF8, 1: 0xFFF}
    next_cluster = 2

    def allocate(data: bytes) -> int:
        nonlocal next_cluster
        if not data:
            return 0
        clusters = (len(data) + BYTES_PER_SECTOR - 1) // BYTES_PER_SECTOR
        first = next_cluster
        for index in range(clusters):
            cluster = first + index
            fat[cluster] = cluster + 1 if index < clusters - 1 else 0xFFF
            start = (data_start + cluster - 2) * BYTES_PER_SECTOR
            chunk = data[index * BYTES_PER_SECTOR : (index + 1) * BYTES_PER_SECTOR]
            image[start : start + len(chunk)] = chunk
        next_cluster += clusters
        return first

    def entry(name: str, cluster: int, size: int, directory: bool) -> bytes:
        base, _, ext = (name, "", "") if name in (".", "..") else name.upper().partition(".")
        if len(base) > 8 or len(ext) > 3:
            raise ValueError(f"{name} is not an 8.3 name")
        return struct.pack("<8s3sB10xHHHI", base.ljust(8).encode(), ext.ljust(3).encode(), 0x10 if directory else 0x20, 0, 0, cluster, size)

    def write_directory(tree: dict, parent: int, own: int | None) -> bytes:
        """The entries of one directory; subdirectories are written first to know their clusters."""
        body = b""
        if own is not None:
            body += entry(".", own, 0, True) + entry("..", parent, 0, True)
        for name, content in sorted(tree.items()):
            if isinstance(content, dict):
                cluster = next_cluster
                reserved = allocate(b"\0" * BYTES_PER_SECTOR)  # the subdirectory's one cluster
                sub = write_directory(content, own or 0, cluster)
                start = (data_start + reserved - 2) * BYTES_PER_SECTOR
                image[start : start + len(sub)] = sub
                body += entry(name, cluster, 0, True)
            else:
                body += entry(name, allocate(content), len(content), False)
        return body

    tree: dict = {}
    for path, data in files.items():
        node = tree
        *dirs, leaf = [p for p in path.split("/") if p]
        for part in dirs:
            node = node.setdefault(part, {})
        node[leaf] = data
    root = write_directory(tree, 0, None)
    if len(root) > ROOT_ENTRIES * 32:
        raise ValueError("too many entries for the root directory")
    root_start = (1 + 2 * fat_sectors) * BYTES_PER_SECTOR
    image[root_start : root_start + len(root)] = root
    table = bytearray(fat_sectors * BYTES_PER_SECTOR)
    for cluster, value in fat.items():
        offset = cluster + cluster // 2
        pair = struct.unpack_from("<H", table, offset)[0]
        pair = (pair & 0x000F) | (value << 4) if cluster & 1 else (pair & 0xF000) | value
        struct.pack_into("<H", table, offset, pair)
    for copy in range(2):
        start = (1 + copy * fat_sectors) * BYTES_PER_SECTOR
        image[start : start + len(table)] = table
    return bytes(image)


@functools.cache
def boot_iso_bytes(kind: str) -> bytes:
    """The bytes of a small boot ISO of `kind` (see KINDS)."""
    import pycdlib

    plan = KINDS[kind]
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=1, vol_ident="PYMACHINE")
    readme = f"pymachine test boot image ({kind})\n".encode()
    iso.add_fp(io.BytesIO(readme), len(readme), "/README.TXT;1")
    catalog = None
    if plan["bios"]:
        loader = b"\xfa\xf4" + b"\0" * 2046  # cli; hlt: a boot sector that would boot
        iso.add_fp(io.BytesIO(loader), len(loader), "/ISOLINUX.BIN;1")
        catalog = "/BOOT.CAT;1"
        iso.add_eltorito("/ISOLINUX.BIN;1", bootcatfile=catalog, boot_load_size=4)
    if plan["efi"]:
        esp = fat12_image({f"EFI/BOOT/BOOT{machine.upper()}.EFI": EFI_STUB for machine in plan["efi"]})
        iso.add_fp(io.BytesIO(esp), len(esp), "/EFIBOOT.IMG;1")
        if catalog is None:
            # The first entry is the default entry: its platform is the validation entry's.
            iso.add_eltorito("/EFIBOOT.IMG;1", bootcatfile="/BOOT.CAT;1", platform_id=0xEF)
        else:
            iso.add_eltorito("/EFIBOOT.IMG;1", bootcatfile=catalog, efi=True)
    out = io.BytesIO()
    iso.write_fp(out)
    iso.close()
    return out.getvalue()


def write_boot_iso(path: Path, kind: str) -> Path:
    """Write a boot ISO of `kind` to `path`; returns path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(boot_iso_bytes(kind))
    return path
