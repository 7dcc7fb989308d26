"""UEFI firmware for QEMU, found the way QEMU installs describe it.

Distributions and QEMU's own `make install` describe each firmware image in a JSON file
(QEMU's docs/interop/firmware.json): which interfaces it offers (`uefi`, `bios` ...), how
it is mapped (`flash`: an executable image and an NVRAM template), which emulators and
machine types run it (`aarch64` with `virt-*`, `x86_64` with `pc-q35-*`) and its
features (`secure-boot`, `enrolled-keys`, `requires-smm` ...).

The rules for finding them, from that specification:

- Descriptors live in folders from general to specific: the data folders
  (`/usr/share/qemu/firmware`, and `<prefix>/share/qemu/firmware` beside a QEMU at
  `<prefix>/bin`, which is where Homebrew's are), then `/etc/qemu/firmware`, then
  `$XDG_CONFIG_HOME/qemu/firmware` (`~/.config/qemu/firmware`).
- A file in a more specific folder replaces the file of the same name in a more general
  one; an empty file there hides it.
- All the files are then sorted by name, and the first that matches wins.
"""

from __future__ import annotations

import fnmatch
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

#: Features that ask for more than a plain boot: keys to enrol, or SMM to emulate.
#: A descriptor with any of them is taken only when nothing plainer matches.
GUARDED_FEATURES = frozenset({"secure-boot", "enrolled-keys"})
#: A firmware that needs `-machine smm=on` and a secure pflash: we do not set those up.
UNSUPPORTED_FEATURES = frozenset({"requires-smm"})


@dataclass(frozen=True)
class FirmwareDescriptor:
    """One firmware JSON file, as far as choosing and mapping a UEFI image needs it."""

    source: Path
    description: str
    interface_types: tuple[str, ...]
    device: str
    executable: str
    executable_format: str
    targets: tuple[tuple[str, tuple[str, ...]], ...]
    features: frozenset[str]

    @classmethod
    def parse(cls, source: Path, text: str) -> FirmwareDescriptor:
        """A descriptor from its JSON text; ValueError when it is not one."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{source} is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{source} is not a firmware descriptor (no object at its top)")
        mapping = data.get("mapping")
        if not isinstance(mapping, dict) or not isinstance(mapping.get("device"), str):
            raise ValueError(f"{source} has no mapping.device")
        device = mapping["device"]
        executable, fmt = "", ""
        if device == "flash":
            image = mapping.get("executable")
            if not isinstance(image, dict) or not isinstance(image.get("filename"), str):
                raise ValueError(f"{source} maps flash without executable.filename")
            executable, fmt = image["filename"], str(image.get("format", "raw"))
        elif isinstance(mapping.get("filename"), str):
            executable = mapping["filename"]  # "memory" (-bios) and "kernel" (-kernel)
        targets = []
        for target in data.get("targets") or ():
            if isinstance(target, dict) and isinstance(target.get("architecture"), str):
                targets.append((target["architecture"], tuple(str(m) for m in target.get("machines") or ())))
        return cls(
            source=source,
            description=str(data.get("description", "")),
            interface_types=tuple(str(t) for t in data.get("interface-types") or ()),
            device=device,
            executable=executable,
            executable_format=fmt,
            targets=tuple(targets),
            features=frozenset(str(f) for f in data.get("features") or ()),
        )

    def runs_on(self, architecture: str, machine: str) -> bool:
        """True if a target names this emulator and a machine glob covers `machine`.

        `machine` is the unversioned name we run (`virt`, `q35`): QEMU resolves it to the
        newest versioned type, `virt-7.2`, `pc-q35-7.2`. So a glob matches when it
        matches the name itself or that family's versioned names.
        """
        family = MACHINE_FAMILIES.get(machine, machine)
        for arch, globs in self.targets:
            if arch != architecture:
                continue
            for pattern in globs:
                if fnmatch.fnmatchcase(machine, pattern) or pattern.startswith(f"{family}-"):
                    return True
        return False


#: Our unversioned machine names and the prefix of QEMU's versioned types they alias.
MACHINE_FAMILIES = {"virt": "virt", "q35": "pc-q35"}


def search_folders(binary: str | None, environ: Mapping[str, str], home: Path | None = None) -> list[Path]:
    """The descriptor folders, from general to specific, for a QEMU at `binary`."""
    folders = [Path("/usr/share/qemu/firmware")]
    if binary:
        # <prefix>/bin/qemu-system-* -> <prefix>/share/qemu/firmware: Homebrew's
        # /opt/homebrew (or /usr/local) and any QEMU built with its own prefix. The
        # link's folder first, then the real one (Homebrew links into its Cellar).
        for program in (Path(binary), Path(os.path.realpath(binary))):
            if program.is_absolute() and program.parent.name == "bin":
                folders.append(program.parent.parent / "share" / "qemu" / "firmware")
    folders.append(Path("/etc/qemu/firmware"))
    config = environ.get("XDG_CONFIG_HOME") or str((home or Path.home()) / ".config")
    folders.append(Path(config) / "qemu" / "firmware")
    unique: list[Path] = []
    for folder in folders:
        if folder not in unique:
            unique.append(folder)
    return unique


def descriptor_files(folders: Sequence[Path]) -> list[Path]:
    """The descriptor files in effect, in the order QEMU's specification ranks them.

    Folders come from general to specific: a later folder's file replaces an earlier
    one of the same name, and an empty file hides it.
    """
    by_name: dict[str, Path | None] = {}
    for folder in folders:
        try:
            names = sorted(os.listdir(folder))
        except OSError:
            continue
        for name in names:
            if not name.endswith(".json"):
                continue
            path = folder / name
            try:
                size = path.stat().st_size
            except OSError:
                continue
            by_name[name] = path if size else None
    return [by_name[name] for name in sorted(by_name) if by_name[name] is not None]  # type: ignore[misc]


def read_descriptors(files: Iterable[Path]) -> tuple[list[FirmwareDescriptor], list[str]]:
    """The descriptors that parse, in order, and a note for each file that does not."""
    found, skipped = [], []
    for path in files:
        try:
            found.append(FirmwareDescriptor.parse(path, path.read_text()))
        except (OSError, ValueError) as exc:
            skipped.append(str(exc))
    return found, skipped


@dataclass(frozen=True)
class FirmwareChoice:
    """A UEFI code image to map read-only into pflash, and where it was found."""

    path: Path
    format: str
    descriptor: Path | None  # None when given with -o firmware=PATH

    def __str__(self) -> str:
        return f"{self.path} ({self.descriptor.name})" if self.descriptor else str(self.path)


def choose_uefi(descriptors: Sequence[FirmwareDescriptor], architecture: str, machine: str) -> tuple[FirmwareChoice | None, list[str]]:
    """The first usable UEFI flash image for that emulator and machine, plainer ones first.

    Returns the choice (None when there is none) and, for the error message, why each
    candidate that matched was passed over.
    """
    matching = [
        d
        for d in descriptors
        if "uefi" in d.interface_types and d.device == "flash" and d.runs_on(architecture, machine) and not d.features & UNSUPPORTED_FEATURES
    ]
    # A stable sort keeps the specification's order within each group.
    matching.sort(key=lambda d: bool(d.features & GUARDED_FEATURES))
    passed_over = []
    for descriptor in matching:
        image = Path(descriptor.executable)
        if not os.access(image, os.R_OK):
            passed_over.append(f"{descriptor.source} names {image}, which {'cannot be read' if image.exists() else 'does not exist'}")
            continue
        return FirmwareChoice(image, descriptor.executable_format or "raw", descriptor.source), passed_over
    return None, passed_over
