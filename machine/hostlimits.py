"""What this host can give one machine: its memory, its CPUs, and the largest data disk.

`create` checks a machine's size against them before anything is made: a hypervisor
asked for more than the host has fails only when the VM starts, or runs it swapping.
"""

from __future__ import annotations

import os

from pymachine.errors import MachineError

#: The largest data disk pymachine makes: qcow2's own ceiling (64 TiB at the default
#: cluster size); anything larger is a typo, not a plan. Disks grow as used.
MAX_DISK_MB = 64 * 1024 * 1024


def host_memory_mb() -> int | None:
    """This host's physical memory in MB; None where the system does not tell."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)
    except (AttributeError, ValueError, OSError):
        return None


def host_cpus() -> int | None:
    """This host's CPU count; None where the system does not tell."""
    return os.cpu_count()


def check_machine_size(cpus: int, memory_mb: int, disk_mb: int, memory_limit: int | None = None, cpu_limit: int | None = None) -> None:
    """Refuse a size this host cannot give, in one line naming the option to change.

    The limits default to this host's; tests pass their own."""
    memory_limit = host_memory_mb() if memory_limit is None else memory_limit
    cpu_limit = host_cpus() if cpu_limit is None else cpu_limit
    if cpu_limit and cpus > cpu_limit:
        raise MachineError(f"--cpus {cpus} is more than this host's {cpu_limit} CPUs", f"Run `pymachine create` with --cpus {cpu_limit} or fewer")
    if memory_limit and memory_mb > memory_limit:
        raise MachineError(f"--memory {memory_mb} MB is more than this host's {memory_limit} MB", f"Run `pymachine create` with --memory {max(256, memory_limit // 2)} or less")
    if disk_mb > MAX_DISK_MB:
        raise MachineError(f"--disk-size {disk_mb} MB is more than the 64 TiB a data disk can be", "Run `pymachine create` with a smaller --disk-size, such as 40G")
