"""Shared fixtures.

Live tests (marked `live`) boot real VMs under QEMU with the boot image from the
cache folder named by $PYMACHINE_CACHE_PATH (default ~/.cache/pymachine-test), which
`.ci/run` builds before the tests. Every guest runs with restrict=on: nothing it sends
leaves this host, and every host forward binds 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from machine.home import Home
from machine.image import MANIFEST_NAME, BootImage
from machine.progress import RecordingProgress

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = Path.home() / ".cache" / "pymachine-test"


def image_cache() -> Path:
    return Path(os.environ.get("PYMACHINE_CACHE_PATH") or DEFAULT_CACHE)


@pytest.fixture
def home(tmp_path: Path) -> Home:
    """A Home on a fresh folder, sharing the boot image cache."""
    return Home(tmp_path / "home", progress=RecordingProgress(), cache=image_cache())


@pytest.fixture(scope="session")
def boot_image() -> BootImage:
    """The built boot image; live tests fail (not skip) without it, as CI must build it."""
    manifest = image_cache() / MANIFEST_NAME
    if not manifest.exists():
        pytest.fail(f"no boot image in {image_cache()}: run `PYMACHINE_CACHE_PATH={image_cache()} pymachine image build`")
    return BootImage.from_manifest(manifest)


@pytest.fixture(scope="session")
def busybox_rootfs(tmp_path_factory: pytest.TempPathFactory, boot_image: BootImage) -> Path:
    """A tarball of a tiny root filesystem (busybox) for `docker import`: no registry needed."""
    busybox = image_cache() / "image-work" / "tree" / "busybox-static" / "bin" / "busybox"
    if not busybox.exists():
        pytest.fail(f"{busybox} is missing: the image build leaves it there")
    root = tmp_path_factory.mktemp("rootfs")
    (root / "bin").mkdir()
    shutil.copy2(busybox, root / "bin" / "busybox")
    for applet in ("sh", "httpd", "nc", "echo", "cat", "sleep", "ls", "sed", "wc", "head", "dd", "true"):
        (root / "bin" / applet).symlink_to("busybox")
    (root / "www").mkdir()
    (root / "www" / "index.html").write_text("hello from the container\n")
    (root / "tmp").mkdir()
    tarball = tmp_path_factory.mktemp("rootfs-tar") / "busybox.tar"
    subprocess.run(["tar", "-C", str(root), "-cf", str(tarball), "."], check=True)
    return tarball
