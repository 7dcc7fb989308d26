"""apt-get and apt-cache with a configuration of the build's own.

The image is built from Debian 13 (trixie) packages of either architecture on any Debian
host, without changing the host's apt set-up: no `dpkg --add-architecture`, no sources
file of ours under /etc/apt. Instead every call names its own sources list, package
lists, cache and architectures, all in the image build's work folder, made from the
Debian mirror the host already uses (read from its sources, or deb.debian.org).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pymachine.errors import CommandFailed, ImageError
from pymachine.runner import Runner
from pymachine.store import atomic_write

#: The release the image is built from, and where its security updates come from.
SUITE = "trixie"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SECURITY = "http://deb.debian.org/debian-security"
#: The host's apt sources, in the order apt reads them.
HOST_SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))
NEEDS_DEBIAN = "Building the boot image needs a Debian host with apt-get and dpkg-deb; elsewhere, install pymachine's image package instead (see README.md)"


@dataclass(frozen=True)
class Mirrors:
    """Where Debian's main archive and its security archive are served from."""

    archive: str = DEFAULT_MIRROR
    security: str = DEFAULT_SECURITY

    @classmethod
    def of_host(cls, sources: Iterable[Path] = HOST_SOURCES) -> Mirrors:
        """The mirrors the host's own apt sources use, where they name Debian's archives."""
        archive = security = ""
        for uri, suites in _host_entries(sources):
            if any(s.endswith("-security") for s in suites) or uri.rstrip("/").endswith("debian-security"):
                security = security or uri
            elif uri.rstrip("/").endswith("/debian"):
                archive = archive or uri
        return cls(archive or DEFAULT_MIRROR, security or DEFAULT_SECURITY)


def _host_entries(sources: Iterable[Path]) -> list[tuple[str, list[str]]]:
    """(URI, suites) of every `deb` source of the host, one-line and deb822 formats alike."""
    files: list[Path] = []
    for path in sources:
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix in (".list", ".sources"))
        elif path.is_file():
            files.append(path)
    entries: list[tuple[str, list[str]]] = []
    for path in files:
        try:
            text = path.read_text()
        except OSError:
            continue
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields = _deb822(stanza)
                if "deb" in fields.get("types", "").split() and fields.get("enabled", "yes") != "no":
                    entries += [(uri, fields.get("suites", "").split()) for uri in fields.get("uris", "").split()]
        else:
            for line in text.splitlines():
                words = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
                if len(words) >= 3 and words[0] == "deb":
                    entries.append((words[1], [words[2]]))
    return entries


