"""The boot image as the core sees it: where its ISO, kernel, initrd and engine bundle are.

A build (`pymachine image build`, see iso/) leaves them in the cache folder with a
manifest. `create --iso PATH|URL` may name another ISO; a URL is downloaded into the
cache, and the engine bundle and manifest are fetched from beside it when the cache has
none (that is how a published release is laid out).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pymachine import __version__
from pymachine.arch import AMD64
from pymachine.errors import ImageError
from pymachine.guest.iso9660 import SECTOR, efi_boot_arches, volume_id
from pymachine.guest.provision import EngineBundle
from pymachine.store import MachineConfig

BOOT_VOLUME_ID = "PYMACHINE"
BUILD_HINT = "Build it with `pymachine image build` (on Debian 12), or pass `--iso URL` of a released image"


def manifest_name(arch: str = AMD64, version: str = __version__) -> str:
    """The manifest a build of `arch` leaves in the cache, beside its files."""
    return f"pymachine-{version}-{arch}.manifest.json"


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

    @property
    def engine(self) -> EngineBundle:
        """The engine bundle provisioning installs with this image."""
        if self.engine_bundle is None:
            raise ImageError(f"The boot image {self.iso.name} comes without its engine bundle", BUILD_HINT)
        return EngineBundle(self.engine_bundle, self.engine_sha256, self.engine_version)

    @classmethod
    def from_manifest(cls, manifest_path: Path) -> BootImage:
        try:
            manifest = json.loads(manifest_path.read_text())
        except FileNotFoundError:
            raise ImageError(f"No boot image in {manifest_path.parent}", BUILD_HINT) from None
        except json.JSONDecodeError:
            raise ImageError(f"The image manifest {manifest_path} is damaged", "Run `pymachine image build` again") from None
        directory = manifest_path.parent
        artifacts: dict[str, Any] = manifest.get("artifacts", {})

        def path(kind: str) -> Path | None:
            item = artifacts.get(kind)
            if not item:
                return None
            found = directory / item["file"]
            return found if found.is_file() else None

        iso = path("iso")
        if iso is None:
            raise ImageError(f"The boot ISO named in {manifest_path.name} is missing", BUILD_HINT)
        engine = artifacts.get("engine", {})
        return cls(
            iso=iso,
            version=manifest.get("version", ""),
            arch=manifest.get("arch", AMD64),
            kernel=path("kernel"),
            initrd=path("initrd"),
            pvh_kernel=path("vmlinux"),
            cmdline=manifest.get("cmdline", ""),
            engine_bundle=path("engine"),
            engine_sha256=engine.get("sha256", ""),
            engine_version=engine.get("version", ""),
        )

    @classmethod
    def locate(
        cls,
        cache: Path,
        iso: str | None = None,
        download_progress: Callable[[str, int], Callable[[int, int], None]] | None = None,
        arch: str = AMD64,
    ) -> BootImage:
        """The `arch` image to boot: the cache's build, or `iso` (a path or URL) with the cache's bundle."""
        manifest = Path(cache) / manifest_name(arch)
        if iso is None:
            return cls.from_manifest(manifest)
        if iso.startswith(("http://", "https://")):
            return cls.from_release(iso, Path(cache), download_progress, arch)
        iso_path = Path(iso).expanduser().resolve()
        if not iso_path.is_file():
            raise ImageError(f"No ISO at {iso_path}", "Check the path given to --iso")
        with open(iso_path, "rb") as handle:
            head = handle.read(17 * SECTOR)
        if len(head) < 17 * SECTOR or head[16 * SECTOR + 1 : 16 * SECTOR + 6] != b"CD001":
            raise ImageError(f"{iso_path} is not an ISO 9660 image", "Pass the pymachine boot ISO to --iso")
        try:
            built = cls.from_manifest(manifest)
        except ImageError:
            raise ImageError(
                f"--iso gives the boot ISO, but the engine bundle that provisioning installs is not in {cache}",
                BUILD_HINT,
            ) from None
        if volume_id(head) != BOOT_VOLUME_ID:
            raise ImageError(f"{iso_path} is not a pymachine boot image (volume id '{volume_id(head)}')", "Pass the pymachine boot ISO to --iso")
        arches = efi_boot_arches(iso_path)
        if arches and arch not in arches:
            raise ImageError(
                f"{iso_path} is an {' and '.join(sorted(arches))} boot image, and this machine's guest is {arch}",
                f"Pass the {arch} image to --iso, or run `pymachine create --arch {sorted(arches)[0]}`",
            )
        # A foreign ISO boots from the CD only: its kernel may not match the cache's.
        same = built.iso.resolve() == iso_path or _same_file(built.iso, iso_path)
        return cls(
            iso=iso_path,
            version=built.version if same else "custom",
            arch=built.arch,
            kernel=built.kernel if same else None,
            initrd=built.initrd if same else None,
            pvh_kernel=built.pvh_kernel if same else None,
            cmdline=built.cmdline,
            engine_bundle=built.engine_bundle,
            engine_sha256=built.engine_sha256,
            engine_version=built.engine_version,
        )

    @classmethod
    def from_release(cls, url: str, cache: Path, progress: Callable[[str, int], Callable[[int, int], None]] | None = None, arch: str = AMD64) -> BootImage:
        """A published release: the ISO at `url`, with the manifest and the other files
        beside it, each downloaded into the cache once and checked against the manifest."""
        base, name = url.rsplit("/", 1)
        cache.mkdir(parents=True, exist_ok=True)
        manifest_path = cache / manifest_name(arch)
        _download(f"{base}/{manifest_name(arch)}", manifest_path, None, progress, replace=True)
        try:
            artifacts = json.loads(manifest_path.read_text())["artifacts"]
        except (ValueError, KeyError):
            raise ImageError(f"{base}/{manifest_name(arch)} is not a pymachine image manifest", "Check the URL given to --iso") from None
        if artifacts.get("iso", {}).get("file") != name:
            raise ImageError(
                f"{url} is not the ISO its release manifest names ({artifacts.get('iso', {}).get('file')})",
                "Pass the URL of the release's ISO to --iso",
            )
        for item in artifacts.values():
            target = cache / item["file"]
            if not (target.is_file() and sha256_file(target) == item["sha256"]):
                _download(f"{base}/{item['file']}", target, item["sha256"], progress, replace=True)
        return cls.from_manifest(manifest_path)

    def pin(self, directory: Path, kernel: bool = True) -> BootImage:
        """Hard-link (or copy) the boot files into a machine's folder.

        A later image build replaces the cache's files; a machine keeps booting the
        image it was created with until `pymachine upgrade`. `kernel` False keeps the ISO
        alone, for drivers that cannot boot a kernel directly.
        """
        target = directory / "boot"
        target.mkdir(parents=True, exist_ok=True)

        def keep(source: Path | None, name: str) -> Path | None:
            if source is None:
                return None
            dest = target / name
            tmp = target / f".{name}.tmp"
            tmp.unlink(missing_ok=True)
            try:
                os.link(source, tmp)
            except OSError:
                shutil.copyfile(source, tmp)
            os.replace(tmp, dest)
            return dest

        return BootImage(
            iso=keep(self.iso, "boot.iso") or self.iso,
            version=self.version,
            arch=self.arch,
            kernel=keep(self.kernel, "vmlinuz") if kernel else None,
            initrd=keep(self.initrd, "initrd") if kernel else None,
            pvh_kernel=keep(self.pvh_kernel, "vmlinux") if kernel else None,
            cmdline=self.cmdline,
            engine_bundle=self.engine_bundle,
            engine_sha256=self.engine_sha256,
            engine_version=self.engine_version,
        )


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


def _download(url: str, target: Path, sha256: str | None, progress: Callable[[str, int], Callable[[int, int], None]] | None, replace: bool = False) -> Path:
    """Download `url` to `target` (atomically), checking its sha256 when one is given.

    progress gets (title, total) and returns a callback(done, total).
    """
    import requests

    if target.is_file() and not replace:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    try:
        with requests.get(url, stream=True, timeout=30) as response:
            if response.status_code != 200:
                raise ImageError(f"Downloading {url} failed: HTTP {response.status_code}", "Check the URL given to --iso")
            total = int(response.headers.get("content-length") or 0)
            report = progress(f"Downloading {target.name}", total) if progress else None
            digest = hashlib.sha256()
            done = 0
            with open(partial, "wb") as handle:
                for chunk in response.iter_content(1 << 16):
                    handle.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    if report:
                        report(done, total)
    except requests.RequestException as exc:
        partial.unlink(missing_ok=True)
        raise ImageError(f"Downloading {url} failed: {exc.__class__.__name__}", "Check your network and the URL given to --iso") from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    if sha256 and digest.hexdigest() != sha256:
        partial.unlink(missing_ok=True)
        raise ImageError(f"{url} does not match the sha256 in its release manifest", "Download again later, or check the release")
    os.replace(partial, target)
    return target


def engine_for(config: MachineConfig, cache: Path) -> EngineBundle:
    """The engine a machine installs: the bundle it was made with, while the cache keeps
    it, else the cache's current one (an image rebuild replaces the bundle)."""
    try:
        current: BootImage | None = BootImage.locate(cache, arch=config.arch)
    except ImageError:
        current = None
    bundle = Path(config.engine_bundle) if config.engine_bundle else None
    if bundle is not None and bundle.is_file() and (current is None or current.engine_bundle != bundle):
        version = config.engine_version or bundle.name.split("-")[2]
        return EngineBundle(bundle, sha256_file(bundle), version)
    if current is None:
        raise ImageError(f"The engine bundle for machine '{config.name}' is gone from the cache", "Run `pymachine image build`")
    return current.engine
