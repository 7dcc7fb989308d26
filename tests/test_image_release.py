"""`create --iso URL`: a published release is fetched into the cache and checked."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from pathlib import Path

import pytest

from pymachine.errors import ImageError
from pymachine.image import BootImage, manifest_name


@pytest.fixture
def release(tmp_path: Path):
    """A release folder served over HTTP on 127.0.0.1: ISO, kernel, initrd, bundle, manifest."""
    folder = tmp_path / "release"
    folder.mkdir()
    files = {"iso": "pymachine-x.iso", "kernel": "pymachine-x.vmlinuz", "initrd": "pymachine-x.initrd", "engine": "docker-engine-20.10.24-amd64.tar.zst"}
    artifacts = {}
    for kind, name in files.items():
        data = f"{kind} bytes".encode() * 100
        (folder / name).write_bytes(data)
        artifacts[kind] = {"file": name, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    artifacts["engine"]["version"] = "20.10.24"
    (folder / manifest_name()).write_text(json.dumps({"version": "0.1.0", "cmdline": "console=ttyS0", "artifacts": artifacts}))

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(folder), **kwargs)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_release_url_brings_every_file_checked(release, tmp_path: Path) -> None:
    folder, base = release
    cache = tmp_path / "cache"
    image = BootImage.locate(cache, f"{base}/pymachine-x.iso")
    assert image.iso.read_bytes() == (folder / "pymachine-x.iso").read_bytes()
    assert image.kernel and image.initrd, "the kernel and initrd come too, for direct boot"
    assert image.engine_version == "20.10.24"
    assert image.engine_sha256 == hashlib.sha256((folder / "docker-engine-20.10.24-amd64.tar.zst").read_bytes()).hexdigest()
    assert not list(cache.glob(".*.partial"))


def test_a_corrupted_download_is_refused_and_not_kept(release, tmp_path: Path) -> None:
    folder, base = release
    (folder / "pymachine-x.initrd").write_bytes(b"tampered")
    cache = tmp_path / "cache"
    with pytest.raises(ImageError, match="does not match the sha256"):
        BootImage.locate(cache, f"{base}/pymachine-x.iso")
    assert not (cache / "pymachine-x.initrd").exists()


def test_a_url_that_is_not_the_releases_iso_is_refused(release, tmp_path: Path) -> None:
    folder, base = release
    with pytest.raises(ImageError, match="not the ISO its release manifest names"):
        BootImage.locate(tmp_path / "cache", f"{base}/other.iso")


def test_a_missing_release_is_a_one_line_error(tmp_path: Path, release) -> None:
    folder, base = release
    with pytest.raises(ImageError) as failure:
        BootImage.locate(tmp_path / "cache", f"{base}/nowhere/pymachine-x.iso")
    assert "HTTP 404" in str(failure.value) and "\n" not in str(failure.value)


def boot_iso(path: Path, efi_file: str) -> Path:
    """A pymachine-labelled ISO whose EFI system partition boots `efi_file`."""
    from pymachine.guest.fat import FatImage
    from pymachine.guest.iso9660 import IsoWriter

    esp = FatImage("PYMACHINE", timestamp=0)
    esp.add_file(f"EFI/BOOT/{efi_file}", b"MZ not really an EFI program")
    writer = IsoWriter("PYMACHINE", timestamp=0)
    writer.add_fat_image("boot/esp.img", esp)
    writer.set_efi_boot("boot/esp.img")
    path.write_bytes(writer.write())
    return path


def test_an_iso_of_the_other_architecture_is_refused_naming_the_fix(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    iso = boot_iso(cache / "pymachine-0.1.0-amd64.iso", "BOOTX64.EFI")
    bundle = cache / "docker-engine-26.1.5-amd64.tar.zst"
    bundle.write_bytes(b"bundle")
    artifacts = {
        "iso": {"file": iso.name, "sha256": hashlib.sha256(iso.read_bytes()).hexdigest(), "size": iso.stat().st_size},
        "engine": {"file": bundle.name, "sha256": hashlib.sha256(b"bundle").hexdigest(), "size": 6, "version": "26.1.5"},
    }
    (cache / manifest_name("amd64")).write_text(json.dumps({"version": "0.1.0", "arch": "amd64", "artifacts": artifacts}))
    arm = boot_iso(tmp_path / "arm.iso", "BOOTAA64.EFI")
    assert BootImage.locate(cache, str(iso), arch="amd64").arch == "amd64"
    with pytest.raises(ImageError) as caught:
        BootImage.locate(cache, str(arm), arch="amd64")
    assert str(caught.value) == (
        f"{arm} is an arm64 boot image, and this machine's guest is amd64. "
        "Pass the amd64 image to --iso, or run `pymachine create --arch arm64`"
    )
