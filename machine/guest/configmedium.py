"""Each machine's config medium: a small ISO the guest reads at boot.

It carries the hostname, the user's SSH public key, the guest's SSH host key, which
the host generated, so the host knows the host key before it first connects, and the
host folders to mount (`mounts`: one `TAG rw|ro GUEST-PATH` line each) and, where the
hypervisor's NAT takes large frames, the NIC's MTU (`network`: `mtu N`). Every
hypervisor can attach an ISO as a CD or disk; the guest finds it by its volume id.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pymachine.driver import Mount, share_tag
from pymachine.guest.iso9660 import IsoWriter
from pymachine.store import atomic_write

VOLUME_ID = "PMCONFIG"
#: busybox findfs ignores devices smaller than 64 KiB; 1 MiB also suits every hypervisor.
SIZE = 1 << 20


def mount_lines(mounts: Sequence[Mount]) -> str:
    """The `mounts` file: `TAG rw|ro GUEST-PATH` per line (the path last, so it may hold spaces)."""
    return "".join(f"{share_tag(i)} {'rw' if m.writable else 'ro'} {m.guest}\n" for i, m in enumerate(mounts))


def config_medium(hostname: str, authorized_key: str, host_key_pem: bytes, mounts: Sequence[Mount] = (), mtu: int = 0) -> bytes:
    """The ISO bytes for one machine; `mtu` 0 leaves the NIC at Ethernet's 1500."""
    writer = IsoWriter(VOLUME_ID)
    writer.add_file("hostname", hostname.encode() + b"\n")
    writer.add_file("authorized_keys", authorized_key.strip().encode() + b"\n")
    writer.add_file("ssh_host_ed25519_key", host_key_pem)
    if mounts:
        writer.add_file("mounts", mount_lines(mounts).encode())
    if mtu:
        writer.add_file("network", f"mtu {mtu}\n".encode())
    return writer.write(min_size=SIZE)


def write_config_medium(path: Path, hostname: str, authorized_key: str, host_key_pem: bytes, mounts: Sequence[Mount] = (), mtu: int = 0) -> None:
    # It holds a private key: readable by the owner alone.
    atomic_write(path, config_medium(hostname, authorized_key, host_key_pem, mounts, mtu), mode=0o600)
