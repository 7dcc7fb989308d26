"""An arm64 guest booted for real by the qemu driver: Debian's arm64 kernel by direct boot
on the virt board (under TCG on an x86-64 host, KVM or HVF on an arm64 one), with a tiny
busybox initramfs, until the console shows the kernel ran /init.

The kernel and busybox come from the image build's unpacked packages,
$PYMACHINE_CACHE_PATH/image-work/arm64/tree/<package>/, which CI has. Without them this
test fails rather than skips, as the boot image tests do without their image.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from pymachine.driver import BootMedia
from pymachine.drivers.qemu import QemuDriver, QemuOptions
from pymachine.iso.archive import Entry, cpio_newc
from pymachine.runner import Runner

from .conftest import image_cache
from .contract import make_spec, wait_for

pytestmark = [pytest.mark.live, pytest.mark.timeout(300)]

MARKER = "pymachine-arm64-init-reached"
INIT = f"""#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
echo "{MARKER} $(/bin/busybox uname -m)"
/bin/busybox poweroff -f
"""


def arm64_packages() -> tuple[Path, Path]:
    """Debian's arm64 kernel image and static busybox, unpacked by the image build."""
    tree = image_cache() / "image-work" / "arm64" / "tree"
    kernels = sorted(tree.glob("linux-image-*-arm64/boot/vmlinuz-*"))
    busybox = next((p for p in (tree / "busybox-static" / "usr" / "bin" / "busybox", tree / "busybox-static" / "bin" / "busybox") if p.exists()), None)
    if not kernels or busybox is None:
        pytest.fail(f"no unpacked linux-image-*-arm64 and busybox-static under {tree}: build the arm64 image (PYMACHINE_CACHE_PATH={image_cache()}), or unpack them there as docs/drivers.md shows")
    return kernels[-1], busybox


def test_arm64_direct_boot_reaches_init(tmp_path: Path) -> None:
    kernel, busybox = arm64_packages()
    initrd = tmp_path / "initrd"
    initrd.write_bytes(
        cpio_newc(
            [
                Entry.file("bin/busybox", busybox.read_bytes(), 0o755),
                Entry.file("init", INIT.encode(), 0o755),
                Entry.directory("proc"),
                Entry.directory("dev"),
            ]
        )
    )
    # The console is the image's business (its manifest's command line), not the driver's.
    boot = BootMedia(iso=tmp_path / "no.iso", kernel=kernel, initrd=initrd, cmdline="console=ttyAMA0 panic=-1")
    spec = dataclasses.replace(make_spec(tmp_path / "m", "arm64boot", boot), arch="arm64")
    driver = QemuDriver(spec, QemuOptions(restrict_network=True), Runner())
    driver.create()
    try:
        driver.start()
        log = driver.serial_log()
        assert log is not None

        def console() -> str:
            return log.read_text(errors="replace") if log.exists() else ""

        reached = wait_for(lambda: MARKER in console(), 240, interval=0.2)
        tail = "\n".join(console().splitlines()[-15:])
        assert reached, f"the arm64 kernel did not reach /init within 240 s; its console ends:\n{tail}"
        text = console()
        assert f"{MARKER} aarch64" in text
        assert "Machine model: linux,dummy-virt" in text  # QEMU's virt board, by device tree
        details = driver.details()
        assert details["arch"] == "arm64" and details["firmware"] == "none (direct kernel boot)"
    finally:
        driver.remove()
