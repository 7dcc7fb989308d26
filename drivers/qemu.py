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
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pymachine.arch import ARCHES, host_arch
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
    MachineStateError,
    PortUnavailable,
)
from pymachine.procs import running_from, terminate, wait_gone
from pymachine.runner import Runner

from .qmp import QMPClient, QMPError

INSTALL_HINT = "Install QEMU: on macOS `brew install qemu`, on Debian or Ubuntu `sudo apt-get install qemu-system-x86 qemu-utils`"
NETDEV = "net0"
#: The longest unix socket path macOS accepts (Linux allows 107).
MAX_SOCKET_PATH = 103
#: The CPU under TCG: x86-64-v2 (what RHEL 9 based images need) plus AES-NI, on QEMU's
#: plain model. `-cpu max` adds AVX, XSAVE and more that TCG emulates slowly: dockerd
#: took 21-26 s to answer after boot with it, 17 s with this.
TCG_CPU = "qemu64,+ssse3,+sse4.1,+sse4.2,+popcnt,+cx16,+aes,+pclmulqdq"


@dataclass
class QemuOptions(DriverOptions):
    accel: str = option("auto", "Accelerator: auto, hvf, kvm or tcg (auto picks the fastest that really works here)")
    restrict_network: bool = option(False, "Cut the guest off from every network but its own forwards (restrict=on); image pulls then fail")
    boot: str = option("auto", "auto (direct kernel boot when the image has a kernel), kernel, or cdrom")
    binary: str = option("", "The qemu-system program to run (default: qemu-system-x86_64 on PATH)")
    aslr: str = option("auto", "Address space randomization in the guest: auto (off under TCG, where it halves the cost of starting a process; on with HVF/KVM), on or off")


@dataclass(frozen=True)
class Accelerator:
    """The accelerator chosen, and why."""

    name: str
    reason: str


def detect_accelerator(runner: Runner, requested: str = "auto") -> Accelerator:
    """HVF on a Mac that supports it, KVM where it can really run a stock kernel, else TCG."""
    if requested not in ("auto", "hvf", "kvm", "tcg"):
        raise DriverError(f"Unknown accelerator '{requested}'", "Use -o accel=auto, hvf, kvm or tcg")
    if requested != "auto":
        return Accelerator(requested, "asked for with -o accel")
    system = platform.system()
    if system == "Darwin":
        if platform.machine() == "arm64":
            # HVF runs arm64 guests only there; the boot image is amd64 (no arm64 build yet).
            return Accelerator("tcg", "Apple Silicon: HVF cannot run the amd64 image, so it is emulated")
        out = runner.run(["sysctl", "-n", "kern.hv_support"], check=False)
        if out.stdout.strip() == "1":
            return Accelerator("hvf", "kern.hv_support is 1")
        return Accelerator("tcg", "this Mac does not support Hypervisor.framework (kern.hv_support is not 1)")
    if system == "Linux":
        return _linux_kvm()
    return Accelerator("tcg", f"no accelerator known for {system}")


