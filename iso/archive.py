"""Deterministic archive writers: the initramfs (cpio newc) and the engine bundle (tar).

Same tree in, same bytes out: entries sorted, owners root, one fixed mtime, no hard links.
"""

from __future__ import annotations

import io
import stat
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Entry:
    """One file, directory or symlink in an archive."""

    path: str  # relative, no leading "/" or "./"
    mode: int  # full st_mode, type bits included
    data: bytes = b""  # file content, or the symlink target

    @classmethod
    def file(cls, path: str, data: bytes, perm: int = 0o644) -> Entry:
        return cls(path.strip("/"), stat.S_IFREG | perm, data)

    @classmethod
    def directory(cls, path: str, perm: int = 0o755) -> Entry:
        return cls(path.strip("/"), stat.S_IFDIR | perm)

    @classmethod
    def symlink(cls, path: str, target: str) -> Entry:
        return cls(path.strip("/"), stat.S_IFLNK | 0o777, target.encode())


def _with_parents(entries: Iterable[Entry]) -> list[Entry]:
    """Entries sorted by path, with any missing parent directory added (0755)."""
    by_path: dict[str, Entry] = {}
    for entry in entries:
        if entry.path in by_path and by_path[entry.path] != entry:
            raise ValueError(f"two different entries for {entry.path}")
        by_path[entry.path] = entry
    for path in list(by_path):
        parts = path.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            by_path.setdefault(parent, Entry.directory(parent))
    return [by_path[p] for p in sorted(by_path)]


def cpio_newc(entries: Iterable[Entry], mtime: int = 0) -> bytes:
    """A cpio archive in the "newc" format the kernel unpacks as an initramfs."""
    out = io.BytesIO()
    ino = 1
    for entry in _with_parents(entries):
        _cpio_member(out, entry.path, entry.mode, entry.data if not stat.S_ISDIR(entry.mode) else b"", ino, mtime)
        ino += 1
    _cpio_member(out, "TRAILER!!!", 0, b"", 0, 0)
    data = out.getvalue()
    return data + b"\x00" * (-len(data) % 512)


def _cpio_member(out: io.BytesIO, name: str, mode: int, data: bytes, ino: int, mtime: int) -> None:
    encoded = name.encode() + b"\x00"
    nlink = 2 if stat.S_ISDIR(mode) else 1
    fields = (ino, mode, 0, 0, nlink, mtime, len(data), 0, 0, 0, 0, len(encoded), 0)
    header = b"070701" + b"".join(b"%08X" % f for f in fields)
    out.write(header)
    out.write(encoded)
    out.write(b"\x00" * (-(len(header) + len(encoded)) % 4))
    out.write(data)
    out.write(b"\x00" * (-len(data) % 4))


def tar_bytes(entries: Iterable[Entry], mtime: int = 0) -> bytes:
    """An uncompressed ustar/pax archive of the entries."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in _with_parents(entries):
            info = tarfile.TarInfo(entry.path)
            info.mtime = mtime
            info.mode = stat.S_IMODE(entry.mode)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            if stat.S_ISDIR(entry.mode):
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif stat.S_ISLNK(entry.mode):
                info.type = tarfile.SYMTYPE
                info.linkname = entry.data.decode()
                tar.addfile(info)
            else:
                info.size = len(entry.data)
                tar.addfile(info, io.BytesIO(entry.data))
    return out.getvalue()
