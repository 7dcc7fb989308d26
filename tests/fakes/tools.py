"""Wrappers that make the fake programs look like the real ones on a search path."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

FAKES = Path(__file__).resolve().parent

#: program name -> the fake that plays it
PROGRAMS = {
    "VBoxManage": "vboxmanage.py",
    "prlctl": "parallels.py",
    "prlsrvctl": "parallels.py",
    "prl_disk_tool": "parallels.py",
    "sysctl": "macos.py",
    "codesign": "macos.py",
    "sw_vers": "macos.py",
    "ps": "macos.py",
}


def install(bin_dir: Path, *programs: str) -> Path:
    """Write an executable wrapper per program into bin_dir; returns bin_dir."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    for program in programs:
        wrapper = bin_dir / program
        script = FAKES / PROGRAMS[program]
        # exec: the runner's timeout then stops the fake itself, leaving no child behind.
        # -S: the fakes need only the standard library, and start faster without site.
        wrapper.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -S {shlex.quote(str(script))} {shlex.quote(program)} \"$@\"\n")
        wrapper.chmod(0o755)
    return bin_dir
