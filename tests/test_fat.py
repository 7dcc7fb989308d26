"""The FAT writer (the boot ISO's EFI system partition), checked by independent tools.

fsck.fat (dosfstools) must find every image clean, and mtools must read every file back
byte for byte under its long name; both decide the FAT type from the cluster count on
their own, so they also check that the writer chose the type the count implies.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from pymachine.guest.fat import CLUSTER_SIZE, FAT12_LIMIT, FAT16_LIMIT, FatImage, FatReader, fat_kind, short_name_checksum

STAMP = 1_700_000_000  # 2023-11-14 22:13:20 UTC

needs_tools = pytest.mark.skipif(
    shutil.which("fsck.fat") is None or shutil.which("mcopy") is None,
    reason="fsck.fat (dosfstools) and mtools are not installed: scripts/setup.sh installs them",
)


def esp_files() -> dict[str, bytes]:
    """What the boot ISO's ESP holds, with stand-ins for the binaries."""
    return {
        "EFI/BOOT/BOOTX64.EFI": b"MZ" + bytes(range(256)) * 300,
        "loader/loader.conf": b"timeout 0\ndefault pymachine.conf\n",
        "loader/entries/pymachine.conf": b"title pymachine\nlinux /vmlinuz\ninitrd /initrd\noptions console=ttyS0\n",
        "vmlinuz": b"K" * 100_003,
        "initrd": b"I" * 4096,  # exactly two clusters
    }


def make(files: dict[str, bytes], label: str = "PYMACHINE", min_size: int = 0, timestamp: float = STAMP, order: list[str] | None = None) -> FatImage:
    image = FatImage(label, timestamp=timestamp, min_size=min_size)
    for path in order or list(files):
        image.add_file(path, files[path])
    return image


