"""The boot image as the core sees it: which one a machine boots, and where its files are.

Where an image can come from, in the order `create` looks:

1. `--iso PATH|URL`, when given. A URL is a published release: its manifest, ISO and
   engine bundle are downloaded into a folder of their own under the cache and checked.
2. A local build (`pymachine image build`, see iso/), in the cache folder.
3. The installed image: the `pymachine-vm-image-ARCH` distribution that pip installs
   with pymachine, into the package's `images/ARCH/` folder.

A local build older than the installed image is passed over, and `create` says so; the
same choice is what `pymachine image ls` shows. Installed images and releases carry the
kernel and initrd only inside their ISO: they are read from it when a machine boots
them directly.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pymachine import __version__
from pymachine.arch import AMD64
from pymachine.engineoptions import DOCKERD_26_1, DockerdFlags
from pymachine.errors import ImageError
from pymachine.guest.iso9660 import SECTOR, efi_boot_arches, read_file, volume_id
from pymachine.guest.provision import EngineBundle
from pymachine.store import MachineConfig

BOOT_VOLUME_ID = "PYMACHINE"
#: The distributions that carry each architecture's image (see iso/dist.py).
IMAGE_DISTRIBUTION = "pymachine-vm-image-{arch}"
#: Where the kernel and initrd sit inside every boot ISO.
ISO_KERNEL = "boot/vmlinuz"
ISO_INITRD = "boot/initrd"

#: Sources, as `image ls` names them.
FROM_ISO = "--iso"
FROM_BUILD = "local build"
FROM_INSTALLED = "installed"

Progress = Callable[[str, int], Callable[[int, int], None]]


def manifest_name(arch: str = AMD64, version: str = __version__) -> str:
    """The manifest an image of `arch` keeps beside its files."""
    return f"pymachine-{version}-{arch}.manifest.json"


def installed_images() -> Path:
    """Where the image distributions put their files: the pymachine package's images/."""
    return Path(__file__).parent / "images"


def how_to_get(arch: str) -> str:
    """The commands that give this host an image of `arch`."""
    dist = IMAGE_DISTRIBUTION.format(arch=arch)
    return f"Install it with `pipx inject pymachine-vm {dist}` (or `pip install {dist}`), or build it on Debian with `pymachine image build --arch {arch}`"