def _deb822(stanza: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    key = ""
    for line in stanza.splitlines():
        if line.startswith("#"):
            continue
        if line[:1].isspace() and key:
            fields[key] += " " + line.strip()
        elif ":" in line:
            key, value = line.split(":", 1)
            key = key.strip().lower()
            fields[key] = value.strip()
    return fields


class DebianArchive:
    """The trixie archive, for `arches`, through an apt configuration kept under `root`."""

    def __init__(self, root: Path, runner: Runner, arches: Iterable[str], mirrors: Mirrors | None = None) -> None:
        self.root = Path(root)
        self.runner = runner
        self.arches = sorted(set(arches))
        self.mirrors = mirrors or Mirrors.of_host()

    @property
    def sources_list(self) -> Path:
        return self.root / "sources.list"

    def sources(self) -> str:
        """The sources list: the host's mirrors, trixie's suites, our architectures."""
        options = f"[arch={','.join(self.arches)} signed-by={KEYRING}]"
        return (
            f"deb {options} {self.mirrors.archive} {SUITE} main\n"
            f"deb {options} {self.mirrors.archive} {SUITE}-updates main\n"
            f"deb {options} {self.mirrors.security} {SUITE}-security main\n"
        )

    def options(self) -> list[str]:
        """apt's -o settings that make it read and write only under `root`."""
        opts = [
            f"Dir::Etc::SourceList={self.sources_list}",
            "Dir::Etc::SourceParts=/dev/null",
            f"Dir::State::Lists={self.root / 'lists'}",
            f"Dir::Cache={self.root / 'cache'}",
            "Dir::State::status=/dev/null",
            "APT::Sandbox::User=root",
        ]
        opts += [f"APT::Architectures::={arch}" for arch in self.arches]
        return [word for opt in opts for word in ("-o", opt)]

    def require_tools(self) -> None:
        """apt-get, apt-cache and dpkg-deb, and Debian's keyring, or a one-line ImageError."""
        for tool in ("apt-get", "apt-cache", "dpkg-deb"):
            if self.runner.which(tool) is None:
                raise ImageError(f"`{tool}` is not installed", NEEDS_DEBIAN)
        if not Path(KEYRING).is_file():
            raise ImageError(f"Debian's archive keyring {KEYRING} is missing", "Run `sudo apt-get install debian-archive-keyring`")

    def prepare(self) -> None:
        """Write the configuration; fetch the package lists when there are none yet."""
        self.require_tools()
        (self.root / "lists" / "partial").mkdir(parents=True, exist_ok=True)
        (self.root / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
        wanted = self.sources()
        changed = not self.sources_list.is_file() or self.sources_list.read_text() != wanted
        if changed:
            atomic_write(self.sources_list, wanted, mode=0o644)
        if changed or not any((self.root / "lists").glob(f"*{SUITE}*Packages*")):
            self.update()

    def update(self) -> None:
        """apt-get update, into our own lists folder."""
        try:
            self.runner.run(["apt-get", *self.options(), "update", "-q"], timeout=900)
        except CommandFailed as exc:
            raise ImageError(
                f"apt-get could not fetch trixie's package lists from {self.mirrors.archive}: {exc.message.split(': ', 1)[-1]}",
                "Check the network, then run `pymachine image build` again",
            ) from None

    def show(self, names: Iterable[str], arch: str) -> dict[str, dict[str, str]]:
        """apt-cache's record of the candidate version of each package, for `arch`."""
        names = list(names)
        records = self._show([f"{name}:{arch}" for name in names], (arch,))
        # apt files Architecture: all packages under its first architecture only.
        rest = [name for name in names if name not in records]
        if rest:
            records.update(self._show(rest, ("all",)))
        return records

    def _show(self, names: list[str], arches: tuple[str, ...]) -> dict[str, dict[str, str]]:
        out = self.runner.run(["apt-cache", *self.options(), "show", "--no-all-versions", *names], check=False, timeout=300)
        records: dict[str, dict[str, str]] = {}
        for block in out.stdout.split("\n\n"):
            fields = _deb822(block)
            name = fields.get("package")
            if name and fields.get("architecture") in arches:
                records.setdefault(name, fields)
        return records

    def download(self, packages: Iterable[tuple[str, str]], arch: str, into: Path) -> None:
        """`apt-get download name:arch=version ...` into the folder `into`."""
        into.mkdir(parents=True, exist_ok=True)
        packages = list(packages)
        if not packages:
            return
        # Architecture: all packages are filed under apt's first architecture: ask for
        # them without one.
        native = self._show([f"{name}:{arch}" for name, _ in packages], (arch,))
        wanted = [f"{name}:{arch}={version}" if name in native else f"{name}={version}" for name, version in packages]
        try:
            self.runner.run(["apt-get", *self.options(), "download", "-q", *wanted], cwd=str(into), timeout=1800)
        except CommandFailed:
            # Lists older than the pins (or a mirror that moved on): fetch them and retry once.
            self.update()
            try:
                self.runner.run(["apt-get", *self.options(), "download", "-q", *wanted], cwd=str(into), timeout=1800)
            except CommandFailed as exc:
                raise ImageError(
                    f"apt-get could not download the pinned packages: {exc.message.split(': ', 1)[-1]}",
                    "If a pinned version is gone from the archive, run `pymachine image lock` and build again",
                ) from None
