"""Fakes of four macOS tools: `sysctl`, `codesign`, `sw_vers` and `ps`, as a Mac prints them.

Run as `python macos.py PROGRAM ARGS...` by the wrappers tools.py writes. What the Mac
is (its sysctl values, its version, which binaries are signed with which entitlements)
is a JSON file named by $PYMACHINE_FAKE_MACOS; FakeMac writes it. Every argv is logged
beside it.

Output shapes, from macOS and from public reports of them:

- `sysctl -n NAME` prints the value; `sysctl NAME` prints `NAME: VALUE`. A name this Mac
  does not have (hw.optional.arm.FEAT_SME before macOS 14) prints
  `sysctl: unknown oid 'NAME'` on stderr and exits 1.
- `codesign -d --entitlements - PATH` prints `Executable=PATH` on stderr and the
  entitlements on stdout: from macOS 12 as a tree (`[Dict]`, a tab, `[Key] NAME`,
  `[Value]`, two tabs, `[Bool] true`), before that as the XML plist behind the
  entitlement blob's 8-byte header (magic 0xfade7171 and the length, big-endian).
  `--xml` gives the bare XML from macOS 12; older codesign says
  "codesign: unrecognized option `--xml'" and its usage, exit 2 (lima#1975). An unsigned
  binary: `PATH: code object is not signed at all`, exit 1; a missing one:
  `PATH: No such file or directory`, exit 1. A signature without entitlements prints
  only the Executable line.
- `ps -axo pid=,comm=` prints each process's PID right-aligned in five columns, a space,
  and `comm`, which on macOS is the executable's whole path (spaces included, not cut at
  16 characters as on Linux); `ps -o args= -p PID` (or `-o command=`, the same column)
  prints its command line joined with spaces, and nothing (exit 1) for a PID that does
  not exist.
- `sw_vers` prints `ProductName:`, `ProductVersion:` and `BuildVersion:` lines (two tabs
  after the first two names, one after the last, as macOS 11 and later do);
  `sw_vers -productVersion` prints the version alone.

Not confirmed, so nothing depends on the wording: sysctl's usage text and codesign's
for options this fake does not know.
"""

from __future__ import annotations

import json
import os
import plistlib
import struct
import sys
from pathlib import Path
from typing import Any

STATE_ENV = "PYMACHINE_FAKE_MACOS"
ENTITLEMENTS_MAGIC = 0xFADE7171

CODESIGN_USAGE = """Usage: codesign -s identity [-fv*] [-o flags] [-r reqs] [-i ident] path ... # sign
       codesign -v [-v*] [-R=<req string>|-R <req file path>] path|[+]pid ... # verify
       codesign -d [options] path ... # display contents
       codesign -h pid ... # display hosting paths"""


class FakeMac:
    """The state file: what this Mac reports."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def initialise(self, *, chip: str = "Apple M1 Pro", macos: str = "14.5", build: str = "23F79", hv_support: str = "1", sme: str | None = "0") -> FakeMac:
        """An Apple Silicon Mac; `sme` None is a macOS that has no FEAT_SME sysctl."""
        sysctl = {"kern.hv_support": hv_support, "machdep.cpu.brand_string": chip, "hw.optional.arm64": "1", "kern.osproductversion": macos}
        if sme is not None:
            sysctl["hw.optional.arm.FEAT_SME"] = sme
        self.save({"sysctl": sysctl, "sw_vers": {"ProductName": "macOS", "ProductVersion": macos, "BuildVersion": build}, "binaries": {}, "processes": [], "log": []})
        return self

    def run(self, pid: int, executable: str, *args: str) -> None:
        """A process this Mac runs: its executable's path and its arguments."""
        data = self.load()
        data.setdefault("processes", []).append({"pid": pid, "comm": executable, "args": " ".join([executable, *args])})
        self.save(data)

    def intel(self, macos: str = "13.6.7", hv_support: str = "1") -> FakeMac:
        """An Intel Mac: no hw.optional.arm.* names at all."""
        data = self.load()
        data["sysctl"] = {"kern.hv_support": hv_support, "machdep.cpu.brand_string": "Intel(R) Core(TM) i7-9750H CPU @ 2.60GHz", "kern.osproductversion": macos}
        data["sw_vers"]["ProductVersion"] = macos
        self.save(data)
        return self

    def sign(self, binary: str | Path, entitlements: dict[str, Any] | None) -> None:
        """Record `binary` as signed with these entitlements (None: not signed at all)."""
        data = self.load()
        data["binaries"][os.path.realpath(binary)] = {"signed": entitlements is not None, "entitlements": entitlements or {}}
        self.save(data)

    def set(self, section: str, key: str, value: Any) -> None:
        data = self.load()
        data[section][key] = value
        self.save(data)

    def calls(self) -> list[list[str]]:
        return self.load()["log"]

    def load(self) -> dict[str, Any]:
        return json.loads(self.path.read_text())

    def save(self, data: dict[str, Any]) -> None:
        self.path.write_text(json.dumps(data, indent=1))


def main(argv: list[str]) -> int:
    program, args = argv[0], argv[1:]
    fake = FakeMac(Path(os.environ[STATE_ENV]))
    data = fake.load()
    data["log"].append([program, *args])
    fake.save(data)
    handler = {"sysctl": sysctl, "codesign": codesign, "sw_vers": sw_vers, "ps": ps}[program]
    return handler(data, args)