@dataclass(frozen=True)
class BootImage:
    """What a machine boots and installs."""

    iso: Path
    version: str
    arch: str = AMD64
    kernel: Path | None = None
    initrd: Path | None = None
    pvh_kernel: Path | None = None
    cmdline: str = ""
    engine_bundle: Path | None = None
    engine_sha256: str = ""
    engine_version: str = ""
    #: FROM_BUILD, FROM_INSTALLED or FROM_ISO
    source: str = FROM_BUILD
    #: the engine's dockerd flags as the manifest records them (None: it records none)
    dockerd: DockerdFlags | None = None

    @property
    def engine(self) -> EngineBundle:
        """The engine bundle provisioning installs with this image."""
        if self.engine_bundle is None:
            raise ImageError(f"The boot image {self.iso.name} comes without its engine bundle", how_to_get(self.arch))
        return EngineBundle(self.engine_bundle, self.engine_sha256, self.engine_version)

    @property
    def dockerd_flags(self) -> DockerdFlags:
        """The flags --engine-opt is checked against: the manifest's, else Docker 26.1's."""
        return self.dockerd or DOCKERD_26_1

    @classmethod
    def from_manifest(cls, manifest_path: Path, source: str = FROM_BUILD) -> BootImage:
        try:
            manifest = json.loads(manifest_path.read_text())
            artifacts: dict[str, Any] = manifest["artifacts"]
        except FileNotFoundError:
            raise ImageError(f"No boot image in {manifest_path.parent}", "Run `pymachine image build`") from None
        except (OSError, ValueError, KeyError, TypeError):
            raise ImageError(f"The image manifest {manifest_path} is damaged", "Run `pymachine image build` again") from None
        directory = manifest_path.parent

        def path(kind: str) -> Path | None:
            item = artifacts.get(kind)
            if not item:
                return None
            found = directory / item["file"]
            return found if found.is_file() else None

        iso = path("iso")
        if iso is None:
            raise ImageError(f"The boot ISO named in {manifest_path} is missing", "Run `pymachine image build` again")
        engine = artifacts.get("engine", {})
        return cls(
            iso=iso,
            version=str(manifest.get("version", "")),
            arch=str(manifest.get("arch", AMD64)),
            kernel=path("kernel"),
            initrd=path("initrd"),
            pvh_kernel=path("vmlinux"),
            cmdline=str(manifest.get("cmdline", "")),
            engine_bundle=path("engine"),
            engine_sha256=str(engine.get("sha256", "")),
            engine_version=str(engine.get("version", "")),
            source=source,
            dockerd=DockerdFlags.from_manifest(engine.get("dockerd"), f"the image's dockerd {engine.get('version', '')}".rstrip()),
        )

    @classmethod
    def locate(cls, cache: Path, iso: str | None = None, download_progress: Progress | None = None, arch: str = AMD64, allow_http: bool = False, note: Callable[[str], None] | None = None) -> BootImage:
        """The `arch` image a new machine boots: `iso` when given, else the local build or
        the installed image, whichever is newer (see the module's docstring)."""
        if iso is None:
            return choose(candidates(Path(cache), arch), arch, note)
        if iso.startswith(("http://", "https://")):
            return cls.from_release(iso, Path(cache), download_progress, arch, allow_http)
        if "://" in iso:
            raise ImageError(f"--iso takes a path or an https:// URL, not {iso}", "Run `pymachine create --help`")
        return cls.from_iso_file(Path(iso), Path(cache), arch, note)

    @classmethod
    def from_iso_file(cls, path: Path, cache: Path, arch: str, note: Callable[[str], None] | None = None) -> BootImage:
        """A local ISO, with the engine bundle of the image `create` would use otherwise."""
        iso_path = path.expanduser().resolve()
        if not iso_path.is_file():
            raise ImageError(f"No ISO at {iso_path}", "Check the path given to --iso")
        check_iso(iso_path, arch)
        try:
            known = choose(candidates(cache, arch), arch, note)
        except ImageError:
            raise ImageError(f"--iso gives the boot ISO, but the engine bundle that provisioning installs is in no {arch} image here", how_to_get(arch)) from None
        # A foreign ISO boots from the CD only: its kernel may not match the known one's.
        same = _same_file(known.iso, iso_path)
        return replace(
            known,
            iso=iso_path,
            version=known.version if same else "custom",
            kernel=known.kernel if same else None,
            initrd=known.initrd if same else None,
            pvh_kernel=known.pvh_kernel if same else None,
            source=FROM_ISO,
        )

    @classmethod
    def from_release(cls, url: str, cache: Path, progress: Progress | None = None, arch: str = AMD64, allow_http: bool = False) -> BootImage:
        """A published release: the ISO at `url`, its manifest and its engine bundle beside it.

        Everything is downloaded into a fresh temporary folder and checked (the manifest
        names this ISO and this architecture, every file matches its sha256, the ISO is a
        pymachine boot image of that architecture) before the folder becomes the release's
        own, cache/releases/KEY/. Nothing that fails a check replaces anything.
        """
        if url.startswith("http://") and not allow_http:
            raise ImageError(f"{url} is not HTTPS: its files could be changed on the way", "Use an https:// URL, or pass --allow-http if you trust the network")
        base, name = url.rsplit("/", 1)
        releases = cache / "releases"
        folder = releases / hashlib.sha256(base.encode()).hexdigest()[:16]
        manifest_file = manifest_name(arch)
        if (folder / manifest_file).is_file():
            try:
                kept = cls.from_manifest(folder / manifest_file, FROM_ISO)
                if kept.iso.name == name and kept.engine_bundle is not None:
                    return kept
            except ImageError:
                pass
        releases.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".download-", dir=releases))
        try:
            _download(f"{base}/{manifest_file}", staging / manifest_file, None, progress)
            try:
                manifest = json.loads((staging / manifest_file).read_text())
                artifacts = manifest["artifacts"]
                wanted = {kind: artifacts[kind] for kind in ("iso", "engine")}
                for item in wanted.values():
                    if not isinstance(item["file"], str) or "/" in item["file"] or not isinstance(item["sha256"], str):
                        raise ValueError(item)
            except (ValueError, KeyError, TypeError):
                raise ImageError(f"{base}/{manifest_file} is not a pymachine image manifest", "Check the URL given to --iso") from None
            if wanted["iso"]["file"] != name:
                raise ImageError(f"{url} is not the ISO its release manifest names ({wanted['iso']['file']})", "Pass the URL of the release's ISO to --iso")
            if manifest.get("arch", AMD64) != arch:
                raise ImageError(f"{url} is an {manifest.get('arch')} image, and this machine's guest is {arch}", f"Pass the {arch} release's ISO to --iso")
            for item in wanted.values():
                _download(f"{base}/{item['file']}", staging / item["file"], item["sha256"], progress)
            check_iso(staging / name, arch)
            manifest["artifacts"] = wanted
            (staging / manifest_file).write_text(json.dumps(manifest, indent=2, sort_keys=True))
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(staging, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return cls.from_manifest(folder / manifest_file, FROM_ISO)

    def pin(self, directory: Path, kernel: bool = True) -> BootImage:
        """Hard-link (or copy) the boot files into a machine's folder.

        A later image build replaces the cache's files; a machine keeps booting the
        image it was created with until `pymachine upgrade`. `kernel` False keeps the ISO
        alone, for drivers that cannot boot a kernel directly. An image whose kernel and
        initrd live only inside its ISO (installed, or a release) has them read from it.
        """
        target = directory / "boot"
        target.mkdir(parents=True, exist_ok=True)

        def keep(source: Path | None, name: str, inside: str = "") -> Path | None:
            dest = target / name
            tmp = target / f".{name}.tmp"
            tmp.unlink(missing_ok=True)
            if source is None:
                if not inside:
                    return None
                try:
                    tmp.write_bytes(read_file(self.iso, inside))
                except (KeyError, ValueError, OSError):
                    return None
            else:
                try:
                    os.link(source, tmp)
                except OSError:
                    shutil.copyfile(source, tmp)
            os.replace(tmp, dest)
            return dest

        return replace(
            self,
            iso=keep(self.iso, "boot.iso") or self.iso,
            kernel=keep(self.kernel, "vmlinuz", ISO_KERNEL) if kernel else None,
            initrd=keep(self.initrd, "initrd", ISO_INITRD) if kernel else None,
            pvh_kernel=keep(self.pvh_kernel, "vmlinux") if kernel else None,
        )


@dataclass(frozen=True)
class ImageCandidate:
    """One place an image of one architecture can come from, as `image ls` lists it."""

    source: str
    arch: str
    manifest: Path
    image: BootImage | None
    #: why it cannot be used ("" when it can)
    problem: str = ""

    @property
    def version(self) -> str:
        return self.image.version if self.image else ""

    def as_dict(self, chosen: bool = False) -> dict[str, Any]:
        return {
            "Source": self.source,
            "Arch": self.arch,
            "Version": self.version,
            "Chosen": chosen,
            "ISO": str(self.image.iso) if self.image else "",
            "Engine": self.image.engine_version if self.image else "",
            "Manifest": str(self.manifest),
            "Problem": self.problem,
        }


def candidates(cache: Path, arch: str) -> list[ImageCandidate]:
    """The local build and the installed image of `arch`, where either exists."""
    found = []
    for source, manifest in ((FROM_BUILD, Path(cache) / manifest_name(arch)), (FROM_INSTALLED, installed_images() / arch / manifest_name(arch))):
        if not manifest.exists():
            continue
        try:
            found.append(ImageCandidate(source, arch, manifest, BootImage.from_manifest(manifest, source)))
        except ImageError as exc:
            found.append(ImageCandidate(source, arch, manifest, None, str(exc)))
    return found


def choose(found: list[ImageCandidate], arch: str, note: Callable[[str], None] | None = None) -> BootImage:
    """The image `create` uses: the local build, unless the installed image is newer."""
    usable = {c.source: c for c in found if c.image is not None}
    build, installed = usable.get(FROM_BUILD), usable.get(FROM_INSTALLED)
    if build and installed and version_key(build.version) < version_key(installed.version):
        if note:
            note(f"Using the installed {arch} image {installed.version}, not the older local build {build.version} in {build.manifest.parent} (rebuild it with `pymachine image build --arch {arch}`)")
        return installed.image  # type: ignore[return-value]
    chosen = build or installed
    if chosen is None:
        broken = next((c.problem for c in found if c.problem), "")
        raise ImageError(f"No {arch} boot image here" + (f" ({broken.rstrip('.')})" if broken else ""), how_to_get(arch))
    return chosen.image  # type: ignore[return-value]


def version_key(version: str) -> tuple[int, ...]:
    """0.1.10 > 0.1.9; anything unreadable sorts first."""
    parts = []
    for part in version.split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def check_iso(path: Path, arch: str) -> None:
    """Refuse a file that is not a pymachine boot ISO of `arch`, in one line."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(17 * SECTOR)
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
    except OSError as exc:
        raise ImageError(f"Cannot read {path}: {exc.strerror}", "Check the path given to --iso") from None
    if len(head) < 17 * SECTOR or head[16 * SECTOR + 1 : 16 * SECTOR + 6] != b"CD001":
        raise ImageError(f"{path} is not an ISO 9660 image", "Pass the pymachine boot ISO to --iso")
    if volume_id(head) != BOOT_VOLUME_ID:
        raise ImageError(f"{path} is not a pymachine boot image (volume id '{volume_id(head)}')", "Pass the pymachine boot ISO to --iso")
    blocks = int.from_bytes(head[16 * SECTOR + 80 : 16 * SECTOR + 84], "little")
    if blocks * SECTOR > size:
        raise ImageError(f"{path} is cut short: its volume is {blocks * SECTOR} bytes, the file {size}", "Download or copy the ISO again, then run `pymachine create` with it")
    arches = efi_boot_arches(path)
    if arches and arch not in arches:
        raise ImageError(
            f"{path} is an {' and '.join(sorted(arches))} boot image, and this machine's guest is {arch}",
            f"Pass the {arch} image to --iso, or run `pymachine create --arch {sorted(arches)[0]}`",
        )


def engine_for(config: MachineConfig, cache: Path) -> EngineBundle:
    """The engine a machine installs: the bundle it was made with, while it is still
    there, else the one of the image a new machine would get."""
    bundle = Path(config.engine_bundle) if config.engine_bundle else None
    if bundle is not None and bundle.is_file():
        version = config.engine_version or bundle.name.split("-")[2]
        return EngineBundle(bundle, sha256_file(bundle), version)
    try:
        return BootImage.locate(cache, arch=config.arch).engine
    except ImageError:
        raise ImageError(f"The engine bundle of machine '{config.name}' is gone", how_to_get(config.arch)) from None


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def sha256_file(path: Path) -> str:
    """The sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(url: str, target: Path, sha256: str | None, progress: Progress | None) -> Path:
    """Download `url` to `target`, checking its sha256 when one is given; on any failure
    nothing is left at `target`. progress gets (title, total) and returns a callback."""
    import requests

    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with requests.get(url, stream=True, timeout=30) as response:
            if response.status_code != 200:
                raise ImageError(f"Downloading {url} failed: HTTP {response.status_code}", "Check the URL given to --iso")
            total = int(response.headers.get("content-length") or 0)
            report = progress(f"Downloading {target.name}", total) if progress else None
            digest = hashlib.sha256()
            done = 0
            with open(target, "wb") as handle:
                for chunk in response.iter_content(1 << 16):
                    handle.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    if report:
                        report(done, total)
    except requests.RequestException as exc:
        target.unlink(missing_ok=True)
        raise ImageError(f"Downloading {url} failed: {exc.__class__.__name__}", "Check your network and the URL given to --iso") from None
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    if sha256 and digest.hexdigest() != sha256:
        target.unlink(missing_ok=True)
        raise ImageError(f"{url} does not match the sha256 in its release manifest", "Download again later, or check the release")
    return target
