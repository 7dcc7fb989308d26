"""Builds the boot ISO, the kernel and initrd, and the engine bundle from pinned packages,
for one architecture at a time.

    fetch    apt-get download name:arch=version for each package in packages-ARCH.lock,
             through an apt configuration of the build's own (iso/apt.py)
    extract  dpkg-deb -x, one folder per package (nothing is installed on the host)
    compose  the initramfs (cpio newc, gzip), the ISO (UEFI through systemd-boot on an
             EFI system partition; isolinux too on amd64), the bundle (tar, zstd)
    record   a manifest: every package with its version and sha256, every artifact's sha256,
             and the engine's dockerd flags (from its own `dockerd --help`), against which
             `create` checks --engine-opt before anything is made

The same inputs give the same bytes. The inputs (lock, recipe, guest files, this code)
are hashed; when the manifest in the output folder carries that hash and its files are
there, a build does nothing.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import lzma
import os
import shutil
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pymachine import __version__
from pymachine.arch import host_arch
from pymachine.engineoptions import DockerdFlags, parse_dockerd_help
from pymachine.errors import ImageError, MachineError
from pymachine.guest import fat, iso9660
from pymachine.guest.fat import FatImage
from pymachine.guest.iso9660 import IsoWriter
from pymachine.image import manifest_name, sha256_file
from pymachine.progress import Progress
from pymachine.runner import Runner
from pymachine.store import atomic_write

from . import recipe
from .apt import DebianArchive
from .archive import Entry, cpio_newc, tar_bytes
from .elf import has_pvh_entry, is_elf, needed_libraries

HERE = Path(__file__).resolve().parent
ROOTFS = HERE / "rootfs"


def lock_path(arch: str) -> Path:
    """The pinned packages of one architecture's image."""
    return HERE / f"packages-{arch}.lock"


#: Files whose mode in the guest is not the usual 0644/0755.
SPECIAL_MODES = {"etc/shadow": 0o600, "root": 0o700}
#: Kept in the image as empty folders.
EMPTY_DIRS = ["proc", "sys", "dev", "run", "tmp", "root", "mnt/data", "var/log", "var/lib/docker", "var/lib/pymachine", "etc/dropbear", "etc/ssl/certs"]
#: zstd settings for the engine bundle: long-distance matching finds the Go runtime that
#: dockerd, containerd and the shim share (33 MB instead of 39 MB at level 19).
ZSTD_LEVEL = 19
ZSTD_WINDOW_LOG = 27

BUILD_INPUTS = [
    HERE / "recipe.py",
    HERE / "build.py",
    HERE / "apt.py",
    HERE / "archive.py",
    HERE / "elf.py",
    HERE / "isolinux.cfg",
    Path(iso9660.__file__),
    Path(fat.__file__),
]


@dataclass(frozen=True)
class LockedPackage:
    name: str
    version: str
    sha256: str

    @property
    def upstream_version(self) -> str:
        version = self.version.split(":", 1)[-1]
        return version.split("+")[0].split("~")[0].rsplit("-", 1)[0]


def read_lock(path: Path) -> dict[str, LockedPackage]:
    """The pinned packages, by name."""
    packages: dict[str, LockedPackage] = {}
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ImageError(f"{path} is missing", "Run `pymachine image lock` to pin the packages") from None
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 3:
            raise ImageError(f"{path}:{number}: expected 'name version sha256'", "Run `pymachine image lock` to rewrite it")
        packages[parts[0]] = LockedPackage(*parts)
    return packages


def kernel_package(lock: dict[str, LockedPackage], metapackage: str) -> LockedPackage:
    kernels = [p for n, p in lock.items() if n.startswith("linux-image-") and n != metapackage]
    if len(kernels) != 1:
        raise ImageError("The lock must pin exactly one linux-image-X.Y.Z-ABI-ARCH package", "Run `pymachine image lock`")
    return kernels[0]


@dataclass(frozen=True)
class Artifacts:
    """Where a build put its results."""

    directory: Path
    manifest: dict[str, Any]

    def path(self, kind: str) -> Path:
        return self.directory / self.manifest["artifacts"][kind]["file"]


