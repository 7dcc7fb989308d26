"""The boot image recipe without downloading anything: archives, ELF reading, the lock,
the inputs hash, the up-to-date check, kernel module metadata and missing tools."""

from __future__ import annotations

import dataclasses
import io
import json
import lzma
import os
import re
import shutil
import stat
import struct
import subprocess
import tarfile
from pathlib import Path

import pytest

from pymachine.errors import ImageError
from pymachine.image import manifest_name
from pymachine.iso import build as build_module
from pymachine.iso import recipe
from pymachine.iso.archive import Entry, cpio_newc, tar_bytes
from pymachine.iso.build import (
    ImageBuilder,
    LockedPackage,
    _interpreter,
    _modinfo,
    artifact_names,
    extract_vmlinux,
    kernel_package,
    lock_path,
    read_lock,
)
from pymachine.iso.elf import has_pvh_entry, is_elf, needed_libraries
from pymachine.runner import Runner

ROOT = Path(__file__).resolve().parent.parent
SYSTEM_BINARY = Path("/bin/ls")


# -- cpio newc -----------------------------------------------------------------------


def read_newc(data: bytes) -> list[dict]:
    """A small, strict newc reader: every member with its header fields."""
    members = []
    pos = 0
    while True:
        header = data[pos : pos + 110]
        assert header[:6] == b"070701", f"bad magic at {pos}"
        fields = [int(header[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
        ino, mode, uid, gid, nlink, mtime, size, _dmaj, _dmin, _rmaj, _rmin, namesize, check = fields
        name_start = pos + 110
        name = data[name_start : name_start + namesize]
        assert name.endswith(b"\0")
        pos = name_start + namesize
        pos += -pos % 4
        body = data[pos : pos + size]
        pos += size
        pos += -pos % 4
        member = {"name": name[:-1].decode(), "ino": ino, "mode": mode, "uid": uid, "gid": gid, "nlink": nlink, "mtime": mtime, "data": body, "check": check}
        members.append(member)
        if member["name"] == "TRAILER!!!":
            assert data[pos:] == b"\0" * (len(data) - pos)
            return members


ENTRIES = [
    Entry.file("/usr/bin/tool", b"#!/bin/sh\necho hi\n", 0o755),
    Entry.file("etc/shadow", b"root:*:1::::::\n", 0o600),
    Entry.symlink("bin/sh", "/bin/busybox"),
    Entry.file("bin/busybox", b"\x7fELF fake", 0o755),
    Entry.directory("var/lib/docker", 0o711),
    Entry.file("odd", b"abc"),  # a length that needs padding
]


def test_cpio_newc_parses_back_with_parents_sorted() -> None:
    data = cpio_newc(ENTRIES, mtime=1234)
    assert len(data) % 512 == 0
    members = read_newc(data)
    names = [m["name"] for m in members]
    assert names[-1] == "TRAILER!!!"
    assert names[:-1] == sorted(names[:-1])
    assert names[:-1] == ["bin", "bin/busybox", "bin/sh", "etc", "etc/shadow", "odd", "usr", "usr/bin", "usr/bin/tool", "var", "var/lib", "var/lib/docker"]
    by_name = {m["name"]: m for m in members}
    assert by_name["usr/bin/tool"]["mode"] == stat.S_IFREG | 0o755
    assert by_name["usr/bin/tool"]["data"] == b"#!/bin/sh\necho hi\n"
    assert by_name["etc/shadow"]["mode"] == stat.S_IFREG | 0o600
    assert by_name["bin/sh"]["mode"] == stat.S_IFLNK | 0o777
    assert by_name["bin/sh"]["data"] == b"/bin/busybox"
    assert by_name["var/lib/docker"]["mode"] == stat.S_IFDIR | 0o711
    for parent in ("usr", "usr/bin", "var", "var/lib", "etc", "bin"):
        assert by_name[parent]["mode"] == stat.S_IFDIR | 0o755
        assert by_name[parent]["nlink"] == 2
        assert by_name[parent]["data"] == b""
    assert by_name["odd"]["data"] == b"abc"
    for member in members[:-1]:
        assert (member["uid"], member["gid"], member["mtime"], member["check"]) == (0, 0, 1234, 0)
    inodes = [m["ino"] for m in members[:-1]]
    assert len(set(inodes)) == len(inodes)


def test_cpio_is_deterministic_and_order_free() -> None:
    first = cpio_newc(ENTRIES, mtime=0)
    assert cpio_newc(list(reversed(ENTRIES)), mtime=0) == first
    assert cpio_newc(ENTRIES, mtime=1) != first


def test_conflicting_entries_are_refused() -> None:
    with pytest.raises(ValueError, match="two different entries for a/b"):
        cpio_newc([Entry.file("a/b", b"1"), Entry.file("a/b", b"2")])
    # The same entry twice is harmless.
    assert read_newc(cpio_newc([Entry.file("a", b"1"), Entry.file("a", b"1")]))[0]["name"] == "a"


@pytest.mark.skipif(shutil.which("cpio") is None, reason="cpio is not installed")
def test_cpio_tool_lists_and_extracts_the_archive(tmp_path: Path) -> None:
    data = cpio_newc(ENTRIES, mtime=1234)
    listed = subprocess.run(["cpio", "-t", "--quiet"], input=data, capture_output=True, timeout=30)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.decode().split() == [m["name"] for m in read_newc(data)[:-1]]
    out = tmp_path / "x"
    out.mkdir()
    done = subprocess.run(["cpio", "-i", "--quiet", "--no-absolute-filenames", "-d"], input=data, cwd=out, capture_output=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert (out / "usr/bin/tool").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert os.readlink(out / "bin/sh") == "/bin/busybox"


# -- tar -----------------------------------------------------------------------------


def test_tar_bytes_reads_back_with_fixed_owners_and_mtime() -> None:
    data = tar_bytes(ENTRIES, mtime=777)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
        names = [m.name for m in members]
        assert names == sorted(names)
        assert "usr" in names and "usr/bin" in names and "var/lib" in names
        for member in members:
            assert (member.uid, member.gid, member.uname, member.gname, member.mtime) == (0, 0, "root", "root", 777)
        tool = tar.getmember("usr/bin/tool")
        assert tool.isfile() and tool.mode == 0o755
        assert tar.extractfile(tool).read() == b"#!/bin/sh\necho hi\n"
        assert tar.getmember("etc/shadow").mode == 0o600
        link = tar.getmember("bin/sh")
        assert link.issym() and link.linkname == "/bin/busybox"
        assert tar.getmember("var/lib/docker").isdir() and tar.getmember("var/lib/docker").mode == 0o711


def test_tar_bytes_is_deterministic() -> None:
    first = tar_bytes(ENTRIES, mtime=0)
    assert tar_bytes(list(reversed(ENTRIES)), mtime=0) == first
    assert tar_bytes(ENTRIES, mtime=5) != first


# -- ELF -----------------------------------------------------------------------------


def make_elf(segments: list[tuple[int, int, bytes]], tail: bytes = b"") -> bytes:
    """A 64-bit little-endian ELF with the given (p_type, p_vaddr, contents) segments."""
    phoff, phentsize = 64, 56
    offset = phoff + phentsize * len(segments)
    headers, bodies = b"", b""
    for p_type, vaddr, body in segments:
        headers += struct.pack("<IIQQQQQQ", p_type, 4, offset + len(bodies), vaddr, vaddr, len(body), len(body), 8)
        bodies += body
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + b"\0" * 8
    header = ident + struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0, phoff, 0, 0, 64, phentsize, len(segments), 64, 0, 0)
    return header + headers + bodies + tail


def xen_pvh_note() -> bytes:
    name = b"Xen\0"
    desc = struct.pack("<I", 0x1000000)
    return struct.pack("<III", len(name), len(desc), 18) + name + desc


def readelf_needed(path: Path) -> list[str]:
    out = subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True, timeout=30).stdout
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)


@pytest.mark.skipif(not SYSTEM_BINARY.exists(), reason="no /bin/ls")
def test_needed_libraries_of_a_system_binary() -> None:
    data = SYSTEM_BINARY.read_bytes()
    found = needed_libraries(data)
    assert "libc.so.6" in found
    if shutil.which("readelf"):
        assert found == readelf_needed(SYSTEM_BINARY)
    assert has_pvh_entry(data) is False


@pytest.mark.skipif(not SYSTEM_BINARY.exists() or shutil.which("readelf") is None, reason="needs /bin/ls and readelf")
def test_interpreter_of_a_system_binary_matches_readelf() -> None:
    out = subprocess.run(["readelf", "-l", str(SYSTEM_BINARY)], capture_output=True, text=True, timeout=30).stdout
    wanted = re.search(r"Requesting program interpreter: ([^\]]+)\]", out).group(1)
    assert _interpreter(SYSTEM_BINARY.read_bytes()) == wanted


@pytest.mark.parametrize("path", ["/bin/busybox", "/usr/bin/python3", "/usr/bin/qemu-img"])
def test_needed_libraries_matches_readelf_on_more_binaries(path: str) -> None:
    binary = Path(path).resolve()
    if not binary.is_file() or shutil.which("readelf") is None:
        pytest.skip(f"needs {path} and readelf")
    data = binary.read_bytes()
    if not is_elf(data):
        pytest.skip(f"{path} is not ELF")
    assert needed_libraries(data) == readelf_needed(binary)


def test_needed_libraries_of_synthetic_files() -> None:
    assert needed_libraries(b"#!/bin/sh\n") == []
    assert needed_libraries(make_elf([(1, 0x400000, b"\0" * 16)])) == []  # no PT_DYNAMIC: static
    # A dynamic section with two DT_NEEDED entries into a string table in a PT_LOAD.
    strtab = b"\0libfoo.so.1\0libbar.so.2\0"
    strtab_vaddr = 0x600000
    dynamic = struct.pack("<qQ", 1, 1) + struct.pack("<qQ", 1, 13) + struct.pack("<qQ", 5, strtab_vaddr) + struct.pack("<qQ", 0, 0)
    elf = make_elf([(1, strtab_vaddr, strtab), (2, 0x700000, dynamic)])
    assert needed_libraries(elf) == ["libfoo.so.1", "libbar.so.2"]
    elf32 = bytearray(elf)
    elf32[4] = 1
    with pytest.raises(ValueError, match="64-bit"):
        needed_libraries(bytes(elf32))


def test_has_pvh_entry_finds_the_xen_note() -> None:
    other_note = struct.pack("<III", 4, 4, 3) + b"GNU\0" + b"\0" * 4
    assert has_pvh_entry(make_elf([(4, 0, other_note + xen_pvh_note())])) is True
    assert has_pvh_entry(make_elf([(4, 0, other_note)])) is False
    wrong_type = struct.pack("<III", 4, 4, 17) + b"Xen\0" + b"\0" * 4
    assert has_pvh_entry(make_elf([(4, 0, wrong_type)])) is False
    assert has_pvh_entry(b"MZ not elf") is False


def test_extract_vmlinux() -> None:
    assert extract_vmlinux(b"MZ" + b"\0" * 4096) is None  # no xz payload
    assert extract_vmlinux(b"header" + b"\xfd7zXZ\x00" + b"garbage" * 10) is None  # damaged payload
    plain = lzma.compress(make_elf([(1, 0, b"\0" * 64)]), format=lzma.FORMAT_XZ)
    assert extract_vmlinux(b"bzImage setup" + plain + b"trailer") is None  # no PVH entry
    vmlinux = make_elf([(4, 0, xen_pvh_note())], tail=b"kernel text" * 100)
    packed = b"\x4d\x5a" + b"\0" * 500 + lzma.compress(vmlinux, format=lzma.FORMAT_XZ) + b"\0" * 32
    assert extract_vmlinux(packed) == vmlinux
    # Debian 13's kernels are zstd-packed.
    import zstandard

    zpacked = b"\x4d\x5a" + b"\0" * 500 + zstandard.ZstdCompressor().compress(vmlinux) + b"\0" * 32
    assert extract_vmlinux(zpacked) == vmlinux
    assert extract_vmlinux(b"MZ" + b"\x28\xb5\x2f\xfd" + b"not zstd") is None


# -- the lock ------------------------------------------------------------------------

SHA = "a" * 64


def test_read_lock_parses_and_skips_comments(tmp_path: Path) -> None:
    lock = tmp_path / "packages.lock"
    lock.write_text(f"# header\n\nbusybox-static 1:1.35.0-4+deb12u1+b1 {SHA}\n  docker.io 20.10.24+dfsg1-1+deb12u1 {SHA}  # trailing comment\n")
    packages = read_lock(lock)
    assert list(packages) == ["busybox-static", "docker.io"]
    assert packages["docker.io"] == LockedPackage("docker.io", "20.10.24+dfsg1-1+deb12u1", SHA)
    assert packages["busybox-static"].upstream_version == "1.35.0"
    assert packages["docker.io"].upstream_version == "20.10.24"
    assert LockedPackage("containerd", "1.6.20~ds1-1+deb12u3", SHA).upstream_version == "1.6.20"


@pytest.mark.parametrize("line", ["busybox-static 1.35.0", f"busybox-static 1.35.0 {SHA} extra", "lonely"])
def test_read_lock_rejects_malformed_lines(tmp_path: Path, line: str) -> None:
    lock = tmp_path / "packages.lock"
    lock.write_text(f"# header\nzstd 1.5.4 {SHA}\n{line}\n")
    with pytest.raises(ImageError) as caught:
        read_lock(lock)
    assert f"{lock}:3: expected 'name version sha256'" in str(caught.value)
    assert "`pymachine image lock`" in str(caught.value)


def test_read_lock_of_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="is missing"):
        read_lock(tmp_path / "nope.lock")


@pytest.mark.parametrize("arch", sorted(recipe.TARGETS))
def test_the_shipped_locks_cover_the_recipe(arch: str) -> None:
    target = recipe.TARGETS[arch]
    lock = read_lock(lock_path(arch))
    assert set(recipe.wanted_packages(target)) <= set(lock)
    kernel = kernel_package(lock, target.kernel_metapackage)
    assert kernel.name.startswith("linux-image-6.12.") and kernel.name.endswith(f"-{arch}")
    assert lock["docker.io"].version.startswith("26.1.5")
    for package in lock.values():
        assert re.fullmatch(r"[0-9a-f]{64}", package.sha256), package


def test_only_arm64_carries_the_x86_64_emulator_and_only_amd64_isolinux() -> None:
    assert "qemu-user" in read_lock(lock_path("arm64")) and "qemu-user" not in read_lock(lock_path("amd64"))
    assert "isolinux" in read_lock(lock_path("amd64")) and "isolinux" not in read_lock(lock_path("arm64"))


def test_kernel_package_wants_exactly_one_kernel() -> None:
    with pytest.raises(ImageError, match="exactly one"):
        kernel_package({"zstd": LockedPackage("zstd", "1", SHA)}, "linux-image-amd64")
    two = {n: LockedPackage(n, "1", SHA) for n in ("linux-image-6.1.0-1-amd64", "linux-image-6.1.0-2-amd64")}
    with pytest.raises(ImageError, match="exactly one"):
        kernel_package(two, "linux-image-amd64")