def sysctl(data: dict[str, Any], args: list[str]) -> int:
    values_only = False
    names = []
    for arg in args:
        if arg == "-n":
            values_only = True
        elif arg.startswith("-"):
            sys.stderr.write(f"sysctl: illegal option -- {arg[1:2]}\nusage: sysctl [-bdehiNnoqx] name[=value] ...\n       sysctl [-bdehNnoqx] -a\n")
            return 1
        else:
            names.append(arg)
    status = 0
    for name in names:
        if name not in data["sysctl"]:
            sys.stderr.write(f"sysctl: unknown oid '{name}'\n")
            status = 1
            continue
        value = data["sysctl"][name]
        sys.stdout.write(f"{value}\n" if values_only else f"{name}: {value}\n")
    return status


def codesign(data: dict[str, Any], args: list[str]) -> int:
    display, xml, entitlements_to = False, False, None
    paths = []
    index = 0
    while index < len(args):
        arg = args[index]
        if arg in ("-d", "--display"):
            display = True
        elif arg == "--entitlements":
            index += 1
            entitlements_to = args[index] if index < len(args) else None
        elif arg.startswith("--entitlements="):
            entitlements_to = arg.split("=", 1)[1]
        elif arg == "--xml":
            xml = True
        elif arg.startswith("-"):
            sys.stderr.write(f"codesign: unrecognized option `{arg}'\n{CODESIGN_USAGE}\n")
            return 2
        else:
            paths.append(arg)
        index += 1
    modern = int(data["sw_vers"]["ProductVersion"].split(".")[0]) >= 12
    if xml and not modern:
        sys.stderr.write(f"codesign: unrecognized option `--xml'\n{CODESIGN_USAGE}\n")
        return 2
    if not display or not paths:
        sys.stderr.write(f"{CODESIGN_USAGE}\n")
        return 2
    status = 0
    for path in paths:
        real = os.path.realpath(path)
        if not os.path.exists(real):
            sys.stderr.write(f"{path}: No such file or directory\n")
            status = 1
            continue
        binary = data["binaries"].get(real)
        if binary is None or not binary["signed"]:
            sys.stderr.write(f"{path}: code object is not signed at all\n")
            status = 1
            continue
        sys.stderr.write(f"Executable={real}\n")
        granted = binary["entitlements"]
        if entitlements_to != "-" or not granted:
            continue
        plist = plistlib.dumps(granted)
        if xml:
            sys.stdout.buffer.write(plist)
        elif modern:
            sys.stdout.write(tree(granted))
        else:
            sys.stdout.buffer.write(struct.pack(">II", ENTITLEMENTS_MAGIC, len(plist) + 8) + plist)
    sys.stdout.flush()
    return status


def tree(entitlements: dict[str, Any]) -> str:
    lines = ["[Dict]"]
    for key, value in entitlements.items():
        kind = "Bool" if isinstance(value, bool) else "String"
        shown = str(value).lower() if isinstance(value, bool) else str(value)
        lines += [f"\t[Key] {key}", "\t[Value]", f"\t\t[{kind}] {shown}"]
    return "\n".join(lines) + "\n"


def ps(data: dict[str, Any], args: list[str]) -> int:
    """The forms pymachine uses: `-axo pid=,comm=`, and `-o args= -p PID` or `-o command= -p PID`."""
    processes = data.get("processes", [])
    if args == ["-axo", "pid=,comm="]:
        for proc in [{"pid": 1, "comm": "/sbin/launchd", "args": "/sbin/launchd"}, *processes]:
            sys.stdout.write(f"{proc['pid']:>5} {proc['comm']}\n")
        return 0
    # `args` and `command` are one column on macOS: the command line joined with spaces.
    if len(args) == 4 and args[0] == "-o" and args[1] in ("args=", "command=") and args[2] == "-p" and args[3].isdigit():
        found = [p for p in processes if p["pid"] == int(args[3])]
        if not found:
            return 1
        sys.stdout.write(found[0]["args"] + "\n")
        return 0
    sys.stderr.write("usage: ps [-AaCcEefhjlMmrSTvwXx] [-O fmt | -o fmt] [-G gid[,gid...]]\n          [-g grp[,grp...]] [-u [uid,uid...]]\n          [-p pid[,pid...]] [-t tty[,tty...]] [-U user[,user...]]\n       ps [-L]\n")
    return 1


def sw_vers(data: dict[str, Any], args: list[str]) -> int:
    facts = data["sw_vers"]
    if not args:
        sys.stdout.write(f"ProductName:\t\t{facts['ProductName']}\nProductVersion:\t\t{facts['ProductVersion']}\nBuildVersion:\t\t{facts['BuildVersion']}\n")
        return 0
    keys = {"-productName": "ProductName", "-productVersion": "ProductVersion", "-buildVersion": "BuildVersion"}
    if len(args) != 1 or args[0] not in keys:
        sys.stderr.write("Usage: sw_vers [-productName|-productVersion|-productVersionExtra|-buildVersion]\n")
        return 1
    sys.stdout.write(f"{facts[keys[args[0]]]}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