def _linux_kvm() -> Accelerator:
    if not os.path.exists("/dev/kvm"):
        return Accelerator("tcg", "/dev/kvm does not exist (load the kvm module, or enable virtualization in firmware)")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return Accelerator("tcg", "/dev/kvm is not accessible to this user (add yourself to the kvm group)")
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
            Feature.SERIAL_LOG,
            Feature.DIRECT_KERNEL_BOOT,
            Feature.SHARED_FOLDERS,
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
        return self.directory / "qemu.pid"

    def _socket(self, role: str) -> str:
        path = str(self.directory / f"{role}.qmp")
        if len(path) <= MAX_SOCKET_PATH:
            return path
        # Deep home folders overflow the unix socket limit: keep a short, stable path.
        digest = hashlib.sha256(str(self.directory).encode()).hexdigest()[:16]
        short = Path(tempfile.gettempdir()) / f"pymachine-{os.getuid()}"
        short.mkdir(mode=0o700, exist_ok=True)
        return str(short / f"{digest}-{role}.qmp")

    @property
    def control_socket(self) -> str:
        return self._socket("watcher" if self.client_role == "watcher" else "control")

    # -- contract ---------------------------------------------------------------------

    @classmethod
    def precheck(cls, runner: Runner, options: DriverOptions, arch: str = "") -> None:
        assert isinstance(options, QemuOptions)
        runner.require(options.binary or "qemu-system-x86_64", INSTALL_HINT)
        runner.require("qemu-img", INSTALL_HINT)
        if options.boot not in ("auto", "kernel", "cdrom"):
            raise DriverError(f"Unknown boot mode '{options.boot}'", "Use -o boot=auto, kernel or cdrom")
        if options.aslr not in ("auto", "on", "off"):
            raise DriverError(f"Unknown aslr setting '{options.aslr}'", "Use -o aslr=auto, on or off")
        detect_accelerator(runner, options.accel)

    @classmethod
    def host_report(cls, runner: Runner) -> HostReport:
        binary = runner.which("qemu-system-x86_64")
        accel = detect_accelerator(runner)
        if binary is None:
            return HostReport(False, accelerator=accel.name, detail=INSTALL_HINT)
        out = runner.run([binary, "--version"], check=False, timeout=10).stdout
        version = out.split("version", 1)[1].split()[0] if "version" in out else ""
        return HostReport(True, version, accel.name, accel.reason)

    @classmethod
    def guest_arches(cls, runner: Runner, options: DriverOptions) -> dict[str, str]:
        """Either architecture: the host's natively, the other one emulated (TCG)."""
        host = host_arch()
        return {arch: NATIVE if arch == host else EMULATED for arch in ARCHES}

    @classmethod
    def hardware_accelerated(cls, runner: Runner, options: DriverOptions, arch: str = "") -> bool:
        assert isinstance(options, QemuOptions)
        return detect_accelerator(runner, options.accel).name != "tcg"

    def create(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if not self.disk.exists():
            self.runner.run(["qemu-img", "create", "-q", "-f", "qcow2", str(self.disk), f"{self.spec.disk_mb}M"])

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
            raise DriverError(f"QEMU did not start: {exc.message.split(': ', 1)[-1]}", f"See {self.directory / 'qemu.log'}") from None

    def command_line(self) -> list[str]:
        """The full qemu-system argv for this machine."""
        spec, opts = self.spec, self.options
        accel = detect_accelerator(self.runner, opts.accel)
        argv = [opts.binary or "qemu-system-x86_64", "-name", f"pymachine-{spec.name}"]
        argv += ["-nodefaults", "-no-user-config", "-machine", "q35"]
        if accel.name == "tcg":
            argv += ["-accel", "tcg,thread=multi", "-cpu", TCG_CPU]
        else:
            argv += ["-accel", accel.name, "-cpu", "host"]
        argv += ["-m", str(spec.memory_mb), "-smp", str(spec.cpus), "-rtc", "base=utc"]
        kernel = spec.boot.pvh_kernel or spec.boot.kernel
        direct = opts.boot == "kernel" or (opts.boot == "auto" and kernel is not None and spec.boot.initrd is not None)
        if direct:
            if kernel is None or spec.boot.initrd is None:
                raise DriverError("This boot image has no kernel and initrd for direct boot", "Use -o boot=cdrom")
            argv += ["-kernel", str(kernel), "-initrd", str(spec.boot.initrd), "-append", self.kernel_cmdline(accel)]
        else:
            argv += ["-drive", f"file={option_value(spec.boot.iso)},if=none,id=cd0,media=cdrom,readonly=on", "-device", "ide-cd,drive=cd0,bootindex=0"]
        argv += ["-drive", f"file={option_value(self.disk)},if=none,id=data,format=qcow2,discard=unmap", "-device", "virtio-blk-pci,drive=data"]
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
        argv += ["-serial", f"file:{self.serial_log()}", "-display", "none"]
        for role in ("control", "watcher"):
            argv += ["-qmp", f"unix:{option_value(self._socket(role))},server=on,wait=off"]
        argv += ["-pidfile", str(self.pidfile), "-daemonize"]
        return argv

    def kernel_cmdline(self, accel: Accelerator) -> str:
        """The image's command line, plus what only pays off under emulation.

        Emulated CPUs do not speculate, so Spectre/Meltdown mitigations only cost time;
        without ASLR, TCG reuses its translations of ld.so and libc across processes.
        """
        words = [self.spec.boot.cmdline]
        if accel.name == "tcg":
            words.append("mitigations=off")
        if self.options.aslr == "off" or (self.options.aslr == "auto" and accel.name == "tcg"):
            words.append("norandmaps")
        return " ".join(w for w in words if w)

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
            _unlink(self._socket(role))

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
        accel = detect_accelerator(self.runner, self.options.accel)
        return {
            "accelerator": accel.name,
            "accelerator_reason": accel.reason,
            "pid": self._pid(),
            "disk": str(self.disk),
            "serial_log": str(self.serial_log()),
            "qmp": self._socket("control"),
        }

    # -- helpers ----------------------------------------------------------------------

    def _pid(self) -> int | None:
        # QEMU runs with -name pymachine-NAME: a PID reused by another program, even one
        # whose path merely contains "qemu" (a checkout named wt-qemu-arm), is not ours.
        return running_from(self.pidfile, f"pymachine-{self.spec.name}")

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


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass

