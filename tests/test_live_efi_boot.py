"""The boot ISO's UEFI path, booted for real: systemd-boot from the EFI system partition
under OVMF (amd64) and AAVMF (arm64), and isolinux under SeaBIOS from the same amd64 ISO.

The ISOs are made here as the image build makes them (IsoWriter, FatImage, shared
extents), from the packages the build unpacks into the image cache,
$PYMACHINE_CACHE_PATH/image-work/<arch>/tree/<package>/: the kernel, systemd-boot-efi,
busybox-static, and isolinux and syslinux-common on amd64. The initramfs is a busybox
that prints a line and powers off, so a boot ends by itself in seconds. No network.
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from pymachine.guest.fat import FatImage
from pymachine.guest.iso9660 import PLATFORM_EFI, IsoWriter, boot_entries, efi_boot_arches, read_files
from pymachine.iso.archive import Entry, cpio_newc

from .conftest import ROOT, image_cache

pytestmark = [pytest.mark.live, pytest.mark.timeout(240)]

OVMF = Path("/usr/share/OVMF/OVMF_CODE.fd")
AAVMF = Path("/usr/share/AAVMF/AAVMF_CODE.fd")
#: A boot must reach the initramfs within this, or the test fails.
BOOT_DEADLINE = 60.0
STAMP = 1_700_000_000
INIT_SAYS = "pymachine-efi-test: /init runs"


@dataclass(frozen=True)
class Arch:
    name: str
    boot_file: str  # the removable-media path firmware looks for, in /EFI/BOOT
    systemd_boot: str  # systemd-boot-efi's binary for it
    console: str


ARCHES = {
    "amd64": Arch("amd64", "BOOTX64.EFI", "systemd-bootx64.efi", "ttyS0"),
    "arm64": Arch("arm64", "BOOTAA64.EFI", "systemd-bootaa64.efi", "ttyAMA0"),
}


def _natural(name: str) -> list[tuple[int, int | str]]:
    return [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", name)]


def package_file(arch: str, package_glob: str, *candidates: str) -> Path:
    """A file of an unpacked package in the image cache; fails (CI must provide it) when absent."""
    trees = image_cache() / "image-work" / arch / "tree"
    packages = sorted(trees.glob(package_glob), key=lambda p: _natural(p.name))
    for package in reversed(packages):  # the newest version first
        for candidate in candidates:
            found = sorted(package.glob(candidate), key=lambda p: _natural(p.name))
            if found:
                return found[-1]
    pytest.fail(f"no {' or '.join(candidates)} of {package_glob} in {trees}: the {arch} image build unpacks its packages there (run it with PYMACHINE_CACHE_PATH={image_cache()})")


def firmware(path: Path) -> Path:
    if not path.is_file():
        pytest.fail(f"{path} is missing: scripts/setup.sh installs the UEFI firmware (ovmf, qemu-efi-aarch64)")
    return path


def initramfs(arch: str) -> bytes:
    busybox = package_file(arch, "busybox-static", "bin/busybox", "usr/bin/busybox").read_bytes()
    init = f"#!/bin/busybox sh\n/bin/busybox echo '{INIT_SAYS} on {arch}'\n/bin/busybox poweroff -f\n"
    return cpio_newc([Entry.file("bin/busybox", busybox, 0o755), Entry.file("init", init.encode(), 0o755)], mtime=STAMP)


def make_iso(arch: Arch, path: Path) -> Path:
    """The boot ISO as the image build lays it out, with this test's initramfs."""
    kernel = package_file(arch.name, f"linux-image-*-{arch.name}", "boot/vmlinuz-*").read_bytes()
    loader = package_file(arch.name, "systemd-boot-efi", f"usr/lib/systemd/boot/efi/{arch.systemd_boot}").read_bytes()
    initrd = initramfs(arch.name)
    cmdline = f"console={arch.console} panic=-1"

    # On arm64 the ESP is over 32 MiB anyway (its kernel is 37 MB); padded to be sure, so
    # this boot always goes through the catalog's count of 0 ("to the end of the medium").
    esp = FatImage("PYMACHINE", timestamp=STAMP, min_size=(33 << 20) if arch.name == "arm64" else 0)
    esp.add_file(f"EFI/BOOT/{arch.boot_file}", loader)
    esp.add_file("loader/loader.conf", b"timeout 0\ndefault pymachine.conf\n")
    esp.add_file("loader/entries/pymachine.conf", f"title pymachine\nlinux /vmlinuz\ninitrd /initrd\noptions {cmdline} pymachine.test=efi\n".encode())
    esp.add_file("vmlinuz", kernel)
    esp.add_file("initrd", initrd)

    writer = IsoWriter("PYMACHINE", timestamp=STAMP)
    if arch.name == "amd64":
        writer.add_file("isolinux/isolinux.bin", package_file("amd64", "isolinux", "usr/lib/ISOLINUX/isolinux.bin").read_bytes())
        writer.add_file("isolinux/ldlinux.c32", package_file("amd64", "syslinux-common", "usr/lib/syslinux/modules/bios/ldlinux.c32").read_bytes())
        config = (ROOT / "iso" / "isolinux.cfg").read_text().replace("@CMDLINE@", f"{cmdline} pymachine.test=bios")
        writer.add_file("isolinux/isolinux.cfg", config.encode())
        writer.set_boot("isolinux/isolinux.bin", load_sectors=4)
    writer.add_fat_image("boot/esp.img", esp)
    writer.add_file_from_fat("boot/vmlinuz", esp, "vmlinuz")
    writer.add_file_from_fat("boot/initrd", esp, "initrd")
    writer.set_efi_boot("boot/esp.img")
    image = writer.write()

    files = read_files(image)
    assert files["boot/vmlinuz"] == kernel and files["boot/initrd"] == initrd
    assert image.count(kernel) == 1, "the kernel is stored once, for both boot paths"
    assert efi_boot_arches(image) == {arch.name}
    path.write_bytes(image)
    return path


@dataclass
class Boot:
    console: str
    to_linux: float | None  # seconds from QEMU's start to the kernel's first line
    to_init: float | None


def boot(argv: list[str], log: Path) -> Boot:
    """Run QEMU until the guest powers off (or the deadline); the serial console's text."""
    started = time.monotonic()
    process = subprocess.Popen([*argv, "-serial", f"file:{log}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    to_linux = to_init = None
    text = ""
    try:
        while time.monotonic() - started < BOOT_DEADLINE:
            text = log.read_text(errors="replace") if log.exists() else ""
            now = round(time.monotonic() - started, 1)
            if to_linux is None and "Linux version" in text:
                to_linux = now
            if to_init is None and INIT_SAYS in text:
                to_init = now
            if process.poll() is not None:
                break
            time.sleep(0.1)
    finally:
        if process.poll() is None:
            process.kill()  # by its PID
        output = process.communicate(timeout=30)[0].decode(errors="replace")
    text = log.read_text(errors="replace") if log.exists() else ""
    assert to_init is not None, f"no '{INIT_SAYS}' within {BOOT_DEADLINE:.0f} s; QEMU said:\n{output}\nconsole:\n{text[-3000:]}"
    return Boot(text, to_linux, to_init)


def qemu_x86(iso: Path, uefi: bool) -> list[str]:
    argv = ["qemu-system-x86_64", "-machine", "q35", "-accel", "tcg", "-m", "512", "-nodefaults", "-nic", "none", "-display", "none", "-no-reboot"]
    if uefi:
        argv += ["-drive", f"if=pflash,format=raw,readonly=on,file={firmware(OVMF)}"]
    return argv + ["-cdrom", str(iso)]


@pytest.fixture(scope="module")
def amd64_iso(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_iso(ARCHES["amd64"], tmp_path_factory.mktemp("efi") / "amd64.iso")


@pytest.fixture(scope="module")
def arm64_iso(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_iso(ARCHES["arm64"], tmp_path_factory.mktemp("efi") / "arm64.iso")


def test_amd64_iso_boots_by_uefi_through_systemd_boot(amd64_iso: Path, tmp_path: Path, record_property) -> None:
    result = boot(qemu_x86(amd64_iso, uefi=True), tmp_path / "serial.log")
    record_property("seconds_to_linux", result.to_linux)
    record_property("seconds_to_init", result.to_init)
    assert "EFI stub" in result.console, "the kernel was started by UEFI firmware"
    assert "Linux version" in result.console
    command_line = re.search(r"Kernel command line: (.*)", result.console).group(1)
    assert "pymachine.test=efi" in command_line, "the options come from systemd-boot's loader entry"
    assert f"{INIT_SAYS} on amd64" in result.console


def test_the_same_amd64_iso_still_boots_by_bios_through_isolinux(amd64_iso: Path, tmp_path: Path, record_property) -> None:
    result = boot(qemu_x86(amd64_iso, uefi=False), tmp_path / "serial.log")
    record_property("seconds_to_linux", result.to_linux)
    record_property("seconds_to_init", result.to_init)
    assert "EFI stub" not in result.console
    command_line = re.search(r"Kernel command line: (.*)", result.console).group(1)
    assert "pymachine.test=bios" in command_line, "the options come from isolinux.cfg"
    assert f"{INIT_SAYS} on amd64" in result.console


def test_arm64_iso_boots_by_uefi_through_systemd_boot(arm64_iso: Path, tmp_path: Path, record_property) -> None:
    (entry,) = boot_entries(arm64_iso.read_bytes())
    assert entry.platform == PLATFORM_EFI
    assert entry.sectors == 0, "an ESP over 32 MiB: the count says 'to the end of the medium'"
    argv = [
        "qemu-system-aarch64", "-machine", "virt", "-cpu", "cortex-a72", "-accel", "tcg", "-m", "1024",
        "-nodefaults", "-nic", "none", "-display", "none", "-no-reboot",
        "-drive", f"if=pflash,format=raw,readonly=on,file={firmware(AAVMF)}",
        "-device", "virtio-scsi-pci", "-device", "scsi-cd,drive=cd0",
        "-drive", f"if=none,id=cd0,media=cdrom,readonly=on,file={arm64_iso}",
    ]  # fmt: skip
    result = boot(argv, tmp_path / "serial.log")
    record_property("seconds_to_linux", result.to_linux)
    record_property("seconds_to_init", result.to_init)
    assert "EFI stub" in result.console
    assert "Linux version" in result.console and "aarch64" in result.console
    command_line = re.search(r"Kernel command line: (.*)", result.console).group(1)
    assert "pymachine.test=efi" in command_line
    assert f"{INIT_SAYS} on arm64" in result.console
