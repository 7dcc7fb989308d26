"""Just enough ELF reading to know which shared libraries a binary needs (DT_NEEDED).

The recipe copies only the libraries that its binaries really load, and refuses to
build when one is missing, instead of finding out at boot.
"""

from __future__ import annotations

import struct

_DT_NEEDED = 1
_DT_STRTAB = 5
_PT_DYNAMIC = 2
_PT_LOAD = 1


def is_elf(data: bytes) -> bool:
    return data[:4] == b"\x7fELF"


def needed_libraries(data: bytes) -> list[str]:
    """The sonames a 64-bit little-endian ELF file lists as DT_NEEDED (empty if static)."""
    if not is_elf(data):
        return []
    if data[4] != 2 or data[5] != 1:
        raise ValueError("only 64-bit little-endian ELF files are supported")
    phoff = struct.unpack_from("<Q", data, 0x20)[0]
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    loads = []
    dynamic = None
    for i in range(phnum):
        p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz = struct.unpack_from("<IIQQQQ", data, phoff + i * phentsize)
        if p_type == _PT_LOAD:
            loads.append((p_vaddr, p_offset, p_filesz))
        elif p_type == _PT_DYNAMIC:
            dynamic = (p_offset, p_filesz)
    if dynamic is None:
        return []
    entries = []
    strtab_addr = None
    offset, size = dynamic
    for pos in range(offset, offset + size, 16):
        tag, value = struct.unpack_from("<qQ", data, pos)
        if tag == 0:
            break
        if tag == _DT_NEEDED:
            entries.append(value)
        elif tag == _DT_STRTAB:
            strtab_addr = value
    if strtab_addr is None:
        return []
    strtab = _vaddr_to_offset(loads, strtab_addr)
    names = []
    for index in entries:
        start = strtab + index
        end = data.index(b"\x00", start)
        names.append(data[start:end].decode())
    return names


def _vaddr_to_offset(loads: list[tuple[int, int, int]], vaddr: int) -> int:
    for p_vaddr, p_offset, p_filesz in loads:
        if p_vaddr <= vaddr < p_vaddr + p_filesz:
            return vaddr - p_vaddr + p_offset
    raise ValueError(f"address {vaddr:#x} is in no loadable segment")


_PT_NOTE = 4
_XEN_ELFNOTE_PHYS32_ENTRY = 18


def has_pvh_entry(data: bytes) -> bool:
    """True when a vmlinux has the Xen PVH entry note, so QEMU can boot it uncompressed."""
    if not is_elf(data) or data[4] != 2:
        return False
    phoff = struct.unpack_from("<Q", data, 0x20)[0]
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    for i in range(phnum):
        p_type, _flags, p_offset, _vaddr, _paddr, p_filesz = struct.unpack_from("<IIQQQQ", data, phoff + i * phentsize)
        if p_type != _PT_NOTE:
            continue
        pos, end = p_offset, p_offset + p_filesz
        while pos + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", data, pos)
            name = data[pos + 12 : pos + 12 + namesz].rstrip(b"\x00")
            if name == b"Xen" and ntype == _XEN_ELFNOTE_PHYS32_ENTRY:
                return True
            pos += 12 + ((namesz + 3) & ~3) + ((descsz + 3) & ~3)
    return False