def artifact_names(arch: str, version: str = __version__) -> dict[str, str]:
    base = f"pymachine-{version}-{arch}"
    return {
        "iso": f"{base}.iso",
        "kernel": f"{base}.vmlinuz",
        "vmlinux": f"{base}.vmlinux",
        "initrd": f"{base}.initrd",
        "manifest": manifest_name(arch, version),
    }


class ImageBuilder:
    """Runs the recipe for `arch` into `output` (pymachine's cache folder), keeping
    downloads and unpacked packages in `work/ARCH` and apt's own state in `work/apt`."""

    def __init__(
        self,
        output: Path,
        work: Path,
        runner: Runner | None = None,
        progress: Progress | None = None,
        arch: str | None = None,
        lock: Path | None = None,
        archive: DebianArchive | None = None,
    ) -> None:
        self.output = Path(output)
        self.arch = arch or host_arch()
        if self.arch not in recipe.TARGETS:
            raise ImageError(f"The image recipe has no {self.arch} target (it builds {', '.join(recipe.TARGETS)})", "Run `pymachine image build --arch amd64` or `--arch arm64`")
        self.target = recipe.TARGETS[self.arch]
        self.work_root = Path(work)
        self.work = self.work_root / self.arch
        self.runner = runner or Runner()
        self.progress = progress or Progress()
        self.lock_path = lock or lock_path(self.arch)
        self._archive = archive
        self.epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))

    @property
    def archive(self) -> DebianArchive:
        """The Debian archive through the build's own apt configuration, for both architectures."""
        if self._archive is None:
            self._archive = DebianArchive(self.work_root / "apt", self.runner, {*recipe.TARGETS, host_arch()} & {*recipe.TARGETS})
        return self._archive

    # -- public -------------------------------------------------------------------

    def inputs_hash(self) -> str:
        """A digest of everything that decides the output bytes."""
        digest = hashlib.sha256()
        digest.update(f"pymachine {__version__} {self.arch} epoch {self.epoch}\n".encode())
        for path in [self.lock_path, *BUILD_INPUTS]:
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
        for path in sorted(ROOTFS.rglob("*")):
            rel = path.relative_to(ROOTFS).as_posix()
            digest.update(f"{rel} {'d' if path.is_dir() else 'f'}\0".encode())
            if path.is_file():
                digest.update(path.read_bytes())
        return digest.hexdigest()

    def current(self) -> Artifacts | None:
        """The finished build in `output` if it matches the inputs, else None."""
        manifest_path = self.output / artifact_names(self.arch)["manifest"]
        try:
            manifest = json.loads(manifest_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        if manifest.get("inputs") != self.inputs_hash():
            return None
        for item in manifest.get("artifacts", {}).values():
            path = self.output / item["file"]
            if not path.is_file() or path.stat().st_size != item["size"]:
                return None
        return Artifacts(self.output, manifest)

    def build(self, force: bool = False) -> Artifacts:
        """Build, unless an identical build is already in `output`."""
        if not force:
            done = self.current()
            if done is not None:
                self.progress.note(f"The {self.arch} boot image is up to date; nothing to build")
                return done
        lock = read_lock(self.lock_path)
        self._check_lock_covers_recipe(lock)
        self.archive.require_tools()
        with self.progress.step(f"Fetching {len(lock)} Debian {recipe.SUITE} packages ({self.arch})"):
            self.archive.prepare()
            debs = self.fetch(lock)
        self.output.mkdir(parents=True, exist_ok=True)
        with self.progress.step("Unpacking packages"):
            trees = {name: self.extract(name, deb) for name, deb in debs.items()}
        kernel = kernel_package(lock, self.target.kernel_metapackage)
        with self.progress.step("Composing the initramfs"):
            kver, vmlinuz, initrd, iso_libs = self.compose_initramfs(trees, kernel, lock)
        names = artifact_names(self.arch)
        engine_name = f"docker-engine-{lock[recipe.ENGINE_VERSION_PACKAGE].upstream_version}-{self.arch}.tar.zst"
        with self.progress.step("Composing the engine bundle"):
            bundle = self.compose_bundle(trees, iso_libs)
            dockerd = self.dockerd_flags(trees, lock)
        with self.progress.step("Writing the ISO"):
            iso = self.compose_iso(trees, vmlinuz, initrd)
        vmlinux = extract_vmlinux(vmlinuz) if self.arch == "amd64" else None
        outputs = {"iso": (names["iso"], iso), "kernel": (names["kernel"], vmlinuz), "initrd": (names["initrd"], initrd), "engine": (engine_name, bundle)}
        if vmlinux is not None:
            outputs["vmlinux"] = (names["vmlinux"], vmlinux)
        artifacts: dict[str, Any] = {}
        for kind, (filename, data) in outputs.items():
            atomic_write(self.output / filename, data, mode=0o644)
            artifacts[kind] = {"file": filename, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
        artifacts["engine"]["version"] = lock[recipe.ENGINE_VERSION_PACKAGE].upstream_version
        if dockerd is not None:
            artifacts["engine"]["dockerd"] = dockerd.as_manifest()
        else:
            self.progress.note(f"Could not run the {self.arch} dockerd here: the manifest lists no dockerd flags, and `create` checks --engine-opt against Docker 26.1's")
        manifest = {
            "name": "pymachine",
            "version": __version__,
            "arch": self.arch,
            "suite": recipe.SUITE,
            "inputs": self.inputs_hash(),
            "kernel_version": kver,
            "cmdline": recipe.kernel_cmdline(self.target),
            "boot": {"bios": self.target.bios, "uefi": f"EFI/BOOT/{self.target.efi_boot_file}"},
            "packages": [{"name": p.name, "version": p.version, "sha256": p.sha256} for p in sorted(lock.values(), key=lambda p: p.name)],
            "artifacts": artifacts,
        }
        atomic_write(self.output / names["manifest"], json.dumps(manifest, indent=2, sort_keys=True) + "\n", mode=0o644)
        return Artifacts(self.output, manifest)

    # -- steps --------------------------------------------------------------------

    def dockerd_flags(self, trees: dict[str, Path], lock: dict[str, LockedPackage]) -> DockerdFlags | None:
        """The engine's dockerd flags, from its own `dockerd --help`.

        Run where this host can run it: the image's own dockerd when the image is of the
        host's architecture, else the host architecture's dockerd of the very same
        package version, when an earlier build left it unpacked (`--arch all` builds the
        host's first). None when neither can run here.
        """
        package = recipe.ENGINE_VERSION_PACKAGE
        dockerd = next(source for pkg, source, name in recipe.ENGINE_FILES if pkg == package and name == "dockerd")
        if self.arch == host_arch():
            binary = trees[package] / dockerd
        else:
            tree = self.work_root / host_arch() / "tree" / package
            marker = tree / ".pymachine-from"
            quoted = lock[package].version.replace(":", "%3a")
            if not (marker.is_file() and marker.read_text().startswith(f"{package}_{quoted}_")):
                return None
            binary = tree / dockerd
        try:
            out = self.runner.run([str(binary), "--help"], timeout=60)
        except (MachineError, OSError):
            return None
        found = parse_dockerd_help(out.stdout)
        # A dockerd that printed something else than its usage is no list to check against.
        return found if "host" in found.flags and "config-file" in found.flags else None

    def _check_lock_covers_recipe(self, lock: dict[str, LockedPackage]) -> None:
        missing = [name for name in recipe.wanted_packages(self.target) if name not in lock]
        if missing:
            raise ImageError(f"{self.lock_path.name} does not pin {', '.join(missing)}", f"Run `pymachine image lock --arch {self.arch}` to pin them")

    def fetch(self, lock: dict[str, LockedPackage]) -> dict[str, Path]:
        """Each locked package's .deb in work/debs, downloaded when missing, sha256 checked."""
        debs_dir = self.work / "debs"
        debs_dir.mkdir(parents=True, exist_ok=True)
        found: dict[str, Path] = {}
        missing: list[LockedPackage] = []
        for package in lock.values():
            path = self._deb_path(debs_dir, package)
            if path is not None and sha256_file(path) == package.sha256:
                found[package.name] = path
            else:
                missing.append(package)
        if missing:
            self.archive.download([(p.name, p.version) for p in missing], self.arch, debs_dir)
            for package in missing:
                path = self._deb_path(debs_dir, package)
                if path is None:
                    raise ImageError(f"apt-get did not leave {package.name}_{package.version} in {debs_dir}", "Run `pymachine image build` again")
                actual = sha256_file(path)
                if actual != package.sha256:
                    raise ImageError(
                        f"{path.name} has sha256 {actual[:12]}..., the lock says {package.sha256[:12]}...",
                        f"Run `pymachine image lock --arch {self.arch}` if the archive changed, or delete the file and build again",
                    )
                found[package.name] = path
        return found

    def _deb_path(self, debs_dir: Path, package: LockedPackage) -> Path | None:
        quoted = package.version.replace(":", "%3a")
        for arch in (self.arch, "all"):
            path = debs_dir / f"{package.name}_{quoted}_{arch}.deb"
            if path.exists():
                return path
        return None

    def extract(self, name: str, deb: Path) -> Path:
        """dpkg-deb -x into work/tree/NAME, once per .deb."""
        target = self.work / "tree" / name
        marker = target / ".pymachine-from"
        if marker.is_file() and marker.read_text() == deb.name:
            return target
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        self.runner.run(["dpkg-deb", "-x", str(deb), str(target)], timeout=600)
        marker.write_text(deb.name)
        return target

    def compose_initramfs(self, trees: dict[str, Path], kernel: LockedPackage, lock: dict[str, LockedPackage]) -> tuple[str, bytes, bytes, set[str]]:
        """(kernel version, vmlinuz bytes, initrd bytes, sonames the initrd carries)."""
        ktree = trees[kernel.name]
        modules = _modules_root(ktree)
        kver = _only(p.name for p in modules.iterdir())
        vmlinuz = (ktree / "boot" / f"vmlinuz-{kver}").read_bytes()

        entries: dict[str, Entry] = {}

        def put(entry: Entry) -> None:
            entries[entry.path] = entry

        for path in sorted(ROOTFS.rglob("*")):
            rel = path.relative_to(ROOTFS).as_posix()
            if path.is_dir():
                put(Entry.directory(rel, SPECIAL_MODES.get(rel, 0o755)))
            else:
                # Scripts are executable by their #! line, not by the checkout's mode bits
                # (an installed wheel may not keep them).
                data = path.read_bytes()
                perm = 0o755 if data.startswith(b"#!") else 0o644
                put(Entry.file(rel, data, SPECIAL_MODES.get(rel, perm)))
        for rel in EMPTY_DIRS:
            put(Entry.directory(rel, SPECIAL_MODES.get(rel, 0o755)))
        put(Entry.file("etc/os-release", f'NAME="pymachine"\nID=pymachine\nVERSION_ID="{__version__}"\nPRETTY_NAME="pymachine {__version__} (Debian {recipe.SUITE} packages, {self.arch})"\n'.encode()))

        for package, files in recipe.iso_files(self.target).items():
            for source, dest in files:
                for rel_src, data, perm in _take(trees[package], source):
                    rel_dest = (dest or source).rstrip("/") + rel_src[len(source.rstrip("/")):]
                    put(Entry.file(rel_dest, data, perm))

        applets = self._busybox_applets(trees, lock["busybox-static"])
        for applet in sorted(applets):
            if applet not in entries:
                put(Entry.symlink(applet, "/bin/busybox"))
        for link, target in recipe.SYMLINKS.items():
            put(Entry.symlink(link, target))

        bundle = "".join(
            (trees["ca-certificates"] / "usr/share/ca-certificates/mozilla" / name).read_text()
            for name in sorted(os.listdir(trees["ca-certificates"] / "usr/share/ca-certificates/mozilla"))
        )
        put(Entry.file("etc/ssl/certs/ca-certificates.crt", bundle.encode()))
        for path in [p for p in entries if p.startswith("usr/share/ca-certificates/")]:
            del entries[path]

        library_index = self._library_index(trees)
        carried = self._add_libraries(entries, library_index, already=set())
        for entry in self._kernel_modules(modules / kver, kver):
            put(entry)
        initrd = gzip.compress(cpio_newc(entries.values(), mtime=self.epoch), compresslevel=9, mtime=0)
        return kver, vmlinuz, initrd, carried

    def _add_libraries(self, entries: dict[str, Entry], index: dict[str, tuple[str, bytes]], already: set[str]) -> set[str]:
        """Add every shared library the ELF files in `entries` need; return their sonames."""
        carried = set(already)
        queue = [e for e in list(entries.values()) if stat.S_ISREG(e.mode) and is_elf(e.data)]
        while queue:
            entry = queue.pop()
            interp = _interpreter(entry.data)
            wants = needed_libraries(entry.data)
            if interp and interp.lstrip("/") not in entries and Path(interp).name not in carried:
                soname = Path(interp).name
                if soname not in index:
                    raise ImageError(f"{entry.path} needs the loader {interp}, which no package in the recipe has", "Add its package to LIBRARY_PACKAGES in iso/recipe.py")
                new = Entry.file(interp.lstrip("/"), index[soname][1], 0o755)
                entries[new.path] = new
                carried.add(soname)
            for soname in wants:
                if soname in carried:
                    continue
                if soname not in index:
                    raise ImageError(
                        f"{entry.path} needs {soname}, which no package in the recipe provides",
                        "Add its package to LIBRARY_PACKAGES in iso/recipe.py and run `pymachine image lock`",
                    )
                new = Entry.file(f"lib/{self.target.multiarch}/{soname}", index[soname][1], 0o755)
                entries[new.path] = new
                carried.add(soname)
                queue.append(new)
        return carried

    def _busybox_applets(self, trees: dict[str, Path], busybox: LockedPackage) -> list[str]:
        """busybox --list-full: the applets and where they go (bin/sh, usr/bin/awk ...).

        Listing runs the binary. When the target's busybox cannot run on this host, the
        host architecture's busybox-static of the very same version lists them: both are
        built from one source with one configuration.
        """
        binary = trees["busybox-static"] / "usr" / "bin" / "busybox"
        if self.arch != host_arch():
            tools = self.work_root / host_arch()
            debs = tools / "debs"
            deb = next(iter(debs.glob(f"busybox-static_{busybox.version.replace(':', '%3a')}_{host_arch()}.deb")), None) if debs.is_dir() else None
            if deb is None:
                self.archive.download([("busybox-static", busybox.version)], host_arch(), debs)
                deb = next(debs.glob(f"busybox-static_{busybox.version.replace(':', '%3a')}_{host_arch()}.deb"))
            target = tools / "tree" / "busybox-static"
            marker = target / ".pymachine-from"
            if not (marker.is_file() and marker.read_text() == deb.name):
                shutil.rmtree(target, ignore_errors=True)
                target.mkdir(parents=True)
                self.runner.run(["dpkg-deb", "-x", str(deb), str(target)], timeout=600)
                marker.write_text(deb.name)
            binary = target / "usr" / "bin" / "busybox"
        return self.runner.run([str(binary), "--list-full"]).stdout.split()

    def _kernel_modules(self, base: Path, kver: str) -> list[Entry]:
        """The recipe's modules, their dependencies, and modules.dep/alias/builtin for them."""
        # Debian compresses its modules (.ko.xz); the initramfs holds them plain, in one
        # gzip stream, so the guest's busybox modprobe needs no decompressor of its own.
        by_name: dict[str, Path] = {}
        for path in base.rglob("*.ko*"):
            by_name[_module_name(path)] = path
        info: dict[str, dict[str, list[str]]] = {}

        def modinfo(name: str) -> dict[str, list[str]]:
            if name not in info:
                info[name] = _modinfo(_module_bytes(by_name[name]))
            return info[name]

        aliases: dict[str, str] = {}
        wanted: list[str] = []
        pending = [m.replace("-", "_") for m in recipe.kernel_modules(self.target)]
        while pending:
            name = pending.pop()
            if name in wanted:
                continue
            if name not in by_name:
                builtin = (base / "modules.builtin").read_text()
                if f"/{name}.ko" in builtin.replace("-", "_"):
                    continue
                raise ImageError(f"kernel module {name} is not in kernel {kver}", "Remove it from KERNEL_MODULES in iso/recipe.py")
            wanted.append(name)
            meta = modinfo(name)
            for dep in meta.get("depends", []):
                pending.extend(d.replace("-", "_") for d in dep.split(",") if d)
        # Resolve soft dependencies ("pre: crc32c") to modules we carry, as hard ones:
        # busybox modprobe ignores softdep, and libcrc32c is useless without crc32c.
        for name in wanted:
            for alias in modinfo(name).get("alias", []):
                aliases.setdefault(alias, name)
        for name in wanted:
            aliases.setdefault(name, name)

        def deps_of(name: str) -> list[str]:
            meta = modinfo(name)
            deps = [d.replace("-", "_") for dep in meta.get("depends", []) for d in dep.split(",") if d]
            for soft in meta.get("softdep", []):
                for word in soft.replace("pre:", " ").split("post:")[0].split():
                    target = aliases.get(word) or aliases.get(f"crypto-{word}")
                    if target and target != name:
                        deps.append(target)
            return deps

        def closure(name: str, seen: list[str]) -> list[str]:
            for dep in deps_of(name):
                if dep not in seen:
                    closure(dep, seen)
                    seen.append(dep)
            return seen

        entries = []
        dep_lines = []
        alias_lines = []
        for name in sorted(wanted):
            rel = _plain_module_path(by_name[name].relative_to(base).as_posix())
            entries.append(Entry.file(f"lib/modules/{kver}/{rel}", _module_bytes(by_name[name])))
            order = closure(name, [])
            deps = " ".join(_plain_module_path(by_name[d].relative_to(base).as_posix()) for d in reversed(order))
            dep_lines.append(f"{rel}:{' ' + deps if deps else ''}")
            for alias in sorted(set(modinfo(name).get("alias", []))):
                alias_lines.append(f"alias {alias} {name}")
        root = f"lib/modules/{kver}"
        entries.append(Entry.file(f"{root}/modules.dep", ("\n".join(dep_lines) + "\n").encode()))
        entries.append(Entry.file(f"{root}/modules.alias", ("\n".join(alias_lines) + "\n").encode()))
        entries.append(Entry.file(f"{root}/modules.builtin", (base / "modules.builtin").read_bytes()))
        return entries

    def compose_bundle(self, trees: dict[str, Path], iso_libs: set[str]) -> bytes:
        """The engine bundle: bin/ and the lib/ the ISO does not already carry, zstd."""
        import zstandard

        entries: dict[str, Entry] = {}
        for package, source, name in recipe.engine_files(self.target):
            data = (trees[package] / source).read_bytes()
            entries[f"bin/{name}"] = Entry.file(f"bin/{name}", data, 0o755)
        index = self._library_index(trees)
        before = set(entries)
        self._add_libraries(entries, index, already=iso_libs)
        for path in set(entries) - before:
            entry = entries.pop(path)
            moved = Entry.file(f"lib/{Path(path).name}", entry.data, 0o755)
            entries[moved.path] = moved
        raw = tar_bytes(entries.values(), mtime=self.epoch)
        # Compressing takes a minute; a rebuild that changed only the ISO reuses it.
        cached = self.work / f"bundle-{hashlib.sha256(raw).hexdigest()[:16]}-zstd{ZSTD_LEVEL}.tar.zst"
        if cached.is_file():
            return cached.read_bytes()
        params = zstandard.ZstdCompressionParameters.from_level(
            ZSTD_LEVEL, window_log=ZSTD_WINDOW_LOG, enable_ldm=True, threads=-1, write_content_size=True
        )
        compressed = zstandard.ZstdCompressor(compression_params=params).compress(raw)
        for old in self.work.glob("bundle-*.tar.zst"):
            old.unlink()
        atomic_write(cached, compressed, mode=0o644)
        return compressed

    def compose_iso(self, trees: dict[str, Path], vmlinuz: bytes, initrd: bytes) -> bytes:
        """The boot ISO: an EFI system partition with systemd-boot, the kernel and initrd
        (UEFI, both architectures), and on amd64 isolinux too (BIOS), reading the very
        same kernel and initrd sectors through the ISO 9660 tree."""
        writer = IsoWriter(recipe.BOOT_VOLUME_ID, timestamp=self.epoch)
        cmdline = recipe.kernel_cmdline(self.target)
        esp = FatImage(recipe.BOOT_VOLUME_ID, timestamp=self.epoch)
        esp.add_file(f"EFI/BOOT/{self.target.efi_boot_file}", (trees[recipe.EFI_PACKAGE] / self.target.systemd_boot).read_bytes())
        esp.add_file("loader/loader.conf", b"timeout 0\ndefault pymachine.conf\n")
        esp.add_file("loader/entries/pymachine.conf", f"title pymachine\nlinux /vmlinuz\ninitrd /initrd\noptions {cmdline}\n".encode())
        esp.add_file("vmlinuz", vmlinuz)
        esp.add_file("initrd", initrd)
        writer.add_fat_image("boot/esp.img", esp)
        writer.add_file_from_fat("boot/vmlinuz", esp, "vmlinuz")
        writer.add_file_from_fat("boot/initrd", esp, "initrd")
        if self.target.bios:
            for package, files in recipe.BIOS_FILES.items():
                for source, dest in files:
                    writer.add_file(dest, (trees[package] / source).read_bytes())
            config = (HERE / "isolinux.cfg").read_text().replace("@CMDLINE@", cmdline)
            writer.add_file("isolinux/isolinux.cfg", config.encode())
            writer.set_boot("isolinux/isolinux.bin", load_sectors=4)
        writer.set_efi_boot("boot/esp.img")
        return writer.write()

    def _library_index(self, trees: dict[str, Path]) -> dict[str, tuple[str, bytes]]:
        """soname -> (package, bytes), over the recipe's library packages."""
        index: dict[str, tuple[str, bytes]] = {}
        multiarch = self.target.multiarch
        for package in recipe.LIBRARY_PACKAGES:
            tree = trees[package]
            for folder in ("usr/lib", f"usr/lib/{multiarch}", "usr/lib64", "lib", "lib64", f"lib/{multiarch}"):
                directory = tree / folder
                if not directory.is_dir():
                    continue
                for item in sorted(directory.iterdir()):
                    if ".so" in item.name and item.is_file() and item.name not in index:
                        index[item.name] = (package, item.resolve().read_bytes())
        return index


# -- lock ------------------------------------------------------------------------


def make_lock(archive: DebianArchive, arch: str, path: Path | None = None) -> str:
    """Pin the candidate version of every package the recipe needs for `arch`."""
    target = recipe.TARGETS[arch]
    path = path or lock_path(arch)
    archive.prepare()
    meta = archive.show([target.kernel_metapackage], arch).get(target.kernel_metapackage)
    kernels = [dep.strip().split()[0] for dep in (meta or {}).get("depends", "").split(",") if dep.strip().startswith("linux-image-")]
    if not kernels:
        raise ImageError(f"apt knows no {target.kernel_metapackage} with a kernel to pin", "Run `pymachine image lock` again once the archive answers")
    names = sorted({*recipe.wanted_packages(target), kernels[0]})
    shown = archive.show(names, arch)
    lines = [
        f"# Pinned Debian {recipe.SUITE} packages of the {arch} boot image: name version sha256.",
        f"# Rewrite with `pymachine image lock --arch {arch}`; the build downloads exactly these.",
    ]
    for name in names:
        if name not in shown:
            raise ImageError(f"The {recipe.SUITE} archive has no {arch} package {name}", "Fix iso/recipe.py")
        lines.append(f"{name} {shown[name]['version']} {shown[name]['sha256']}")
    text = "\n".join(lines) + "\n"
    atomic_write(path, text, mode=0o644)
    return text


# -- helpers ---------------------------------------------------------------------


def _only(items: Iterable[str]) -> str:
    values = list(items)
    if len(values) != 1:
        raise ImageError(f"expected one kernel, found {values}", "Check KERNEL_METAPACKAGE in iso/recipe.py")
    return values[0]


def _take(tree: Path, source: str) -> list[tuple[str, bytes, int]]:
    """Files at `source` in a package tree (a file, or a folder taken whole): (rel, data, perm)."""
    path = tree / source
    if source.endswith("/"):
        if not path.is_dir():
            raise ImageError(f"{source} is not in {tree.name}", "Fix ISO_FILES in iso/recipe.py")
        found = []
        for item in sorted(path.rglob("*")):
            if item.is_file():
                rel = item.relative_to(tree).as_posix()
                found.append((rel, item.read_bytes(), 0o755 if os.access(item, os.X_OK) else 0o644))
        return found
    if not path.exists():
        raise ImageError(f"{source} is not in {tree.name}", "Fix ISO_FILES in iso/recipe.py")
    real = path.resolve()
    return [(source, real.read_bytes(), 0o755 if os.access(real, os.X_OK) else 0o644)]


def _modules_root(ktree: Path) -> Path:
    """Where a kernel package keeps its modules: /usr/lib/modules in trixie (merged /usr)."""
    for folder in ("usr/lib/modules", "lib/modules"):
        if (ktree / folder).is_dir():
            return ktree / folder
    raise ImageError(f"{ktree.name} holds no kernel modules", "Check the kernel package in the lock")


def _interpreter(data: bytes) -> str | None:
    import struct

    if not is_elf(data):
        return None
    phoff = struct.unpack_from("<Q", data, 0x20)[0]
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    for i in range(phnum):
        p_type, _flags, p_offset, _vaddr, _paddr, p_filesz = struct.unpack_from("<IIQQQQ", data, phoff + i * phentsize)
        if p_type == 3:  # PT_INTERP
            return data[p_offset : p_offset + p_filesz].rstrip(b"\x00").decode()
    return None


_MODULE_SUFFIXES = (".ko.xz", ".ko.zst", ".ko")


def _module_name(path: Path) -> str:
    """virtio-net.ko.xz -> virtio_net: the name modprobe knows a module by."""
    name = path.name
    for suffix in _MODULE_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name.replace("-", "_")


def _plain_module_path(rel: str) -> str:
    for suffix in _MODULE_SUFFIXES:
        if rel.endswith(suffix):
            return rel[: -len(suffix)] + ".ko"
    return rel


#: The trailer of a signed module: struct module_signature, then this magic string.
_SIGNATURE_MAGIC = b"~Module signature appended~\n"


def _module_bytes(path: Path) -> bytes:
    """A module's ELF bytes, decompressed, without Debian's signature.

    The kernel checks a signed module's signature at every load; under emulation that
    costs tens of milliseconds a module, and the guest loads about sixty at boot. The
    modules come from the initramfs the image itself carries, so the signature adds
    nothing there (the kernel notes once that it loaded an unsigned module).
    """
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        data = lzma.decompress(data)
    elif path.name.endswith(".zst"):
        import zstandard

        data = zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return strip_module_signature(data)


def strip_module_signature(data: bytes) -> bytes:
    """The module without its appended PKCS#7 signature (unchanged if it has none)."""
    import struct

    if not data.endswith(_SIGNATURE_MAGIC):
        return data
    # struct module_signature: algo, hash, id_type, signer_len, key_id_len, pad[3], sig_len (be32)
    info = data[-len(_SIGNATURE_MAGIC) - 12 : -len(_SIGNATURE_MAGIC)]
    signer_len, key_id_len = info[3], info[4]
    (sig_len,) = struct.unpack(">I", info[8:12])
    end = len(data) - len(_SIGNATURE_MAGIC) - 12 - sig_len - signer_len - key_id_len
    return data[:end] if end > 0 else data


def _modinfo(ko: bytes) -> dict[str, list[str]]:
    """key=value pairs of a module's .modinfo section (found by its NUL-separated form)."""
    found: dict[str, list[str]] = {}
    for key in (b"depends=", b"alias=", b"softdep="):
        start = 0
        while True:
            pos = ko.find(b"\x00" + key, start)
            if pos < 0:
                break
            end = ko.find(b"\x00", pos + 1)
            value = ko[pos + 1 + len(key) : end].decode(errors="replace")
            found.setdefault(key.decode()[:-1], []).append(value)
            start = end
    return found


def extract_vmlinux(vmlinuz: bytes) -> bytes | None:
    """The uncompressed kernel inside a bzImage (zstd- or xz-packed), if it has a PVH entry.

    QEMU boots such an ELF directly (no decompression in the guest): under TCG that
    saves seconds of every boot.
    """
    data = None
    zstd = vmlinuz.find(b"\x28\xb5\x2f\xfd")
    xz = vmlinuz.find(b"\xfd7zXZ\x00")
    if zstd >= 0 and (xz < 0 or zstd < xz):
        import zstandard

        try:
            data = zstandard.ZstdDecompressor().decompressobj().decompress(vmlinuz[zstd:])
        except zstandard.ZstdError:
            return None
    elif xz >= 0:
        try:
            data = lzma.LZMADecompressor().decompress(vmlinuz[xz:])
        except lzma.LZMAError:
            return None
    return data if data is not None and has_pvh_entry(data) else None
