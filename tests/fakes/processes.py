"""Fake VM processes for the hypervisor guard: a sleeping script behind a symlink named
like the real VM process (VBoxHeadless, prl_vm_app, qemu-system-x86_64), started with
the real one's arguments, so /proc shows the same name and command line."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path


class FakeVMs:
    """Starts fake VM processes and stops each of them, by PID."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.processes: list[subprocess.Popen[bytes]] = []
        self.sleeper = folder / "sleeper.py"
        self.sleeper.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(300)\n")
        self.sleeper.chmod(0o755)

    def start(self, name: str, *args: str) -> int:
        link = self.folder / name
        if not link.exists():
            link.symlink_to(self.sleeper)
        process = subprocess.Popen([str(link), *args], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.processes.append(process)
        self._wait_visible(process.pid)
        return process.pid

    def _wait_visible(self, pid: int) -> None:
        # Until exec completes, /proc shows the parent's name and arguments.
        cmdline = Path(f"/proc/{pid}/cmdline")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if str(self.folder).encode() in cmdline.read_bytes():
                    return
            except OSError:
                pass
            time.sleep(0.02)
        raise AssertionError(f"fake VM process {pid} never showed its command line")

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)
