"""The QEMU driver: a daemonized qemu-system with user networking, on macOS and Linux.

Files in the machine's folder:
    data.qcow2      the data disk (sparse; the guest formats it on first boot)
    qemu.pid        QEMU's pid (written by QEMU itself)
    serial.log      the guest's console for this boot (serial.log.1: the previous one)
    control.qmp     QMP socket for pymachine commands
    watcher.qmp     QMP socket for the forward watcher (a QMP socket serves one client)
    qemu.log        what QEMU printed while starting

SSH and the Docker TLS port are host forwards on 127.0.0.1 given on the command line;
container ports are added and removed at run time with hostfwd_add/hostfwd_remove.

Each guest architecture has its own emulator and board: amd64 runs on
qemu-system-x86_64's q35, arm64 on qemu-system-aarch64's virt. The host's own
architecture runs under HVF (macOS) or KVM (Linux) where they really work, the other one
under TCG. Direct kernel boot needs no firmware; `-o boot=cdrom` boots the ISO through
SeaBIOS (amd64) or UEFI firmware found through QEMU's firmware descriptors
(qemu_firmware.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import plistlib
import re
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pymachine.arch import AMD64, ARCHES, ARM64, host_arch, kernel_name
from pymachine.driver import (
    EMULATED,
    GUEST_DOCKER_PORT,
    GUEST_SSH_PORT,
    NATIVE,
    Driver,
    DriverOptions,
    Feature,
    HostReport,
    PortForward,
    State,
    option,
    share_tag,
)
from pymachine.errors import (
    CommandFailed,
    DriverError,
    DriverNotAvailable,
    MachineStateError,
    PortUnavailable,
)
from pymachine.procs import carries, cmdline, resident_mb, running_from, terminate, wait_gone
from pymachine.runner import Runner

from .qemu_firmware import FirmwareChoice, choose_uefi, descriptor_files, read_descriptors, search_folders
from .qmp import QMPClient, QMPError

NETDEV = "net0"
#: The data disk's drive id: QMP's block_resize names it.
DATA_DRIVE = "data"
MIB = 1024 * 1024
#: systemd-boot appends what follows this SMBIOS Type 11 prefix to the kernel's command line.
SMBIOS_CMDLINE = "io.systemd.boot.kernel-cmdline-extra="
#: The longest unix socket path macOS accepts (Linux allows 107).
MAX_SOCKET_PATH = 103
ACCELERATORS = ("auto", "hvf", "kvm", "tcg")
#: Where Homebrew installs: Apple Silicon, then Intel. Searched (bin/) for qemu-system-*
#: and qemu-img when they are not on PATH, as happens when a GUI or launchd starts us.
HOMEBREW_PREFIXES = ("/opt/homebrew", "/usr/local")
#: The oldest QEMU that runs arm64 guests reliably on Apple Silicon (Lima's floor).
MIN_QEMU_APPLE_SILICON = (8, 2, 1)
#: Multi-threaded TCG in QEMU 7.2 (Debian 12) now and then leaves an x86-64 guest running
#: a stale int3 after the kernel patched its own code (text_poke_bp), which panics it
#: ("Oops: int3" in sched_clock_cpu at boot, or later as iptables loads). Measured here:
#: 1 boot in about 20 on QEMU 7.2; none in 60 on 10.0. Older QEMUs run amd64 guests under
#: single-threaded TCG: about a fifth slower to create, but they do not die. 10.0.2 is not
#: wholly free of it: one guest panicked so at its first container start (docs/drivers.md).
MTTCG_SAFE_FOR_X86 = (10, 0)
#: macOS older than this can panic with more than 3 GiB of guest memory under HVF (lima#795).
MIN_MACOS_BIG_GUESTS = (12, 4)
#: What a qemu binary must be signed with before Hypervisor.framework lets it in.
HVF_ENTITLEMENT = "com.apple.security.hypervisor"
#: The size QEMU's virt machine wants of a pflash image (AAVMF_CODE.fd is padded to it).
VIRT_PFLASH_BYTES = 64 * 1024 * 1024

#: The amd64 CPU under TCG: x86-64-v2 (what RHEL 9 based images need) plus AES-NI, on
#: QEMU's plain model. `-cpu max` adds AVX, XSAVE and more that TCG emulates slowly:
#: dockerd took 21-26 s to answer after boot with it, 17 s with this.
TCG_CPU = "qemu64,+ssse3,+sse4.1,+sse4.2,+popcnt,+cx16,+aes,+pclmulqdq"
#: The arm64 CPU under TCG, measured with bench/arm64_cpu.py (QEMU 7.2 on a 2-core x86-64
#: host, Debian 13's 6.12 kernel, a busybox initramfs, 2 vCPUs, medians of 5): 600
#: fork+execs of /bin/true took 7.6 s with max,pauth=off, 8.8 s max,pauth-impdef=on,
#: 9.0 s cortex-a76, 9.9 s neoverse-n1, 10.4 s cortex-a53, 10.7 s cortex-a57, 11.2 s
#: cortex-a72 and 20.3 s max, whose pointer authentication (QARMA5) TCG computes in
#: software; boot to /init took 3.3-3.7 s with all but max (9.1 s). docs/drivers.md has
#: the table. `max` follows the QEMU version; cortex-a76 is the steady runner-up.
TCG_CPU_ARM64 = "max,pauth=off"
#: Intel Macs under HVF, as Lima runs them (lima#1485).
INTEL_MAC_HVF_CPU = "host,-avx512vl,-pdpe1gb"


@dataclass
class QemuOptions(DriverOptions):
    accel: str = option("auto", "Accelerator: auto, hvf, kvm or tcg (auto picks the fastest that really works here for the guest's architecture)")
    restrict_network: bool = option(False, "Cut the guest off from every network but its own forwards (restrict=on); image pulls then fail")
    boot: str = option("auto", "auto (direct kernel boot when the image has a kernel), kernel, or cdrom")
    binary: str = option("", "The qemu-system program to run (default: qemu-system-x86_64 or qemu-system-aarch64 for the guest's architecture, on PATH or in Homebrew's bin folder)")
    aslr: str = option("auto", "Address space randomization in the guest: auto (off under TCG, where it halves the cost of starting a process; on with HVF/KVM), on or off")
    firmware: str = option("auto", "What -o boot=cdrom boots through: auto (SeaBIOS for amd64, UEFI for arm64), bios (amd64 only), uefi (found through QEMU's firmware descriptors), or the path of a UEFI code image")
    cpu: str = option("auto", "The -cpu model: auto (host under HVF/KVM, with Lima's fixes for Intel Macs and Apple M4; under TCG the fastest model measured), or a model from `qemu-system-... -cpu help`")


@dataclass(frozen=True)
class Accelerator:
    """The accelerator chosen, and why."""

    name: str
    reason: str


@dataclass(frozen=True)
class CpuModel:
    """The -cpu value chosen, and why."""

    model: str
    reason: str


def system_program(arch: str) -> str:
    """The emulator for guests of `arch`: qemu-system-x86_64 or qemu-system-aarch64."""
    return f"qemu-system-{kernel_name(arch)}"


def install_hint(arch: str) -> str:
    """The command that installs QEMU for `arch` guests on this kind of host."""
    if platform.system() == "Darwin":
        return "Run `brew install qemu`"
    packages = "qemu-system-arm qemu-efi-aarch64 qemu-utils" if arch == ARM64 else "qemu-system-x86 qemu-utils"
    return f"Run `sudo apt-get install {packages}` (Debian and Ubuntu; elsewhere your distribution's QEMU packages)"


def firmware_hint(arch: str) -> str:
    """The command that installs UEFI firmware for `arch` guests on this kind of host."""
    if platform.system() == "Darwin":
        return "Run `brew install qemu` (it brings edk2 firmware)"
    return f"Run `sudo apt-get install {'qemu-efi-aarch64' if arch == ARM64 else 'ovmf'}`"


def find_program(runner: Runner, program: str) -> str | None:
    """`program` as the runner will run it, or None when it is nowhere to be found.

    On the runner's search path, its name is kept (the argv stays as typed); on a Mac,
    a program found only in Homebrew's bin folders is given by its full path.
    """
    if runner.which(program):
        return program
    if platform.system() == "Darwin" and "/" not in program:
        found = runner.which(program, path=os.pathsep.join(f"{prefix}/bin" for prefix in HOMEBREW_PREFIXES))
        if found:
            return found
    return None


def binary_path(runner: Runner, program: str) -> str | None:
    """The full path of the program find_program finds."""
    found = find_program(runner, program)
    return None if found is None else runner.which(found) or found


def sysctl(runner: Runner, name: str) -> str | None:
    """`sysctl -n NAME` on a Mac; None when macOS does not know the name."""
    out = runner.run(["sysctl", "-n", name], check=False, timeout=10)
    return out.stdout.strip() if out.returncode == 0 else None


def detect_accelerator(runner: Runner, requested: str = "auto", arch: str = "") -> Accelerator:
    """HVF on a Mac that supports it, KVM where it can really run a stock kernel, else TCG.

    Either runs only the host's own architecture: a guest of the other one is emulated.
    `arch` "" is the host's.
    """
    if requested not in ACCELERATORS:
        raise DriverError(f"Unknown accelerator '{requested}'", "Use -o accel=auto, hvf, kvm or tcg")
    host = host_arch()
    arch = arch or host
    system = platform.system()
    if requested != "auto":
        if requested != "tcg" and arch != host:
            raise DriverError(f"{requested.upper()} runs only this {host} host's own architecture, not an {arch} guest", "Use -o accel=tcg (or auto)")
        return Accelerator(requested, "asked for with -o accel")
    if arch != host:
        hypervisor = {"Darwin": "HVF", "Linux": "KVM"}.get(system, "a hypervisor")
        return Accelerator("tcg", f"an {arch} guest on this {host} host is emulated: {hypervisor} runs only the host's own architecture")
    if system == "Darwin":
        support = sysctl(runner, "kern.hv_support")
        if support == "1":
            return Accelerator("hvf", "kern.hv_support is 1")
        return Accelerator("tcg", f"this Mac does not offer Hypervisor.framework (kern.hv_support is {support or 'missing'})")
    if system == "Linux":
        return _linux_kvm(arch)
    return Accelerator("tcg", f"no accelerator known for {system}")


def check_accelerator_available(runner: Runner, requested: str, arch: str = "") -> None:
    """Refuse, before anything is made, an accelerator asked for with -o accel that this
    host does not have: QEMU would only say so when the VM starts."""
    detect_accelerator(runner, requested, arch)  # unknown names and foreign guests
    if requested in ("auto", "tcg"):
        return
    system = platform.system()
    owner = {"hvf": "Darwin", "kvm": "Linux"}[requested]
    if system != owner:
        here = {"Darwin": "macOS"}.get(system, system)
        raise DriverError(
            f"-o accel={requested} is {'macOS' if owner == 'Darwin' else 'Linux'}'s hypervisor, and this host runs {here}",
            "Run `pymachine create` with -o accel=auto (it picks the fastest this host has) or -o accel=tcg",
        )
    if requested == "hvf":
        support = sysctl(runner, "kern.hv_support")
        if support != "1":
            raise DriverError(f"This Mac does not offer Hypervisor.framework (kern.hv_support is {support or 'missing'})", "Run `pymachine create` with -o accel=tcg")
        return
    # KVM asked for by name: /dev/kvm must at least be there and usable; the finer
    # checks of `auto` (a paravirtual nested KVM, missing vmx/svm) are left to the user.
    if not os.path.exists("/dev/kvm") or not os.access("/dev/kvm", os.R_OK | os.W_OK):
        reason = _linux_kvm(arch or host_arch()).reason
        raise DriverError(f"-o accel=kvm cannot work here: {reason}", "Run `pymachine create` with -o accel=auto or -o accel=tcg")


def _linux_kvm(arch: str) -> Accelerator:
    if not os.path.exists("/dev/kvm"):
        return Accelerator("tcg", "/dev/kvm does not exist (load the kvm module, or enable virtualization in firmware)")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return Accelerator("tcg", "/dev/kvm is not accessible to this user (add yourself to the kvm group)")
    if arch == ARM64:
        # No nested paravirtual KVM on arm64 that we know of: a usable /dev/kvm runs guests.
        return Accelerator("kvm", "/dev/kvm is usable")
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    if Path("/sys/module/kvm_pvm").exists():
        return Accelerator("tcg", "/dev/kvm is a paravirtual nested KVM (kvm_pvm), which cannot run a stock kernel")
    if not flags & {"vmx", "svm"}:
        return Accelerator("tcg", "/dev/kvm exists but the CPU shows no vmx/svm flag, so KVM cannot run a stock kernel here")
    return Accelerator("kvm", "/dev/kvm is usable and the CPU has hardware virtualization")


def choose_cpu(runner: Runner, accel: Accelerator, arch: str, requested: str = "auto") -> CpuModel:
    """The -cpu value for a guest of `arch` under `accel`."""
    if requested != "auto":
        return CpuModel(requested, "asked for with -o cpu")
    if accel.name == "tcg":
        if arch == ARM64:
            return CpuModel(TCG_CPU_ARM64, "the model that started processes fastest under TCG (docs/drivers.md)")
        return CpuModel(TCG_CPU, "x86-64-v2 and AES-NI without the extensions TCG emulates slowly")
    if accel.name == "hvf":
        if arch == AMD64:
            return CpuModel(INTEL_MAC_HVF_CPU, "an Intel Mac: without AVX-512VL and 1 GiB pages, as Lima runs it (lima#1485)")
        if sysctl(runner, "hw.optional.arm.FEAT_SME") == "1":
            return CpuModel("max", "Apple M4 (hw.optional.arm.FEAT_SME is 1): guests break with -cpu host under HVF (lima#3032)")
        return CpuModel("host", "the host's own CPU, under HVF")
    return CpuModel("host", f"the host's own CPU, under {accel.name.upper()}")


def qemu_version(runner: Runner, binary: str) -> str:
    """`x.y.z` from `qemu-system-... --version`; "" when it does not say."""
    out = runner.run([binary, "--version"], check=False, timeout=10).stdout
    found = re.search(r"version (\d+\.\d+(?:\.\d+)?)", out)
    return found.group(1) if found else ""


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def hypervisor_entitlement(output: str) -> bool:
    """True if `codesign -d --entitlements - BINARY` output grants the HVF entitlement.

    macOS 12 and later print a tree (`[Key] NAME`, `[Value]`, `[Bool] true`); older ones
    print the XML plist behind an 8-byte blob header.
    """
    if "<plist" in output or "<?xml" in output:
        start = min(i for i in (output.find("<?xml"), output.find("<plist")) if i >= 0)
        end = output.rfind("</plist>")
        if end >= 0:
            try:
                data = plistlib.loads(output[start : end + len("</plist>")].encode())
            except Exception:  # a damaged dump: fall back to reading the key's next element
                data = None
            if isinstance(data, dict):
                return data.get(HVF_ENTITLEMENT) is True
        return re.search(re.escape(HVF_ENTITLEMENT) + r"</key>\s*<true\s*/>", output) is not None
    lines = [line.strip() for line in output.splitlines()]
    for index, line in enumerate(lines):
        if line == f"[Key] {HVF_ENTITLEMENT}":
            value = " ".join(lines[index + 1 : index + 3])
            return re.match(r"\[Value\]\s*\[Bool\] true\b", value) is not None
    return False


def machine_type(arch: str, accel: Accelerator) -> str:
    """The -machine value: q35 for amd64; virt for arm64.

    gic-version=max gives virt a GICv3 under TCG and KVM: GICv2, virt's default, stops at
    8 vCPUs, and many arm64 KVM hosts have no GICv2 at all. Under HVF QEMU has long offered
    only GICv2 (lima#849: at most 8 vCPUs), so there virt keeps its default, as in Lima.
    highmem stays on (its default): highmem=off fails beyond 3 GiB of RAM (lima#680).
    """
    if arch == AMD64:
        return "q35"
    return "virt" if accel.name == "hvf" else "virt,gic-version=max"


def smp(arch: str, cpus: int) -> str:
    """The -smp value. On virt the topology is spelled out, as Lima does: one socket of
    N cores, the same on every QEMU version (older ones made N sockets)."""
    if arch == AMD64:
        return str(cpus)
    return f"{cpus},sockets=1,cores={cpus},threads=1"


def cdrom_args(iso: Path, arch: str) -> list[str]:
    """The ISO as a CD the firmware can boot.

    q35 has an AHCI controller, so the ISO is an IDE CD there. The virt board has no
    IDE or AHCI: the ISO is a SCSI CD on virtio-scsi, a real CD-ROM (2048-byte sectors,
    a TOC, removable media) that edk2 boots by El Torito as it would a physical one, and
    that the guest sees as /dev/sr0, as it sees the CDs of the other drivers. virtio-blk
    also boots (edk2 finds El Torito on a 512-byte-sector disk too), but it ignores
    media=cdrom and puts a read-only disk among the guest's disks, where the data disk
    and the config medium are looked for.
    """
    if arch == AMD64:
        return ["-drive", f"file={option_value(iso)},if=none,id=cd0,media=cdrom,readonly=on", "-device", "ide-cd,drive=cd0,bootindex=0"]
    return [
        "-device", "virtio-scsi-pci,id=scsi0",
        "-drive", f"file={option_value(iso)},if=none,id=cd0,format=raw,media=cdrom,readonly=on",
        "-device", "scsi-cd,bus=scsi0.0,drive=cd0,bootindex=0",
    ]  # fmt: skip


def firmware_args(firmware: FirmwareChoice | None, arch: str) -> list[str]:
    """The firmware for a cdrom boot: nothing (QEMU's SeaBIOS), or UEFI code read-only.

    No variables drive, as Lima runs it: edk2 then keeps its variables in RAM and boots
    the removable-media path (EFI/BOOT/BOOTAA64.EFI, BOOTX64.EFI) of the first bootable
    device, and no per-machine NVRAM file has to be made, kept and migrated.
    virt's flash is 64 MiB: a smaller image (QEMU_EFI.fd, 2 MiB) is loaded with -bios.
    """
    if firmware is None:
        return []
    if arch == ARM64 and firmware.path.stat().st_size != VIRT_PFLASH_BYTES:
        return ["-bios", str(firmware.path)]
    return ["-drive", f"if=pflash,format={firmware.format},readonly=on,file={option_value(firmware.path)}"]


def tuning_words(options: QemuOptions, accel: Accelerator) -> list[str]:
    """Kernel words that only pay off under emulation.

    Emulated CPUs do not speculate, so Spectre/Meltdown mitigations only cost time;
    without ASLR, TCG reuses its translations of ld.so and libc across processes.
    """
    words = []
    if accel.name == "tcg":
        words.append("mitigations=off")
    if options.aslr == "off" or (options.aslr == "auto" and accel.name == "tcg"):
        words.append("norandmaps")
    return words


def resolve_firmware(runner: Runner, options: QemuOptions, arch: str, program: str = "", uefi: bool = False) -> FirmwareChoice | None:
    """What a cdrom boot of an `arch` guest boots through, per -o firmware; None is SeaBIOS.
    `uefi`: with -o firmware=auto, an amd64 guest boots through UEFI too."""
    wanted = options.firmware.strip()
    if arch == AMD64 and (wanted == "bios" or (wanted == "auto" and not uefi)):
        return None
    if wanted == "bios":
        raise DriverError("arm64 guests boot through UEFI: QEMU's virt machine has no BIOS", "Use -o firmware=auto, uefi, or the path of a UEFI code image")
    if wanted in ("auto", "uefi"):
        program = program or options.binary or system_program(arch)
        return discover_uefi(runner, binary_path(runner, program), arch)
    path = Path(wanted).expanduser()
    if not path.is_file():
        raise DriverError(f"The firmware {path} does not exist", "Fix -o firmware=PATH, or use -o firmware=uefi for the one QEMU's firmware descriptors name")
    if not os.access(path, os.R_OK):
        raise DriverError(f"The firmware {path} cannot be read", f"Run `chmod a+r {path}`, or use -o firmware=uefi")
    return FirmwareChoice(path, "raw", None)


def discover_uefi(runner: Runner, binary: str | None, arch: str) -> FirmwareChoice:
    """The UEFI code image QEMU's firmware descriptors offer for `arch` guests."""
    environ = {**os.environ, **(runner.env or {})}
    folders = search_folders(binary if binary and os.path.isabs(binary) else None, environ)
    descriptors, skipped = read_descriptors(descriptor_files(folders))
    machine = "q35" if arch == AMD64 else "virt"
    choice, passed_over = choose_uefi(descriptors, kernel_name(arch), machine)
    if choice is None:
        why = "; ".join(passed_over + skipped)
        where = ", ".join(str(f) for f in folders)
        raise DriverError(
            f"No UEFI firmware for {arch} guests in QEMU's firmware descriptors ({where})" + (f": {why}" if why else ""),
            f"{firmware_hint(arch)}, or name a code image with -o firmware=PATH",
        )
    return choice


def mac_notes(runner: Runner, binary: str, version: str) -> list[str]:
    """What stands between this Mac and fast VMs: QEMU's version, HVF, the entitlement, macOS."""
    notes = []
    host = host_arch()
    if host == ARM64 and version and version_tuple(version) < MIN_QEMU_APPLE_SILICON:
        floor = ".".join(map(str, MIN_QEMU_APPLE_SILICON))
        notes.append(f"QEMU {version} is older than {floor}, the oldest that runs Apple Silicon guests reliably: run `brew upgrade qemu`")
    support = sysctl(runner, "kern.hv_support")
    if support == "1":
        notes.append("HVF: usable (kern.hv_support is 1)")
    else:
        notes.append(
            f"HVF: not usable (kern.hv_support is {support or 'missing'}), so every guest runs emulated: "
            "run pymachine on the Mac itself, or turn on nested virtualization for the macOS VM it runs in"
        )
    real = os.path.realpath(binary)
    sign = f"run `codesign --sign - --entitlements ENT.plist --force {real}`, ENT.plist granting {HVF_ENTITLEMENT} (docs/drivers.md)"
    signed = runner.run(["codesign", "-d", "--entitlements", "-", real], check=False, timeout=10)
    if signed.returncode != 0:
        said = (signed.stderr.strip() or signed.stdout.strip() or f"exit status {signed.returncode}").splitlines()[-1]
        notes.append(f"entitlement: codesign cannot read {real} ({said}), so HVF will refuse it: {sign}")
    elif hypervisor_entitlement(signed.stdout):
        notes.append(f"entitlement: {real} carries {HVF_ENTITLEMENT}")
    else:
        notes.append(f"entitlement: {real} lacks {HVF_ENTITLEMENT}, so HVF refuses it (HV_DENIED): {sign}")
    macos = runner.run(["sw_vers", "-productVersion"], check=False, timeout=10).stdout.strip()
    if macos and host == ARM64 and version_tuple(macos) < MIN_MACOS_BIG_GUESTS:
        floor = ".".join(map(str, MIN_MACOS_BIG_GUESTS))
        notes.append(f"macOS {macos}: guests with more than 3 GiB can panic the host under HVF (lima#795): update macOS to {floor} or later, or create machines with --memory 3072 or less")
    elif macos:
        notes.append(f"macOS {macos}")
    return notes


def private_folder(path: Path) -> Path:
    """`path` as a folder only this user can enter: made 0700 if missing, else checked.

    The QMP sockets in it steer the VM (`stop`, `quit`, forwards): in a shared folder
    such as /tmp, another local user who made it first could answer in QEMU's place.
    As OpenSSH does for a ControlPath, anything but a real folder (not a symlink) of
    ours, closed to group and others, is refused, never repaired behind the user's back.
    """
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise DriverError(f"Cannot make the QMP socket folder {path}: {exc.strerror}", "Set TMPDIR to a folder of your own, or use a shorter --storage-path") from None
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        kind = "a symbolic link" if stat.S_ISLNK(info.st_mode) else "not a folder"
        raise DriverError(
            f"Refusing the QMP socket folder {path}: it is {kind}, which someone else may have put there",
            f"Check it, remove it with `rm {path}`, and run the command again (or set TMPDIR to a folder of your own)",
        )
    if info.st_uid != os.getuid():
        raise DriverError(
            f"Refusing the QMP socket folder {path}: it belongs to uid {info.st_uid}, not to you (uid {os.getuid()})",
            f"Have its owner or root remove it (`sudo rm -r {path}`), or set TMPDIR to a folder of your own",
        )
    if info.st_mode & 0o077:
        raise DriverError(
            f"Refusing the QMP socket folder {path}: its mode {stat.S_IMODE(info.st_mode):04o} lets others in",
            f"Run `chmod 700 {path}`, then the command again",
        )
    return path


def option_value(value: object) -> str:
    """A value inside a QEMU option list (`file=...,if=none`): commas are doubled."""
    return str(value).replace(",", ",,")


class QemuDriver(Driver):
    """QEMU with user-mode networking (no root, no host network changes)."""

    name = "qemu"
    options_class = QemuOptions
    features = frozenset(
        {
            Feature.RUNTIME_FORWARDS,
            Feature.UDP_FORWARDS,
            Feature.ANY_HOST_ADDRESS,
            Feature.LOOPBACK_FORWARDS,
            Feature.SERIAL_LOG,
            Feature.DIRECT_KERNEL_BOOT,
            Feature.SHARED_FOLDERS,
            Feature.DISK_GROW,
            Feature.ONLINE_DISK_GROW,
            Feature.LARGE_FRAMES,
        }
    )
    options: QemuOptions

    # -- paths ------------------------------------------------------------------------

    @property
    def directory(self) -> Path:
        return self.spec.directory

    @property
    def disk(self) -> Path:
        return self.directory / "data.qcow2"

    @property
    def pidfile(self) -> Path:
        # Absolute: its path in QEMU's command line is how this machine's QEMU is known.
        return Path(os.path.abspath(self.directory / "qemu.pid"))

    def _socket(self, role: str) -> str:
        path = str(self.directory / f"{role}.qmp")
        if len(path) <= MAX_SOCKET_PATH:
            return path
        # Deep home folders overflow the unix socket limit: keep a short, stable path.
        digest = hashlib.sha256(str(self.directory).encode()).hexdigest()[:16]
        short = private_folder(Path(tempfile.gettempdir()) / f"pymachine-{os.getuid()}")
        return str(short / f"{digest}-{role}.qmp")

    @property
    def control_socket(self) -> str:
        return self._socket("watcher" if self.client_role == "watcher" else "control")

    # -- contract ---------------------------------------------------------------------

    @classmethod
    def precheck(cls, runner: Runner, options: DriverOptions, arch: str = "") -> None:
        assert isinstance(options, QemuOptions)
        arch = arch or host_arch()
        if arch not in ARCHES:
            raise DriverNotAvailable(f"QEMU runs {' and '.join(ARCHES)} guests, not {arch}", "Run `pymachine create --arch amd64` or `--arch arm64`")
        for program in (options.binary or system_program(arch), "qemu-img"):
            if find_program(runner, program) is None:
                raise DriverNotAvailable(f"`{program}` is not installed", install_hint(arch))
        if options.boot not in ("auto", "kernel", "cdrom"):
            raise DriverError(f"Unknown boot mode '{options.boot}'", "Use -o boot=auto, kernel or cdrom")
        if options.aslr not in ("auto", "on", "off"):
            raise DriverError(f"Unknown aslr setting '{options.aslr}'", "Use -o aslr=auto, on or off")
        if not options.cpu.strip():
            raise DriverError("-o cpu needs a model", "Use -o cpu=auto, or a model from `qemu-system-... -cpu help`")
        check_accelerator_available(runner, options.accel, arch)
        accel = detect_accelerator(runner, options.accel, arch)
        if options.boot == "cdrom" or options.firmware not in ("auto", "bios", "uefi"):
            resolve_firmware(runner, options, arch, uefi=bool(tuning_words(options, accel)))

    @classmethod
    def host_report(cls, runner: Runner) -> HostReport:
        host = host_arch()
        if host not in ARCHES:
            return HostReport(False, detail=f"QEMU runs {' and '.join(ARCHES)} guests; this host is {host}")
        accel = detect_accelerator(runner, "auto", host)
        binary = binary_path(runner, system_program(host))
        if binary is None:
            return HostReport(False, accelerator=accel.name, detail=f"`{system_program(host)}` is not installed. {install_hint(host)}")
        version = qemu_version(runner, binary)
        notes: list[str] = []
        if find_program(runner, "qemu-img") is None:
            notes.append(f"qemu-img is not installed: {install_hint(host)}")
        if platform.system() == "Darwin":
            notes += mac_notes(runner, binary, version)
        for arch in ARCHES:
            if arch == host:
                continue
            other = find_program(runner, system_program(arch))
            if other is None:
                notes.append(f"{arch} guests: `{system_program(arch)}` is not installed: {install_hint(arch)}")
            else:
                notes.append(f"{arch} guests: emulated (TCG) by {system_program(arch)} {qemu_version(runner, other) or '(version unknown)'}")
        # arm64 guests boot an ISO only through UEFI: say where it comes from, or what is missing.
        try:
            firmware = discover_uefi(runner, binary_path(runner, system_program(ARM64)), ARM64)
            notes.append(f"arm64 UEFI firmware (for -o boot=cdrom): {firmware}")
        except DriverError as exc:
            notes.append(f"arm64 UEFI firmware (for -o boot=cdrom): {exc}")
        return HostReport(True, version, accel.name, accel.reason, tuple(notes))

    @classmethod
    def guest_arches(cls, runner: Runner, options: DriverOptions) -> dict[str, str]:
        """Either architecture: the host's natively, the other one emulated (TCG)."""
        host = host_arch()
        return {arch: NATIVE if arch == host else EMULATED for arch in ARCHES}

    @classmethod
    def hardware_accelerated(cls, runner: Runner, options: DriverOptions, arch: str = "") -> bool:
        assert isinstance(options, QemuOptions)
        return detect_accelerator(runner, options.accel, arch).name != "tcg"

    def create(self) -> None:
        self.require_folder()
        if not self.disk.exists():
            qemu_img = find_program(self.runner, "qemu-img") or "qemu-img"
            self.runner.run([qemu_img, "create", "-q", "-f", "qcow2", str(self.disk), f"{self.spec.disk_mb}M"])

    def start(self) -> None:
        if self._pid() is not None:
            raise MachineStateError(f"Machine '{self.spec.name}' is already running", f"Run `pymachine stop {self.spec.name}` first")
        if not self.disk.exists():
            raise DriverError(f"The data disk of machine '{self.spec.name}' is missing ({self.disk})", f"Run `pymachine rm {self.spec.name}` and create it again")
        self.rotate_serial_log()
        for role in ("control", "watcher"):
            _unlink(self._socket(role))
        self.pidfile.unlink(missing_ok=True)
        argv = self.command_line()
        try:
            self.runner.run(argv, timeout=60)
        except CommandFailed as exc:
            (self.directory / "qemu.log").write_text(exc.stderr)
            busy = re.search(r"host forwarding rule '(?:tcp|udp):[^:]*:(\d+)-", exc.stderr, re.I)
            if busy and "could not set up" in exc.stderr.lower():
                raise PortUnavailable(f"Host port {busy.group(1)} is already in use", "pymachine will pick another port") from None
            if "HV_DENIED" in exc.stderr:
                # Hypervisor.framework refuses a binary without the entitlement (lima#1742).
                real = os.path.realpath(self.runner.which(argv[0]) or argv[0])
                raise DriverError(
                    f"macOS refused QEMU the hypervisor (HV_DENIED): {real} lacks the {HVF_ENTITLEMENT} entitlement",
                    f"Run `codesign --sign - --entitlements ENT.plist --force {real}` (ENT.plist: see docs/drivers.md), or use -o accel=tcg",
                ) from None
            log = self.directory / "qemu.log"
            if self.options.accel not in ("auto", "tcg"):
                hint = f"QEMU's words are in {log}. Run `pymachine rm -f {self.spec.name}` and create it again with -o accel=auto"
            else:
                hint = f"Run `cat {log}` to read why, then `pymachine start {self.spec.name}`"
            raise DriverError(f"QEMU did not start: {exc.message.split(': ', 1)[-1]}", hint) from None

    # -- the command line ---------------------------------------------------------------

    @property
    def arch(self) -> str:
        return self.spec.arch

    def program(self) -> str:
        """The qemu-system program this machine runs, as the runner will find it."""
        wanted = self.options.binary or system_program(self.arch)
        return find_program(self.runner, wanted) or wanted

    def direct_boot(self) -> bool:
        """True when this start boots the kernel directly, not the ISO."""
        wanted = self.options.boot
        return wanted == "kernel" or (wanted == "auto" and self.kernel() is not None and self.spec.boot.initrd is not None)

    def kernel(self) -> Path | None:
        """The kernel for direct boot: on amd64 the uncompressed PVH one when the image has it."""
        if self.arch == AMD64:
            return self.spec.boot.pvh_kernel or self.spec.boot.kernel
        return self.spec.boot.kernel

    def firmware(self, accel: Accelerator | None = None) -> FirmwareChoice | None:
        """The UEFI image a cdrom boot maps, or None: direct boot, or SeaBIOS (amd64).

        With -o firmware=auto an amd64 CD boots by SeaBIOS and isolinux, unless the kernel
        needs the emulation words (see `tuning`): isolinux's command line is the ISO's
        own, while systemd-boot takes more words from SMBIOS, so then it is UEFI.
        """
        if self.direct_boot():
            return None
        accel = accel or detect_accelerator(self.runner, self.options.accel, self.arch)
        return resolve_firmware(self.runner, self.options, self.arch, self.program(), uefi=bool(self.tuning(accel)))

    def command_line(self) -> list[str]:
        """The full qemu-system argv for this machine."""
        spec, opts, arch = self.spec, self.options, self.arch
        accel = detect_accelerator(self.runner, opts.accel, arch)
        cpu = choose_cpu(self.runner, accel, arch, opts.cpu)
        argv = [self.program(), "-name", f"pymachine-{spec.name}", "-nodefaults", "-no-user-config"]
        argv += ["-machine", machine_type(arch, accel)]
        argv += ["-accel", self.tcg_mode() if accel.name == "tcg" else accel.name, "-cpu", cpu.model]
        argv += ["-m", str(spec.memory_mb), "-smp", smp(arch, spec.cpus), "-rtc", "base=utc"]
        if self.direct_boot():
            kernel = self.kernel()
            if kernel is None or spec.boot.initrd is None:
                raise DriverError("This boot image has no kernel and initrd for direct boot", "Use -o boot=cdrom")
            argv += ["-kernel", str(kernel), "-initrd", str(spec.boot.initrd), "-append", self.kernel_cmdline(accel)]
        else:
            firmware = self.firmware(accel)
            argv += firmware_args(firmware, arch)
            argv += cdrom_args(spec.boot.iso, arch)
            tuning = self.tuning(accel)
            if firmware is not None and tuning:
                # The ISO boots through systemd-boot, which appends this SMBIOS string to
                # the kernel's command line: a CD boot is tuned as a direct boot is.
                argv += ["-smbios", f"type=11,value={option_value(SMBIOS_CMDLINE + ' '.join(tuning))}"]
        argv += ["-drive", f"file={option_value(self.disk)},if=none,id={DATA_DRIVE},format=qcow2,discard=unmap", "-device", f"virtio-blk-pci,drive={DATA_DRIVE}"]
        argv += ["-drive", f"file={option_value(spec.config_medium)},if=none,id=config,format=raw,readonly=on", "-device", "virtio-blk-pci,drive=config"]
        # Shared host folders over virtio-9p. security_model=none: files the guest makes
        # belong to the user running QEMU, and guest chowns that the host refuses are ignored.
        for index, mount in enumerate(spec.mounts):
            tag = share_tag(index)
            readonly = "" if mount.writable else ",readonly=on"
            argv += ["-fsdev", f"local,id={tag},path={option_value(mount.host)},security_model=none{readonly}"]
            argv += ["-device", f"virtio-9p-pci,fsdev={tag},mount_tag={tag}"]
        netdev = f"user,id={NETDEV}"
        if opts.restrict_network:
            netdev += ",restrict=on"
        netdev += f",hostfwd=tcp:127.0.0.1:{spec.ssh_port}-:{GUEST_SSH_PORT}"
        netdev += f",hostfwd=tcp:127.0.0.1:{spec.docker_port}-:{GUEST_DOCKER_PORT}"
        # romfile= drops the iPXE option ROM: we never network-boot, and it costs ~3 s.
        argv += ["-netdev", netdev, "-device", f"virtio-net-pci,netdev={NETDEV},romfile="]
        argv += ["-device", "virtio-rng-pci"]
        # Memory the guest frees goes back to the host: with free page reporting the guest
        # kernel names its free 2 MiB blocks, and QEMU drops them from the process.
        argv += ["-device", "virtio-balloon-pci,free-page-reporting=on"]
        # On virt the serial port is the board's PL011 (console=ttyAMA0, from the image's
        # own command line); on q35 the ISA 16550 (ttyS0).
        argv += ["-serial", f"file:{self.serial_log()}", "-display", "none"]
        for role in ("control", "watcher"):
            argv += ["-qmp", f"unix:{option_value(self._socket(role))},server=on,wait=off"]
        argv += ["-pidfile", str(self.pidfile), "-daemonize"]
        return argv

    def tcg_mode(self) -> str:
        """-accel tcg,thread=multi, or thread=single for x86-64 guests on a QEMU whose
        multi-threaded TCG mishandles the kernel's live code patching (see
        MTTCG_SAFE_FOR_X86)."""
        if self.arch == AMD64:
            try:
                version = qemu_version(self.runner, self.program())
            except DriverNotAvailable:
                version = ""  # starting it will say so
            if version and version_tuple(version) < MTTCG_SAFE_FOR_X86:
                return "tcg,thread=single"
        return "tcg,thread=multi"

    def kernel_cmdline(self, accel: Accelerator) -> str:
        """The image's command line, plus `tuning`: what a direct boot passes the kernel."""
        return " ".join(w for w in [self.spec.boot.cmdline, *self.tuning(accel)] if w)

    def tuning(self, accel: Accelerator) -> list[str]:
        return tuning_words(self.options, accel)

    def stop(self, timeout: float) -> None:
        pid = self._pid()
        if pid is None:
            return
        try:
            with self._qmp() as qmp:
                qmp.execute("system_powerdown")
        except QMPError:
            pass
        if not wait_gone(pid, timeout):
            terminate(pid)

    def kill(self) -> None:
        pid = self._pid()
        if pid is None:
            return
        try:
            with self._qmp(timeout=1.0) as qmp:
                qmp.execute("quit")
        except QMPError:
            pass
        if not wait_gone(pid, 3.0):
            terminate(pid, timeout=2.0)

    def remove(self) -> None:
        self.kill()
        for path in (self.disk, self.pidfile, self.directory / "qemu.log", self.directory / "serial.log", self.directory / "serial.log.1"):
            path.unlink(missing_ok=True)
        for role in ("control", "watcher"):
            try:
                _unlink(self._socket(role))
            except DriverError:
                pass  # an unsafe socket folder: nothing of ours to delete in it

    @classmethod
    def reap(cls, folder: Path, name: str, runner: Runner) -> list[str]:
        """Stop the QEMU whose command line names this folder's pidfile, found through the
        pidfile or, failing that, through whoever answers on the folder's QMP sockets."""
        pid = qemu_of(folder)
        if pid is None:
            for role in ("control", "watcher"):
                pid = _qemu_on_socket(folder, socket_path(folder, role))
                if pid is not None:
                    break
        if pid is None:
            return []
        terminate(pid, timeout=5.0)
        return [f"Stopped the QEMU process {pid} of machine '{name}'"]

    def state(self) -> State:
        pid = self._pid()
        if pid is None:
            return State.STOPPED if self.disk.exists() else State.NOT_FOUND
        try:
            with self._qmp(timeout=1.0) as qmp:
                status = qmp.execute("query-status").get("status", "")
        except QMPError:
            # Alive but its monitor is busy with another client: it is running.
            return State.RUNNING
        return {
            "running": State.RUNNING,
            "paused": State.PAUSED,
            "suspended": State.PAUSED,
            "prelaunch": State.STARTING,
            "inmigrate": State.STARTING,
            "shutdown": State.STOPPING,
            "internal-error": State.ERROR,
            "guest-panicked": State.ERROR,
            "io-error": State.ERROR,
        }.get(status, State.RUNNING)

    def disk_size_mb(self) -> int:
        if self._pid() is not None:
            # QEMU holds the image: ask it (qemu-img would need -U to read it now).
            try:
                with self._qmp() as qmp:
                    devices = qmp.execute("query-block")
            except QMPError as exc:
                raise DriverError(f"QEMU monitor of machine '{self.spec.name}' did not answer: {exc}", f"Run `pymachine status {self.spec.name}`") from None
            for device in devices:
                if device.get("device") == DATA_DRIVE:
                    return int(device["inserted"]["image"]["virtual-size"]) // MIB
            raise DriverError(f"QEMU of machine '{self.spec.name}' has no drive '{DATA_DRIVE}'", f"Run `pymachine restart {self.spec.name}`")
        if not self.disk.exists():
            raise DriverError(f"The data disk of machine '{self.spec.name}' is missing ({self.disk})", f"Run `pymachine rm {self.spec.name}` and create it again")
        qemu_img = find_program(self.runner, "qemu-img") or "qemu-img"
        out = self.runner.run([qemu_img, "info", "--output=json", "-f", "qcow2", str(self.disk)], timeout=60).stdout
        return int(json.loads(out)["virtual-size"]) // MIB

    def grow_disk(self, size_mb: int) -> None:
        if self._pid() is not None:
            # Online: the guest's virtio-blk sees the new capacity at once.
            try:
                with self._qmp(timeout=30.0) as qmp:
                    qmp.execute("block_resize", {"device": DATA_DRIVE, "size": size_mb * MIB})
            except QMPError as exc:
                raise DriverError(f"QEMU could not grow the data disk of machine '{self.spec.name}': {exc}", f"Run `pymachine stop {self.spec.name}`, then `pymachine disk grow {self.spec.name} {size_mb}M`") from None
            return
        qemu_img = find_program(self.runner, "qemu-img") or "qemu-img"
        self.runner.run([qemu_img, "resize", "-q", "-f", "qcow2", str(self.disk), f"{size_mb}M"], timeout=120)

    def add_forward(self, forward: PortForward) -> None:
        rule = f"{forward.protocol}:{forward.host_ip}:{forward.host_port}-:{forward.guest_port}"
        reply = self._hmp(f"hostfwd_add {NETDEV} {rule}")
        lowered = reply.lower()
        if "could not set up host forwarding rule" in lowered:
            raise PortUnavailable(f"Host port {forward.host_ip}:{forward.host_port}/{forward.protocol} is already in use or not allowed")
        if reply.strip():
            raise DriverError(f"QEMU refused forward {forward}: {reply.strip()}")

    def remove_forward(self, forward: PortForward) -> None:
        reply = self._hmp(f"hostfwd_remove {NETDEV} {forward.protocol}:{forward.host_ip}:{forward.host_port}")
        lowered = reply.lower()
        if reply.strip() and "removed" not in lowered and "not found" not in lowered:
            raise DriverError(f"QEMU could not remove forward {forward}: {reply.strip()}")

    def list_forwards(self) -> list[PortForward]:
        if self._pid() is None:
            return []  # forwards live in the QEMU process: none while it is stopped
        text = self._hmp("info usernet")
        return [f for f in parse_usernet(text) if not self._is_system(f)]

    def _is_system(self, forward: PortForward) -> bool:
        return forward.protocol == "tcp" and forward.host_port in (self.spec.ssh_port, self.spec.docker_port)

    def details(self) -> dict[str, Any]:
        facts: dict[str, Any] = {"arch": self.arch, "binary": self.program(), "boot": "kernel" if self.direct_boot() else "cdrom"}
        try:
            accel = detect_accelerator(self.runner, self.options.accel, self.arch)
            cpu = choose_cpu(self.runner, accel, self.arch, self.options.cpu)
        except DriverError as exc:
            accel, cpu = Accelerator("unknown", str(exc)), CpuModel("unknown", str(exc))
        facts.update(
            machine=machine_type(self.arch, accel),
            accelerator=accel.name,
            accelerator_reason=accel.reason,
            cpu=cpu.model,
            cpu_reason=cpu.reason,
            firmware=self._firmware_text(),
        )
        facts.update(pid=self._pid(), disk=str(self.disk), serial_log=str(self.serial_log()), qmp=self._socket("control"))
        return facts

    def _firmware_text(self) -> str:
        if self.direct_boot():
            return "none (direct kernel boot)"
        try:
            firmware = self.firmware()
        except DriverError as exc:
            return f"missing: {exc}"
        return "SeaBIOS (QEMU's built-in BIOS)" if firmware is None else f"UEFI {firmware}"

    def host_memory_mb(self) -> int | None:
        """QEMU's resident memory: guest RAM it touched, less what free page reporting gave back."""
        pid = self._pid()
        return None if pid is None else resident_mb(pid)

    # -- helpers ----------------------------------------------------------------------

    def _pid(self) -> int | None:
        # Our QEMU carries `-pidfile PATH`, PATH in this machine's own folder: a PID
        # reused by another program, or by another machine's QEMU (dev2's for dev, or the
        # original's for a copied folder), is not ours.
        return qemu_of(self.directory)

    def process_mark(self) -> list[str]:
        """Whole arguments of this machine's QEMU command line and of no other process."""
        return ["-pidfile", str(self.pidfile)]

    def _qmp(self, timeout: float = 2.0) -> QMPClient:
        return QMPClient(self.control_socket, timeout=timeout)

    def _hmp(self, command: str) -> str:
        if self._pid() is None:
            raise MachineStateError(f"Machine '{self.spec.name}' is not running", f"Run `pymachine start {self.spec.name}`")
        try:
            with self._qmp() as qmp:
                return qmp.hmp(command)
        except QMPError as exc:
            raise DriverError(f"QEMU monitor of machine '{self.spec.name}' did not answer: {exc}", f"Run `pymachine status {self.spec.name}`") from None


_USERNET = re.compile(r"^\s*(TCP|UDP)\[HOST_FORWARD\]\s+\S+\s+(\S+)\s+(\d+)\s+(\S+)\s+(\d+)", re.M)


def parse_usernet(text: str) -> list[PortForward]:
    """Host forwards from `info usernet` output."""
    forwards = []
    for proto, src, sport, _dst, dport in _USERNET.findall(text):
        host_ip = "0.0.0.0" if src in ("*", "0.0.0.0") else src
        forwards.append(PortForward(proto.lower(), host_ip, int(sport), int(dport)))
    return sorted(set(forwards))


def qemu_of(folder: Path) -> int | None:
    """The PID of the QEMU running the machine in `folder`, from its pidfile.

    The process must be alive and started with `-pidfile FOLDER/qemu.pid`: a PID reused
    by another program is not ours, and neither is the QEMU of another folder, such as
    the one a copied folder's stale pidfile names (where "pymachine-dev" would also be
    found in "pymachine-devcopy").
    """
    pidfile = folder / "qemu.pid"
    return running_from(pidfile, ["-pidfile", pidfile])


def socket_path(folder: Path, role: str) -> str:
    """Where QemuDriver puts the machine's `role` QMP socket (see QemuDriver._socket)."""
    path = str(folder / f"{role}.qmp")
    if len(path) <= MAX_SOCKET_PATH:
        return path
    digest = hashlib.sha256(str(folder).encode()).hexdigest()[:16]
    return str(Path(tempfile.gettempdir()) / f"pymachine-{os.getuid()}" / f"{digest}-{role}.qmp")


def _qemu_on_socket(folder: Path, path: str) -> int | None:
    """The PID of the process listening on the unix socket `path` (Linux's SO_PEERCRED),
    if it is the QEMU of `folder`; None otherwise or where the OS will not say."""
    import socket
    import struct

    if not hasattr(socket, "SO_PEERCRED"):
        return None
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(1.0)
            sock.connect(path)
            pid, _uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    except OSError:
        return None
    argv = cmdline(pid)
    if pid <= 0 or argv is None or not carries(argv, ["-pidfile", folder / "qemu.pid"]):
        return None
    return pid


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