# -- inputs hash and the up-to-date check -------------------------------------------


@pytest.fixture
def recipe_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A copy of the guest files and the lock, so the test can change them."""
    rootfs = tmp_path / "rootfs"
    shutil.copytree(build_module.ROOTFS, rootfs, symlinks=True)
    lock = tmp_path / "packages-amd64.lock"
    shutil.copy2(lock_path("amd64"), lock)
    monkeypatch.setattr(build_module, "ROOTFS", rootfs)
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    return rootfs, lock


def builder(tmp_path: Path, lock: Path, name: str = "out") -> ImageBuilder:
    return ImageBuilder(tmp_path / name, tmp_path / f"{name}-work", Runner(path=str(tmp_path / "no-tools")), arch="amd64", lock=lock)


def test_inputs_hash_follows_the_inputs_only(recipe_copy: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rootfs, lock = recipe_copy
    base = builder(tmp_path, lock).inputs_hash()
    assert re.fullmatch(r"[0-9a-f]{64}", base)
    # Not the output folder, not file times, not rewriting the same bytes.
    assert builder(tmp_path, lock, "elsewhere").inputs_hash() == base
    some_file = next(p for p in sorted(rootfs.rglob("*")) if p.is_file())
    os.utime(some_file, (1, 1))
    some_file.write_bytes(some_file.read_bytes())
    assert builder(tmp_path, lock).inputs_hash() == base

    # A guest file changes.
    original = some_file.read_bytes()
    some_file.write_bytes(original + b"\n# changed\n")
    changed = builder(tmp_path, lock).inputs_hash()
    assert changed != base
    some_file.write_bytes(original)
    assert builder(tmp_path, lock).inputs_hash() == base

    # A new guest file, or a new empty folder.
    (rootfs / "etc" / "motd").write_text("hello\n")
    assert builder(tmp_path, lock).inputs_hash() not in (base, changed)
    (rootfs / "etc" / "motd").unlink()
    (rootfs / "srv").mkdir()
    assert builder(tmp_path, lock).inputs_hash() != base
    (rootfs / "srv").rmdir()
    assert builder(tmp_path, lock).inputs_hash() == base

    # The lock changes.
    text = lock.read_text()
    repinned = re.sub(r"(?m)^(zstd) \S+ ", r"\1 9.9.9-1 ", text)
    assert repinned != text
    lock.write_text(repinned)
    assert builder(tmp_path, lock).inputs_hash() != base
    lock.write_text(text)
    assert builder(tmp_path, lock).inputs_hash() == base

    # SOURCE_DATE_EPOCH changes every timestamp in the output.
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    assert builder(tmp_path, lock).inputs_hash() != base


def fake_build(image_builder: ImageBuilder, inputs: str | None = None) -> dict:
    """What a finished build leaves in the output folder, without building anything."""
    image_builder.output.mkdir(parents=True)
    names = artifact_names("amd64")
    artifacts = {}
    for kind, data in [("iso", b"I" * 4096), ("kernel", b"K" * 100), ("initrd", b"R" * 200), ("engine", b"E" * 300)]:
        filename = names.get(kind, "docker-engine-20.10.24-amd64.tar.zst")
        (image_builder.output / filename).write_bytes(data)
        artifacts[kind] = {"file": filename, "size": len(data), "sha256": "0" * 64}
    manifest = {"inputs": inputs or image_builder.inputs_hash(), "artifacts": artifacts, "version": "test"}
    (image_builder.output / names["manifest"]).write_text(json.dumps(manifest))
    return manifest


def test_current_is_none_without_a_manifest(recipe_copy: tuple[Path, Path], tmp_path: Path) -> None:
    _, lock = recipe_copy
    assert builder(tmp_path, lock).current() is None


def test_current_returns_the_artifacts_when_everything_matches(recipe_copy: tuple[Path, Path], tmp_path: Path) -> None:
    _, lock = recipe_copy
    image_builder = builder(tmp_path, lock)
    manifest = fake_build(image_builder)
    assert artifact_names("amd64")["manifest"] == manifest_name("amd64")
    found = image_builder.current()
    assert found is not None
    assert found.manifest == manifest
    assert found.path("iso") == image_builder.output / artifact_names("amd64")["iso"]
    assert found.path("engine").read_bytes() == b"E" * 300
    # build() does nothing then: not even look for apt-get.
    assert image_builder.build().manifest == manifest


@pytest.mark.parametrize("damage", ["inputs", "size", "missing", "json"])
def test_current_is_none_when_the_build_does_not_match(damage: str, recipe_copy: tuple[Path, Path], tmp_path: Path) -> None:
    _, lock = recipe_copy
    image_builder = builder(tmp_path, lock)
    fake_build(image_builder, inputs="f" * 64 if damage == "inputs" else None)
    iso = image_builder.output / artifact_names("amd64")["iso"]
    if damage == "size":
        iso.write_bytes(b"I" * 4095)
    elif damage == "missing":
        iso.unlink()
    elif damage == "json":
        (image_builder.output / manifest_name("amd64")).write_text("{truncated")
    assert image_builder.current() is None


def test_build_without_apt_get_says_what_to_do(recipe_copy: tuple[Path, Path], tmp_path: Path) -> None:
    _, lock = recipe_copy
    (tmp_path / "no-tools").mkdir()
    image_builder = builder(tmp_path, lock)
    with pytest.raises(ImageError) as caught:
        image_builder.build()
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("`apt-get` is not installed.")
    assert "needs a Debian host" in message and "README.md" in message
    assert not image_builder.output.exists()
    assert not image_builder.work.exists()


def test_build_without_dpkg_deb_names_it(recipe_copy: tuple[Path, Path], tmp_path: Path) -> None:
    _, lock = recipe_copy
    tools = tmp_path / "no-tools"
    tools.mkdir()
    for tool in ("apt-get", "apt-cache"):
        (tools / tool).write_text("#!/bin/sh\nexit 99\n")
        (tools / tool).chmod(0o755)
    with pytest.raises(ImageError, match="^`dpkg-deb` is not installed"):
        builder(tmp_path, lock).build()


def test_image_build_command_without_apt_get_is_one_line(tmp_path: Path) -> None:
    empty = tmp_path / "empty-path"
    empty.mkdir()
    env = {**os.environ, "PATH": str(empty), "PYMACHINE_STORAGE_PATH": str(tmp_path / "home"), "PYMACHINE_CACHE_PATH": str(tmp_path / "cache")}
    done = subprocess.run([str(ROOT / ".venv" / "bin" / "pymachine"), "image", "build"], capture_output=True, text=True, env=env, timeout=30)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith("Error: `apt-get` is not installed. Building the boot image needs a Debian host")


# -- kernel modules ------------------------------------------------------------------


def modinfo_blob(depends: str = "", aliases: tuple[str, ...] = (), softdep: str = "") -> bytes:
    """The .modinfo strings of a module as they sit in a .ko: NUL-separated key=value."""
    items = ["license=GPL", f"depends={depends}", "retpoline=Y", "intree=Y", "name=x", "vermagic=6.1.0-99-amd64 SMP mod_unload"]
    items += [f"alias={a}" for a in aliases]
    if softdep:
        items.append(f"softdep={softdep}")
    return b"\x7fELF\x02\x01\x01" + b"\0" * 40 + b"\0".join(i.encode() for i in items) + b"\0" + b"\0parm=x_depends=nope" + b"\0" * 8


def test_modinfo_parses_depends_alias_and_softdep() -> None:
    blob = modinfo_blob("virtio,virtio_ring", ("pci:v00001AF4d00001000sv*sd*bc*sc*i*", "virtio:d00000001v*"), "pre: crc32c")
    info = _modinfo(blob)
    assert info == {
        "depends": ["virtio,virtio_ring"],
        "alias": ["pci:v00001AF4d00001000sv*sd*bc*sc*i*", "virtio:d00000001v*"],
        "softdep": ["pre: crc32c"],
    }
    assert _modinfo(modinfo_blob()) == {"depends": [""]}
    assert _modinfo(b"no modinfo here") == {}


def test_kernel_modules_closure_with_softdeps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kver = "6.1.0-99-amd64"
    base = tmp_path / "linux" / "lib" / "modules" / kver
    modules = {
        "kernel/drivers/net/virtio_net.ko": modinfo_blob("net_failover", ("virtio:d00000001v*",)),
        "kernel/drivers/net/net_failover.ko": modinfo_blob("failover"),
        "kernel/net/core/failover.ko": modinfo_blob(""),
        "kernel/lib/libcrc32c.ko": modinfo_blob("", (), "pre: crc32c"),
        "kernel/crypto/crc32c_generic.ko": modinfo_blob("", ("crypto-crc32c-generic", "crypto-crc32c", "crc32c")),
        "kernel/fs/unused.ko": modinfo_blob(""),
    }
    for rel, blob in modules.items():
        (base / rel).parent.mkdir(parents=True, exist_ok=True)
        (base / rel).write_bytes(blob)
    (base / "modules.builtin").write_text("kernel/lib/zlib_inflate.ko\n")
    monkeypatch.setattr(recipe, "KERNEL_MODULES", ["virtio-net", "libcrc32c", "crc32c_generic", "zlib_inflate"])
    monkeypatch.setitem(recipe.TARGETS, "amd64", dataclasses.replace(recipe.TARGETS["amd64"], modules_extra=()))
    entries = {e.path: e for e in ImageBuilder(tmp_path / "o", tmp_path / "w", arch="amd64")._kernel_modules(base, kver)}
    root = f"lib/modules/{kver}"
    carried = sorted(p for p in entries if p.endswith(".ko"))
    assert carried == sorted(f"{root}/{rel}" for rel in modules if "unused" not in rel)
    dep = entries[f"{root}/modules.dep"].data.decode().splitlines()
    assert "kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko" in dep
    assert "kernel/lib/libcrc32c.ko: kernel/crypto/crc32c_generic.ko" in dep  # the softdep, made hard
    assert "kernel/net/core/failover.ko:" in dep
    alias = entries[f"{root}/modules.alias"].data.decode().splitlines()
    assert "alias crypto-crc32c crc32c_generic" in alias
    assert "alias virtio:d00000001v* virtio_net" in alias
    assert entries[f"{root}/modules.builtin"].data == b"kernel/lib/zlib_inflate.ko\n"


def test_a_module_missing_from_the_kernel_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kver = "6.1.0-99-amd64"
    base = tmp_path / "linux" / "lib" / "modules" / kver
    base.mkdir(parents=True)
    (base / "modules.builtin").write_text("")
    monkeypatch.setattr(recipe, "KERNEL_MODULES", ["no_such_module"])
    monkeypatch.setitem(recipe.TARGETS, "amd64", dataclasses.replace(recipe.TARGETS["amd64"], modules_extra=()))
    with pytest.raises(ImageError, match=f"kernel module no_such_module is not in kernel {kver}") as caught:
        ImageBuilder(tmp_path / "o", tmp_path / "w", arch="amd64")._kernel_modules(base, kver)
    assert "KERNEL_MODULES in iso/recipe.py" in str(caught.value)