def fsck(path: Path) -> tuple[int, int, int]:
    """(FAT bits, data clusters, clusters in use) as fsck.fat sees them; fails unless clean."""
    done = subprocess.run(["fsck.fat", "-n", "-v", str(path)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, f"fsck.fat found problems:\n{done.stdout}\n{done.stderr}"
    bits = int(re.search(r"FATs, (\d+) bit entries", done.stdout).group(1))
    clusters = int(re.search(r"(\d+) data clusters", done.stdout).group(1))
    used = int(re.search(r"files, (\d+)/(\d+) clusters", done.stdout).group(1))
    return bits, clusters, used


def mtools_tree(path: Path, dest: Path) -> dict[str, bytes]:
    """Every file of the image as mcopy extracts it (long names), by path."""
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "0", "LC_ALL": "C.UTF-8"}
    dest.mkdir()
    done = subprocess.run(["mcopy", "-s", "-n", "-m", "-i", str(path), "::/", str(dest)], capture_output=True, text=True, env=env, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return {p.relative_to(dest).as_posix(): p.read_bytes() for p in sorted(dest.rglob("*")) if p.is_file()}


# -- read back by fsck.fat and mtools ------------------------------------------------


@needs_tools
def test_the_esp_reads_back_with_mtools_and_is_clean(tmp_path: Path) -> None:
    image = make(esp_files())
    path = tmp_path / "esp.img"
    path.write_bytes(image.write())
    bits, _, _ = fsck(path)
    assert bits == image.fat_bits == 12
    assert mtools_tree(path, tmp_path / "out") == esp_files()
    env = {**os.environ, "LC_ALL": "C.UTF-8"}
    listing = subprocess.run(["mdir", "-i", str(path), "::/loader"], capture_output=True, text=True, env=env, check=True).stdout
    # The short name next to the long one: basis, numeric tail, extension cut to 3.
    assert re.search(r"LOADER~1 CON\s+33 2023-11-14\s+22:13\s+loader\.conf", listing), listing
    label = subprocess.run(["mlabel", "-s", "-i", str(path), "::"], capture_output=True, text=True, env=env, check=True).stdout
    assert "PYMACHINE" in label


@needs_tools
@pytest.mark.parametrize("clusters_wanted", range(FAT12_LIMIT - 6, FAT12_LIMIT + 6))
def test_fat12_to_fat16_at_the_boundary(tmp_path: Path, clusters_wanted: int) -> None:
    """Sizes around 4085 clusters: the type follows the count, as fsck.fat counts it."""
    # 68 sectors: what goes before the data at this size (boot sector, FATs, root folder).
    image = make(esp_files(), min_size=clusters_wanted * CLUSTER_SIZE + 68 * 512)
    path = tmp_path / "esp.img"
    path.write_bytes(image.write())
    bits, clusters, _ = fsck(path)
    assert bits == image.fat_bits == fat_kind(clusters)
    assert abs(clusters - clusters_wanted) <= 3
    assert len(path.read_bytes()) >= clusters_wanted * CLUSTER_SIZE + 68 * 512
    assert mtools_tree(path, tmp_path / "out") == esp_files()


def test_every_size_across_the_fat12_fat16_gap_gets_a_consistent_type() -> None:
    """A count just over FAT12's limit shrinks under it once the FATs grow to 16 bits:
    no type fits such a size, and the writer must grow the image rather than mislabel it."""
    seen = set()
    grown = 0
    for sectors in range((FAT12_LIMIT + 5) * 4, (FAT12_LIMIT + 25) * 4, 4):
        image = make({"a": b"x"}, min_size=sectors * 512)
        reader = FatReader(image.write())
        assert reader.kind == image.fat_bits == fat_kind(reader.clusters)
        assert image.size >= sectors * 512
        seen.add(reader.kind)
        grown += image.size > sectors * 512
    assert seen == {12, 16}
    assert grown, "the window should cross the gap"


#: Sectors before the data of a FAT16 volume of about 128 MiB: 4 reserved (1, and 3 to
#: align the data to 2048 bytes), two FATs of 256 sectors, 32 of root folder.
FAT16_TOP_OVERHEAD = 548


@needs_tools
@pytest.mark.parametrize(
    "sectors, bits, clusters_expected",
    [
        # The largest FAT16 volume: 65524 clusters.
        ((FAT16_LIMIT - 1) * 4 + FAT16_TOP_OVERHEAD, 16, FAT16_LIMIT - 1),
        # Four sectors more would be 65525 clusters of FAT16, which readers take for FAT32:
        # so it is FAT32, grown until its bigger FATs leave 65525 clusters.
        ((FAT16_LIMIT - 1) * 4 + FAT16_TOP_OVERHEAD + 4, 32, FAT16_LIMIT),
    ],
)
def test_fat16_to_fat32_at_the_boundary(tmp_path: Path, sectors: int, bits: int, clusters_expected: int) -> None:
    image = make(esp_files(), min_size=sectors * 512)
    path = tmp_path / "esp.img"
    data = image.write()
    path.write_bytes(data)
    found_bits, clusters, used = fsck(path)
    assert (found_bits, clusters) == (bits, clusters_expected)
    assert image.fat_bits == bits
    assert mtools_tree(path, tmp_path / "out") == esp_files()
    if bits == 32:
        # FSInfo (fsck.fat checks its free count too), and the backups at sectors 6 and 7.
        assert struct.unpack_from("<I", data, 512)[0] == 0x41615252
        # Free clusters, and the next free one: right after the files, which are packed.
        assert struct.unpack_from("<III", data, 512 + 484) == (0x61417272, clusters - used, 2 + used)
        assert data[6 * 512 : 7 * 512] == data[:512]
        assert data[7 * 512 : 8 * 512] == data[512:1024]
        assert data[82:90] == b"FAT32   "


@needs_tools
def test_many_files_folders_and_long_names(tmp_path: Path) -> None:
    files: dict[str, bytes] = {}
    for i in range(600):  # more than the 512 root entries FAT16 usually has
        files[f"root file number {i:04d}.data"] = f"root {i}".encode() * (i % 7)
    for d in range(12):
        for i in range(40):
            files[f"dir {d:02d}/sub.folder/File-{i}.Conf"] = os.urandom(i * 300)
    files.update(
        {
            "loader.conf": b"1",
            "loader.config": b"2",  # same basis name: LOADER~2
            "LOADER.CONFIGURATION": b"3",
            "thirteen.char": b"exactly one long-name entry, no terminator",
            "twenty-six-chars-name.txt": b"exactly two long-name entries",
            "ünïcödé name.txt": b"utf-16 in the long name",
            "deep/a/b/c/d/e/f/g/h/leaf": b"deep",
            "big.bin": os.urandom(3 * CLUSTER_SIZE + 1),
            "EMPTY": b"",
        }
    )
    image = make(files, min_size=20 << 20)
    path = tmp_path / "many.img"
    path.write_bytes(image.write())
    bits, _, _ = fsck(path)
    assert bits == image.fat_bits == 16
    got = mtools_tree(path, tmp_path / "out")
    assert got == files
    assert FatReader(path.read_bytes()).files() == files


@needs_tools
def test_empty_directories_have_dot_entries(tmp_path: Path) -> None:
    image = FatImage("DIRS", timestamp=STAMP)
    image.add_directory("empty/nested")
    image.add_file("empty/file", b"x")
    path = tmp_path / "dirs.img"
    path.write_bytes(image.write())
    fsck(path)
    listing = subprocess.run(["mdir", "-a", "-i", str(path), "::/empty/nested"], capture_output=True, text=True, check=True).stdout
    assert re.search(r"^\.\s+<DIR>", listing, re.MULTILINE) and re.search(r"^\.\.\s+<DIR>", listing, re.MULTILINE)


# -- extents: what lets the ISO share the kernel's sectors ---------------------------


@pytest.mark.parametrize("min_size", [0, 10 << 20, 40 << 20])
def test_each_file_is_one_run_of_2048_byte_sectors(min_size: int) -> None:
    files = esp_files()
    image = make(files, min_size=min_size)
    data = image.write()
    assert len(data) % 2048 == 0
    ends = []
    for path, content in files.items():
        extent = image.extent(path)
        assert extent.offset % 2048 == 0, path
        assert extent.length == len(content)
        assert data[extent.offset : extent.offset + extent.length] == content
        ends.append((extent.offset, extent.offset + -(-len(content) // 2048) * 2048))
    ends.sort()
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in itertools.pairwise(ends))
    assert image.extent("LOADER/ENTRIES/PYMACHINE.CONF") == image.extent("loader/entries/pymachine.conf")
    with pytest.raises(KeyError):
        image.extent("nothing")


def test_an_empty_file_has_no_extent() -> None:
    image = make({"empty": b"", "full": b"x"})
    assert image.extent("empty").length == 0
    assert FatReader(image.write()).files() == {"empty": b"", "full": b"x"}


# -- determinism ---------------------------------------------------------------------


def test_same_inputs_give_the_same_bytes_in_any_order() -> None:
    files = esp_files()
    first = make(files).write()
    assert make(files).write() == first
    assert make(files, order=list(reversed(files))).write() == first
    assert make(files, timestamp=STAMP + 60).write() != first
    assert make(files, label="OTHER").write() != first


def test_dates_before_1980_are_clamped() -> None:
    """SOURCE_DATE_EPOCH defaults to 0 (1970), which FAT's dates cannot hold."""
    data = make(esp_files(), timestamp=0).write()
    reader = FatReader(data)
    assert reader.kind == 12
    root = data[(reader.reserved + 2 * reader.fat_sectors) * 512 :][:32]
    assert root[:11] == b"PYMACHINE  "
    assert struct.unpack_from("<HH", root, 22) == (0, (0 << 9) | (1 << 5) | 1)  # 00:00, 1980-01-01


# -- the layout, field by field ------------------------------------------------------


def test_boot_sector_fields() -> None:
    data = make(esp_files()).write()
    assert data[510:512] == b"\x55\xaa"
    assert data[0] == 0xEB and data[2] == 0x90
    bytes_per_sector, per_cluster, reserved, fats, root_entries = struct.unpack_from("<HBHBH", data, 11)
    assert (bytes_per_sector, per_cluster, fats, root_entries) == (512, 4, 2, 512)
    assert data[21] == 0xF8  # media descriptor, repeated in the first FAT entry
    fat_start = reserved * 512
    assert data[fat_start] == 0xF8
    assert data[38] == 0x29 and data[43:54] == b"PYMACHINE  " and data[54:62] == b"FAT12   "
    reader = FatReader(data)
    assert (reader.data_sector * 512) % 2048 == 0
    # Both FATs are the same.
    size = reader.fat_sectors * 512
    assert data[fat_start : fat_start + size] == data[fat_start + size : fat_start + 2 * size]


def test_long_name_entries_carry_the_short_names_checksum() -> None:
    data = make({"loader.conf": b"x"}).write()
    reader = FatReader(data)
    root = data[(reader.reserved + 2 * reader.fat_sectors) * 512 :][: 4 * 32]
    label, lfn, short = root[:32], root[32:64], root[64:96]
    assert label[11] == 0x08
    assert lfn[0] == 0x41 and lfn[11] == 0x0F and lfn[26:28] == b"\0\0"
    assert short[:11] == b"LOADER~1CON"
    assert lfn[13] == short_name_checksum(short[:11])
    name = (lfn[1:11] + lfn[14:26] + lfn[28:32]).decode("utf-16-le")
    assert name == "loader.conf\0\uffff"


def test_exact_upper_case_8_3_names_need_no_long_name() -> None:
    data = make({"EFI/BOOT/BOOTX64.EFI": b"MZ"}).write()
    reader = FatReader(data)
    root = data[(reader.reserved + 2 * reader.fat_sectors) * 512 :][: 3 * 32]
    assert root[32:43] == b"EFI        " and root[43] == 0x10
    assert root[64] == 0  # nothing else


def test_reader_reads_an_image_made_by_mkfs_fat(tmp_path: Path) -> None:
    """efi_boot_arches reads ESPs made by other tools too, so the reader is checked on one."""
    if shutil.which("mkfs.fat") is None or shutil.which("mcopy") is None:
        pytest.skip("mkfs.fat (dosfstools) and mtools are not installed: scripts/setup.sh installs them")
    path = tmp_path / "other.img"
    path.write_bytes(b"\0" * (4 << 20))
    subprocess.run(["mkfs.fat", "-n", "OTHER", str(path)], check=True, capture_output=True)
    source = tmp_path / "BOOTAA64.EFI"
    source.write_bytes(b"MZ" + os.urandom(70_000))
    subprocess.run(["mmd", "-i", str(path), "::/EFI", "::/EFI/BOOT"], check=True)
    subprocess.run(["mcopy", "-i", str(path), str(source), "::/EFI/BOOT/BOOTAA64.EFI"], check=True)
    conf = tmp_path / "loader.conf"
    conf.write_bytes(b"timeout 0\n")
    subprocess.run(["mcopy", "-i", str(path), str(conf), "::/loader.conf"], check=True)
    assert FatReader(path.read_bytes()).files() == {"EFI/BOOT/BOOTAA64.EFI": source.read_bytes(), "loader.conf": b"timeout 0\n"}


# -- refusals ------------------------------------------------------------------------


@pytest.mark.parametrize("label", ["", "lower", "TWELVE_CHARS", " LEAD", "DOT.TED", "ÜML"])
def test_bad_labels_are_rejected(label: str) -> None:
    with pytest.raises(ValueError, match="label"):
        FatImage(label)


@pytest.mark.parametrize("name", ["a:b", "star*", "ends.", "ends ", "tab\there", "x" * 256, "..", "q?"])
def test_bad_names_are_rejected(name: str) -> None:
    with pytest.raises(ValueError, match="cannot be a FAT name"):
        FatImage("X").add_file(f"dir/{name}", b"")


def test_names_are_unique_without_regard_to_case() -> None:
    image = FatImage("X")
    image.add_file("EFI/BOOT/BOOTX64.EFI", b"1")
    with pytest.raises(ValueError, match="already"):
        image.add_file("efi/boot/bootx64.efi", b"2")
    with pytest.raises(ValueError, match="is a file"):
        image.add_file("EFI/BOOT/BOOTX64.EFI/below", b"3")
