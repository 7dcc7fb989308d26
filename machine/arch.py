"""Guest architectures, named as Debian names them (amd64, arm64).

A machine's guest has the host's architecture unless `create --arch` says otherwise;
then it runs emulated. The names users may type include the kernel's (x86_64, aarch64).
"""

from __future__ import annotations

import platform

from pymachine.errors import MachineError

AMD64 = "amd64"
ARM64 = "arm64"
ARCHES = (AMD64, ARM64)

_ALIASES = {"amd64": AMD64, "x86_64": AMD64, "x86-64": AMD64, "arm64": ARM64, "aarch64": ARM64}
#: The name QEMU, the kernel and Docker's platform strings use for each.
_MACHINE = {AMD64: "x86_64", ARM64: "aarch64"}


def normalize(name: str) -> str:
    """The Debian name of an architecture given by any of its usual names."""
    found = _ALIASES.get(name.strip().lower())
    if found is None:
        raise MachineError(f"Unknown architecture '{name}' (pymachine runs {' and '.join(ARCHES)} guests)", "Run `pymachine create --help`")
    return found


def host_arch() -> str:
    """This host's architecture; an unknown one is named as the OS reports it."""
    machine = platform.machine()
    return _ALIASES.get(machine.lower(), machine.lower())


def kernel_name(arch: str) -> str:
    """x86_64 or aarch64: what `uname -m` prints in such a guest, and QEMU's system suffix."""
    return _MACHINE[arch]


def docker_platform(arch: str) -> str:
    """Docker's platform string for a guest of this architecture."""
    return f"linux/{arch}"
