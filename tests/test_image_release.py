"""Which boot image a machine gets, and from where: `--iso PATH|URL`, a local build, or the
installed image distribution; releases downloaded, checked, and kept apart."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from pathlib import Path

import pytest

from pymachine import image as image_module
from pymachine.errors import ImageError
from pymachine.guest.fat import FatImage
from pymachine.guest.iso9660 import IsoWriter
from pymachine.image import FROM_BUILD, FROM_INSTALLED, FROM_ISO, BootImage, candidates, choose, manifest_name

KERNEL = b"MZ a kernel" * 100
INITRD = b"\x1f\x8b an initrd" * 100


def boot_iso(path: Path, efi_file: str = "BOOTX64.EFI") -> Path:
    """A pymachine-labelled ISO whose EFI system partition boots `efi_file`, with the
    kernel and initrd shared between the ESP and the ISO 9660 tree, as a build makes it."""
    esp = FatImage("PYMACHINE", timestamp=0)
    esp.add_file(f"EFI/BOOT/{efi_file}", b"MZ not really an EFI program")
    esp.add_file("vmlinuz", KERNEL)
    esp.add_file("initrd", INITRD)
    writer = IsoWriter("PYMACHINE", timestamp=0)
    writer.add_fat_image("boot/esp.img", esp)
    writer.add_file_from_fat("boot/vmlinuz", esp, "vmlinuz")
    writer.add_file_from_fat("boot/initrd", esp, "initrd")
    writer.set_efi_boot("boot/esp.img")
    path.write_bytes(writer.write())
    return path


def write_image(folder: Path, arch: str = "amd64", version: str = "0.1.0", with_kernel: bool = True) -> Path:
    """An image folder as a build (with_kernel) or an image distribution leaves it."""
    folder.mkdir(parents=True, exist_ok=True)
    iso = boot_iso(folder / f"pymachine-{version}-{arch}.iso", "BOOTX64.EFI" if arch == "amd64" else "BOOTAA64.EFI")
    files = {"iso": iso.name, "engine": f"docker-engine-26.1.5-{arch}.tar.zst"}
    (folder / files["engine"]).write_bytes(f"engine {arch} {version}".encode())
    if with_kernel:
        files["kernel"], files["initrd"] = f"pymachine-{version}-{arch}.vmlinuz", f"pymachine-{version}-{arch}.initrd"
        (folder / files["kernel"]).write_bytes(KERNEL)
        (folder / files["initrd"]).write_bytes(INITRD)
    artifacts = {}
    for kind, name in files.items():
        data = (folder / name).read_bytes()
        artifacts[kind] = {"file": name, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    artifacts["engine"]["version"] = "26.1.5"
    manifest = folder / manifest_name(arch)
    manifest.write_text(json.dumps({"version": version, "arch": arch, "cmdline": "console=ttyS0", "artifacts": artifacts}))
    return manifest


class Server:
    """A release folder served over HTTP on 127.0.0.1, remembering what was asked."""

    def __init__(self, folder: Path) -> None:
        requests: list[str] = []

        class Quiet(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(folder), **kwargs)

            def do_GET(self) -> None:
                requests.append(self.path)
                super().do_GET()

            def log_message(self, *args) -> None:
                pass

        self.requests = requests
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"


@pytest.fixture
def release(tmp_path: Path):
    folder = tmp_path / "release"
    write_image(folder, with_kernel=True)
    server = Server(folder)
    yield folder, server
    server.httpd.shutdown()
    server.httpd.server_close()


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_release_needs_only_its_manifest_iso_and_engine(release, tmp_path: Path) -> None:
    folder, server = release
    cache = tmp_path / "cache"
    image = BootImage.locate(cache, f"{server.base}/pymachine-0.1.0-amd64.iso", allow_http=True)
    assert image.source == FROM_ISO and image.iso.read_bytes() == (folder / "pymachine-0.1.0-amd64.iso").read_bytes()
    assert image.engine_version == "26.1.5"
    assert sorted(server.requests) == sorted(["/docker-engine-26.1.5-amd64.tar.zst", f"/{manifest_name()}", "/pymachine-0.1.0-amd64.iso"])
    # Direct kernel boot still works: the kernel and initrd are read from the ISO.
    pinned = image.pin(tmp_path / "machine")
    assert pinned.kernel and pinned.kernel.read_bytes() == KERNEL
    assert pinned.initrd and pinned.initrd.read_bytes() == INITRD
    # A second create with the same URL downloads nothing.
    BootImage.locate(cache, f"{server.base}/pymachine-0.1.0-amd64.iso", allow_http=True)
    assert len(server.requests) == 3


def test_plain_http_needs_the_users_say_so(release, tmp_path: Path) -> None:
    folder, server = release
    with pytest.raises(ImageError) as caught:
        BootImage.locate(tmp_path / "cache", f"{server.base}/pymachine-0.1.0-amd64.iso")
    assert "is not HTTPS" in str(caught.value) and "--allow-http" in str(caught.value)
    assert server.requests == []


@pytest.mark.parametrize("damage", ["junk manifest", "tampered iso", "tampered engine", "other arch", "not our iso"])
def test_a_bad_release_replaces_nothing(release, tmp_path: Path, damage: str) -> None:
    folder, server = release
    cache = tmp_path / "cache"
    write_image(cache)  # the user's own build, which must survive
    before = tree_digest(cache)
    manifest = folder / manifest_name()
    if damage == "junk manifest":
        manifest.write_text("<html>not found</html>")
    elif damage == "tampered iso":
        (folder / "pymachine-0.1.0-amd64.iso").write_bytes(b"\0" * 4096)
    elif damage == "tampered engine":
        (folder / "docker-engine-26.1.5-amd64.tar.zst").write_bytes(b"evil")
    elif damage == "other arch":
        data = json.loads(manifest.read_text())
        data["arch"] = "arm64"
        manifest.write_text(json.dumps(data))
    elif damage == "not our iso":
        iso = folder / "pymachine-0.1.0-amd64.iso"
        iso.write_bytes(b"\0" * 40000)
        data = json.loads(manifest.read_text())
        data["artifacts"]["iso"]["sha256"] = hashlib.sha256(iso.read_bytes()).hexdigest()
        manifest.write_text(json.dumps(data))
    with pytest.raises(ImageError) as caught:
        BootImage.locate(cache, f"{server.base}/pymachine-0.1.0-amd64.iso", allow_http=True)
    assert "\n" not in str(caught.value)
    assert tree_digest(cache) == before, "a release that fails its checks must not touch the cache"
    assert BootImage.locate(cache).source == FROM_BUILD


def test_a_url_that_is_not_the_releases_iso_is_refused(release, tmp_path: Path) -> None:
    folder, server = release
    with pytest.raises(ImageError, match="not the ISO its release manifest names"):
        BootImage.locate(tmp_path / "cache", f"{server.base}/other.iso", allow_http=True)


def test_a_missing_release_is_a_one_line_error(tmp_path: Path, release) -> None:
    folder, server = release
    with pytest.raises(ImageError) as failure:
        BootImage.locate(tmp_path / "cache", f"{server.base}/nowhere/pymachine-0.1.0-amd64.iso", allow_http=True)
    assert "HTTP 404" in str(failure.value) and "\n" not in str(failure.value)


def test_an_iso_of_the_other_architecture_is_refused_naming_the_fix(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    write_image(cache)
    iso = cache / "pymachine-0.1.0-amd64.iso"
    arm = boot_iso(tmp_path / "arm.iso", "BOOTAA64.EFI")
    assert BootImage.locate(cache, str(iso), arch="amd64").arch == "amd64"
    with pytest.raises(ImageError) as caught:
        BootImage.locate(cache, str(arm), arch="amd64")
    assert str(caught.value) == (
        f"{arm} is an arm64 boot image, and this machine's guest is amd64. "
        "Pass the amd64 image to --iso, or run `pymachine create --arch arm64`"
    )


def test_a_truncated_iso_is_refused(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    write_image(cache)
    whole = (cache / "pymachine-0.1.0-amd64.iso").read_bytes()
    cut = tmp_path / "cut.iso"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ImageError, match="is cut short"):
        BootImage.locate(cache, str(cut))


# -- which image: the local build, the installed one --------------------------------------


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "site-packages" / "pymachine" / "images"
    monkeypatch.setattr(image_module, "installed_images", lambda: folder)
    return folder


def test_the_installed_image_serves_when_there_is_no_build(installed: Path, tmp_path: Path) -> None:
    write_image(installed / "arm64", arch="arm64", with_kernel=False)
    image = BootImage.locate(tmp_path / "cache", arch="arm64")
    assert (image.source, image.arch, image.kernel) == (FROM_INSTALLED, "arm64", None)
    pinned = image.pin(tmp_path / "machine")
    assert pinned.kernel and pinned.kernel.read_bytes() == KERNEL, "read from the ISO"


def test_a_local_build_wins_unless_it_is_older(installed: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    write_image(installed / "amd64", version="0.2.0", with_kernel=False)
    write_image(cache, version="0.2.0")
    assert BootImage.locate(cache).source == FROM_BUILD
    write_image(cache, version="0.1.9")
    notes: list[str] = []
    image = BootImage.locate(cache, note=notes.append)
    assert image.source == FROM_INSTALLED
    assert notes == [f"Using the installed amd64 image 0.2.0, not the older local build 0.1.9 in {cache} (rebuild it with `pymachine image build --arch amd64`)"]
    assert [c.source for c in candidates(cache, "amd64")] == [FROM_BUILD, FROM_INSTALLED]


def test_no_image_of_an_architecture_says_how_to_get_one(installed: Path, tmp_path: Path) -> None:
    write_image(installed / "arm64", arch="arm64", with_kernel=False)
    with pytest.raises(ImageError) as caught:
        BootImage.locate(tmp_path / "cache", arch="amd64")
    assert str(caught.value) == (
        "No amd64 boot image here. Install it with `pipx inject pymachine-vm pymachine-vm-image-amd64` "
        "(or `pip install pymachine-vm-image-amd64`), or build it on Debian with `pymachine image build --arch amd64`"
    )
    with pytest.raises(ImageError):
        choose([], "amd64")
