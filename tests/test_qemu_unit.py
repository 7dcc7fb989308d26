"""The QEMU driver without a VM: its command line, accelerator choice, `info usernet`
parsing, and its monitor conversation (against a fake QMP socket that answers with the
strings QEMU 7.2 prints)."""

from __future__ import annotations

import json
import os
import platform
import plistlib
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Callable

import pytest

from pymachine.driver import BootMedia, MachineSpec, PortForward, State
from pymachine.drivers import qemu as qemu_module
from pymachine.drivers.qemu import (
    MAX_SOCKET_PATH,
    TCG_CPU,
    TCG_CPU_ARM64,
    Accelerator,
    CpuModel,
    QemuDriver,
    QemuOptions,
    choose_cpu,
    detect_accelerator,
    find_program,
    hypervisor_entitlement,
    parse_usernet,
    resolve_firmware,
)
from pymachine.drivers.qemu_firmware import FirmwareChoice
from pymachine.errors import DriverError, DriverNotAvailable, MachineStateError, PortUnavailable
from pymachine.runner import Runner

from .fakes import macos as macos_fake
from .fakes.macos import FakeMac
from .fakes.tools import install
from .test_qemu_firmware import code_image, mask_host_descriptors, write_descriptor

CMDLINE = "console=ttyS0 quiet pymachine.data=LABEL=pmdata"

# `info usernet` of QEMU 7.2.22 (Debian 12), taken with -machine none and
# -netdev user,id=net0,restrict=on,hostfwd=...; then hostfwd_add net0 tcp:127.0.0.1:0-:8080.
USERNET_7_2 = (
    "Hub -1 (net0):\r\n"
    "  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ\r\n"
    "  TCP[HOST_FORWARD]  11       127.0.0.1 33245       10.0.2.15  8080     0     0\r\n"
    "  TCP[HOST_FORWARD]   9       127.0.0.1 45897       10.0.2.15    22     0     0\r\n"
    "  TCP[HOST_FORWARD]   8               * 33163       10.0.2.15  2376     0     0\r\n"
    "  UDP[HOST_FORWARD]   3       127.0.0.1 41811       10.0.2.15    53     0     0\r\n"
)

# Older QEMU (a VLAN, not a hub), as posted to qemu-devel from tests/vm.
USERNET_VLAN = (
    "VLAN -1 (vnet):\r\n"
    "  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ\r\n"
    "  TCP[HOST_FORWARD]  13       127.0.0.1 33465       10.0.2.15    22     0     0\r\n"
)

# A busy guest: accepted and outgoing connections and a DNS socket sit beside the forwards.
USERNET_BUSY = (
    "Hub -1 (net0):\r\n"
    "  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ\r\n"
    "  TCP[ESTABLISHED]   25       127.0.0.1 40022       10.0.2.15    22     0     0\r\n"
    "  TCP[ESTABLISHED]   27       10.0.2.15 51514  151.101.2.132   443     0     0\r\n"
    "  TCP[HOST_FORWARD]  21               *  3001       10.0.2.15  3001     0     0\r\n"
    "  TCP[HOST_FORWARD]  12       127.0.0.1 40022       10.0.2.15    22     0     0\r\n"
    "  TCP[HOST_FORWARD]  10       127.0.0.1 42376       10.0.2.15  2376     0     0\r\n"
    "  TCP[HOST_FORWARD]  22       127.0.0.1  3102       10.0.2.15  3102     0     0\r\n"
    "  UDP[236 sec]       29       10.0.2.15 40210       10.0.2.3    53     0     0\r\n"
    "  UDP[HOST_FORWARD]  23       127.0.0.1  5353       10.0.2.15  5353     0     0\r\n"
)


def fake_qemu(folder: Path, version: str) -> Path:
    """qemu-system-x86_64 and -aarch64 that answer --version as QEMU `version` does."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("qemu-system-x86_64", "qemu-system-aarch64"):
        program = folder / name
        program.write_text(f"#!/bin/sh\necho 'QEMU emulator version {version} (Debian)'\necho 'Copyright (c) 2003-2025 Fabrice Bellard and the QEMU Project developers'\n")
        program.chmod(0o755)
    return folder


@pytest.fixture(autouse=True)
def qemu_10_on_path(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The argv tests see a QEMU 10 (whose multi-threaded TCG runs x86-64 guests safely)."""
    folder = fake_qemu(tmp_path_factory.mktemp("qemu10"), "10.0.2")
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")


def make_driver(
    tmp_path: Path, *, kernel: bool = True, pvh: bool = False, cmdline: str = CMDLINE, arch: str = "amd64", runner: Runner | None = None, **options
) -> QemuDriver:
    directory = tmp_path / "m"
    directory.mkdir(exist_ok=True)
    boot = BootMedia(
        iso=tmp_path / "boot.iso",
        kernel=tmp_path / "vmlinuz" if kernel else None,
        initrd=tmp_path / "initrd" if kernel else None,
        cmdline=cmdline,
        pvh_kernel=tmp_path / "vmlinux" if pvh else None,
    )
    spec = MachineSpec("dev", directory, 2, 1024, 4096, boot, directory / "config.iso", ssh_port=40022, docker_port=42376, arch=arch)
    return QemuDriver(spec, QemuOptions(**options), runner or Runner())


def value_after(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


# -- the command line ----------------------------------------------------------------


def test_command_line_direct_kernel_boot_under_tcg(tmp_path: Path) -> None:
    driver = make_driver(tmp_path, accel="tcg", restrict_network=True)
    argv = driver.command_line()
    assert argv[0] == "qemu-system-x86_64"
    assert value_after(argv, "-name") == ["pymachine-dev"]
    assert "-nodefaults" in argv and "-no-user-config" in argv
    assert value_after(argv, "-machine") == ["q35"]
    assert value_after(argv, "-accel") == ["tcg,thread=multi"]
    assert value_after(argv, "-cpu") == [TCG_CPU]
    assert value_after(argv, "-m") == ["1024"] and value_after(argv, "-smp") == ["2"]
    assert value_after(argv, "-kernel") == [str(tmp_path / "vmlinuz")]
    assert value_after(argv, "-initrd") == [str(tmp_path / "initrd")]
    assert value_after(argv, "-append") == [f"{CMDLINE} mitigations=off norandmaps"]
    assert not any("media=cdrom" in a for a in argv)
    drives = value_after(argv, "-drive")
    assert f"file={driver.disk},if=none,id=data,format=qcow2,discard=unmap" in drives
    assert f"file={tmp_path / 'm' / 'config.iso'},if=none,id=config,format=raw,readonly=on" in drives
    assert value_after(argv, "-netdev") == ["user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:40022-:22,hostfwd=tcp:127.0.0.1:42376-:2376"]
    devices = value_after(argv, "-device")
    assert "virtio-net-pci,netdev=net0,romfile=" in devices
    assert devices.count("virtio-blk-pci,drive=data") == 1 and "virtio-blk-pci,drive=config" in devices
    assert value_after(argv, "-serial") == [f"file:{tmp_path / 'm' / 'serial.log'}"]
    assert value_after(argv, "-display") == ["none"]
    assert value_after(argv, "-qmp") == [
        f"unix:{tmp_path / 'm' / 'control.qmp'},server=on,wait=off",
        f"unix:{tmp_path / 'm' / 'watcher.qmp'},server=on,wait=off",
    ]
    assert value_after(argv, "-pidfile") == [str(tmp_path / "m" / "qemu.pid")]
    assert argv[-1] == "-daemonize"
    assert not any("nowait" in a for a in argv)  # deprecated since QEMU 6.0


def test_command_line_prefers_the_pvh_kernel(tmp_path: Path) -> None:
    argv = make_driver(tmp_path, pvh=True, accel="tcg").command_line()
    assert value_after(argv, "-kernel") == [str(tmp_path / "vmlinux")]
    assert value_after(argv, "-initrd") == [str(tmp_path / "initrd")]


@pytest.mark.parametrize("kernel, boot", [(True, "cdrom"), (False, "auto")])
def test_command_line_cdrom_boot(tmp_path: Path, kernel: bool, boot: str) -> None:
    argv = make_driver(tmp_path, kernel=kernel, boot=boot, accel="tcg").command_line()
    assert "-kernel" not in argv and "-append" not in argv and "-initrd" not in argv
    assert f"file={tmp_path / 'boot.iso'},if=none,id=cd0,media=cdrom,readonly=on" in value_after(argv, "-drive")
    assert "ide-cd,drive=cd0,bootindex=0" in value_after(argv, "-device")


def test_kernel_boot_without_a_kernel_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DriverError, match="no kernel and initrd") as caught:
        make_driver(tmp_path, kernel=False, boot="kernel", accel="tcg").command_line()
    assert "-o boot=cdrom" in str(caught.value)


def test_command_line_without_restrict_and_with_kvm(tmp_path: Path) -> None:
    argv = make_driver(tmp_path, accel="kvm", binary="/opt/qemu/bin/qemu-system-x86_64").command_line()
    assert argv[0] == "/opt/qemu/bin/qemu-system-x86_64"
    assert value_after(argv, "-accel") == ["kvm"] and value_after(argv, "-cpu") == ["host"]
    assert "restrict=on" not in value_after(argv, "-netdev")[0]
    assert value_after(argv, "-append") == [CMDLINE]  # no emulation-only additions


@pytest.mark.parametrize(
    "accel, aslr, extra",
    [
        ("tcg", "auto", "mitigations=off norandmaps"),
        ("tcg", "on", "mitigations=off"),
        ("tcg", "off", "mitigations=off norandmaps"),
        ("kvm", "auto", ""),
        ("hvf", "auto", ""),
        ("kvm", "off", "norandmaps"),
        ("kvm", "on", ""),
    ],
)
def test_kernel_cmdline_additions(tmp_path: Path, accel: str, aslr: str, extra: str) -> None:
    driver = make_driver(tmp_path, accel=accel, aslr=aslr)
    assert driver.kernel_cmdline(Accelerator(accel, "test")) == " ".join(w for w in (CMDLINE, extra) if w)
    assert value_after(driver.command_line(), "-append") == [driver.kernel_cmdline(Accelerator(accel, "test"))]


def test_kernel_cmdline_with_an_empty_image_cmdline(tmp_path: Path) -> None:
    driver = make_driver(tmp_path, cmdline="", accel="tcg")
    assert driver.kernel_cmdline(Accelerator("tcg", "test")) == "mitigations=off norandmaps"


def test_long_folders_get_a_short_stable_socket_path(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    driver = make_driver(deep, accel="tcg")
    control, watcher = driver._socket("control"), driver._socket("watcher")
    assert len(control) <= MAX_SOCKET_PATH and len(watcher) <= MAX_SOCKET_PATH
    assert Path(control).parent == Path(tempfile.gettempdir()) / f"pymachine-{os.getuid()}"
    assert control.endswith("-control.qmp") and watcher.endswith("-watcher.qmp")
    assert control != watcher
    assert make_driver(deep, accel="tcg")._socket("control") == control
    assert value_after(driver.command_line(), "-qmp")[0] == f"unix:{control},server=on,wait=off"


def test_the_watcher_gets_its_own_monitor_socket(tmp_path: Path) -> None:
    cli = make_driver(tmp_path, accel="tcg")
    watcher = QemuDriver(cli.spec, cli.options, cli.runner, client_role="watcher")
    assert cli.control_socket.endswith("control.qmp")
    assert watcher.control_socket.endswith("watcher.qmp")


# -- the accelerator -----------------------------------------------------------------


@pytest.mark.parametrize("requested", ["hvf", "kvm", "tcg"])
def test_requested_accelerator_is_used_as_asked(requested: str) -> None:
    assert detect_accelerator(Runner(), requested) == Accelerator(requested, "asked for with -o accel")


def test_unknown_accelerator_is_an_error() -> None:
    with pytest.raises(DriverError, match="Unknown accelerator 'xen'") as caught:
        detect_accelerator(Runner(), "xen")
    assert "-o accel=auto, hvf, kvm or tcg" in str(caught.value)


def _cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


@pytest.mark.skipif(platform.system() != "Linux", reason="Linux accelerator rules")
def test_auto_accelerator_follows_this_hosts_facts() -> None:
    chosen = detect_accelerator(Runner())
    if not os.path.exists("/dev/kvm"):
        assert chosen.name == "tcg" and "/dev/kvm does not exist" in chosen.reason
    elif not os.access("/dev/kvm", os.R_OK | os.W_OK):
        assert chosen.name == "tcg" and "kvm group" in chosen.reason
    elif Path("/sys/module/kvm_pvm").exists():
        assert chosen.name == "tcg" and "kvm_pvm" in chosen.reason
    elif not _cpu_flags() & {"vmx", "svm"}:
        assert chosen.name == "tcg" and "no vmx/svm flag" in chosen.reason
    else:
        assert chosen.name == "kvm"


@pytest.mark.skipif(
    not (platform.system() == "Linux" and os.path.exists("/dev/kvm") and not _cpu_flags() & {"vmx", "svm"}),
    reason="only where /dev/kvm exists without hardware virtualization (the CI guests)",
)
def test_paravirtual_kvm_falls_back_to_tcg_with_a_reason(tmp_path: Path) -> None:
    chosen = detect_accelerator(Runner())
    assert chosen.name == "tcg"
    assert "cannot run a stock kernel" in chosen.reason
    driver = make_driver(tmp_path)  # accel=auto
    assert QemuDriver.hardware_accelerated(driver.runner, driver.options) is False
    assert value_after(driver.command_line(), "-accel") == ["tcg,thread=multi"]
    assert driver.details()["accelerator"] == "tcg"
    assert driver.details()["accelerator_reason"] == chosen.reason


def fake_tool(folder: Path, name: str, output: str) -> None:
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text(f"#!/bin/sh\nprintf '%s\\n' '{output}'\n")
    path.chmod(0o755)


@pytest.mark.parametrize("hv_support, name", [("1", "hvf"), ("0", "tcg")])
def test_mac_uses_hvf_when_kern_hv_support_is_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hv_support: str, name: str) -> None:
    fake_tool(tmp_path / "bin", "sysctl", hv_support)
    monkeypatch.setattr(qemu_module.platform, "system", lambda: "Darwin")
    chosen = detect_accelerator(Runner(path=str(tmp_path / "bin")))
    assert chosen.name == name
    assert "kern.hv_support" in chosen.reason


def test_other_systems_use_tcg(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(qemu_module.platform, "system", lambda: "Windows")
    assert detect_accelerator(Runner()) == Accelerator("tcg", "no accelerator known for Windows")


# -- info usernet ----------------------------------------------------------------------


def test_parse_usernet_of_qemu_7_2() -> None:
    assert parse_usernet(USERNET_7_2) == sorted(
        [
            PortForward("tcp", "127.0.0.1", 33245, 8080),
            PortForward("tcp", "127.0.0.1", 45897, 22),
            PortForward("tcp", "0.0.0.0", 33163, 2376),  # "*" is every interface
            PortForward("udp", "127.0.0.1", 41811, 53),
        ]
    )


def test_parse_usernet_of_an_older_qemu() -> None:
    assert parse_usernet(USERNET_VLAN) == [PortForward("tcp", "127.0.0.1", 33465, 22)]


def test_parse_usernet_keeps_only_forwards() -> None:
    assert parse_usernet(USERNET_BUSY) == [
        PortForward("tcp", "0.0.0.0", 3001, 3001),
        PortForward("tcp", "127.0.0.1", 3102, 3102),
        PortForward("tcp", "127.0.0.1", 40022, 22),
        PortForward("tcp", "127.0.0.1", 42376, 2376),
        PortForward("udp", "127.0.0.1", 5353, 5353),
    ]


def test_parse_usernet_of_nothing() -> None:
    assert parse_usernet("") == []
    assert parse_usernet("Hub -1 (net0):\r\n  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ\r\n") == []


# -- the monitor conversation ----------------------------------------------------------


class FakeMonitor:
    """A QMP socket answering like QEMU 7.2: greeting, capabilities, HMP text, events."""

    def __init__(self, path: str, hmp: Callable[[str], str], status: str = "running") -> None:
        self.hmp = hmp
        self.status = status
        self.commands: list[str] = []
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(path)
        self.server.listen(4)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def close(self) -> None:
        path = self.server.getsockname()
        self.server.close()
        Path(path).unlink(missing_ok=True)

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn, conn.makefile("rwb") as stream:
                self._send(stream, {"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18"}, "capabilities": ["oob"]}})
                for line in stream:
                    message = json.loads(line)
                    command = message["execute"]
                    if command == "qmp_capabilities":
                        self._send(stream, {"return": {}})
                    elif command == "human-monitor-command":
                        text = message["arguments"]["command-line"]
                        self.commands.append(text)
                        self._send(stream, {"return": self.hmp(text)})
                    elif command == "query-status":
                        self._send(stream, {"timestamp": {"seconds": 1700000000, "microseconds": 1}, "event": "NIC_RX_FILTER_CHANGED", "data": {"path": "/machine/peripheral-anon/device[1]/virtio-backend"}})
                        self._send(stream, {"return": {"status": self.status, "singlestep": False, "running": self.status == "running"}})
                    else:
                        self._send(stream, {"error": {"class": "CommandNotFound", "desc": f"The command {command} has not been found"}})

    @staticmethod
    def _send(stream, message: dict) -> None:
        stream.write(json.dumps(message).encode() + b"\r\n")
        stream.flush()


@pytest.fixture
def running(tmp_path: Path):
    """A driver whose pidfile names a live process called qemu, and its fake monitor."""
    driver = make_driver(tmp_path, accel="tcg")
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "-name", "pymachine-dev", "-pidfile", str(driver.pidfile)])  # stands in for qemu
    driver.pidfile.write_text(f"{process.pid}\n")
    replies: dict[str, str] = {}
    monitor = FakeMonitor(driver.control_socket, lambda text: replies.get(text, ""))
    try:
        yield driver, monitor, replies
    finally:
        monitor.close()
        process.kill()
        process.wait()


def test_add_forward_sends_hostfwd_add(running) -> None:
    driver, monitor, _ = running
    driver.add_forward(PortForward("tcp", "127.0.0.1", 8080, 80))
    driver.add_forward(PortForward("udp", "0.0.0.0", 5353, 53))
    assert monitor.commands == ["hostfwd_add net0 tcp:127.0.0.1:8080-:80", "hostfwd_add net0 udp:0.0.0.0:5353-:53"]


@pytest.mark.parametrize(
    "reply",
    ["Could not set up host forwarding rule 'tcp:127.0.0.1:8080-:80'\r\n", "could not set up host forwarding rule 'tcp:127.0.0.1:8080-:80'\r\n"],
    ids=["qemu 7", "older qemu"],
)
def test_add_forward_on_a_busy_port_is_port_unavailable(running, reply: str) -> None:
    driver, _, replies = running
    replies["hostfwd_add net0 tcp:127.0.0.1:8080-:80"] = reply
    with pytest.raises(PortUnavailable, match="127.0.0.1:8080/tcp is already in use"):
        driver.add_forward(PortForward("tcp", "127.0.0.1", 8080, 80))


def test_add_forward_other_refusals_are_driver_errors(running) -> None:
    driver, _, replies = running
    replies["hostfwd_add net0 tcp:127.0.0.1:8080-:80"] = "unrecognized netdev id 'net0'\r\n"
    with pytest.raises(DriverError, match="unrecognized netdev id") as caught:
        driver.add_forward(PortForward("tcp", "127.0.0.1", 8080, 80))
    assert not isinstance(caught.value, PortUnavailable)


@pytest.mark.parametrize("reply", ["host forwarding rule for tcp:127.0.0.1:8080 removed\r\n", "host forwarding rule for tcp:127.0.0.1:8080 not found\r\n", ""])
def test_remove_forward_accepts_removed_and_not_found(running, reply: str) -> None:
    driver, monitor, replies = running
    replies["hostfwd_remove net0 tcp:127.0.0.1:8080"] = reply
    driver.remove_forward(PortForward("tcp", "127.0.0.1", 8080, 80))
    assert monitor.commands == ["hostfwd_remove net0 tcp:127.0.0.1:8080"]


def test_remove_forward_reports_other_failures(running) -> None:
    driver, _, replies = running
    replies["hostfwd_remove net0 tcp:127.0.0.1:8080"] = "user mode network stack not in use\r\n"
    with pytest.raises(DriverError, match="user mode network stack not in use"):
        driver.remove_forward(PortForward("tcp", "127.0.0.1", 8080, 80))


def test_list_forwards_leaves_out_the_machines_own_ports(running) -> None:
    driver, monitor, replies = running
    replies["info usernet"] = USERNET_BUSY
    assert driver.list_forwards() == [
        PortForward("tcp", "0.0.0.0", 3001, 3001),
        PortForward("tcp", "127.0.0.1", 3102, 3102),
        PortForward("udp", "127.0.0.1", 5353, 5353),
    ]
    assert monitor.commands == ["info usernet"]


@pytest.mark.parametrize("status, state", [("running", State.RUNNING), ("paused", State.PAUSED), ("shutdown", State.STOPPING), ("inmigrate", State.STARTING), ("guest-panicked", State.ERROR)])
def test_state_asks_query_status(running, status: str, state: State) -> None:
    driver, monitor, _ = running
    monitor.status = status
    assert driver.state() == state


def test_stopped_and_missing_vms(tmp_path: Path) -> None:
    driver = make_driver(tmp_path, accel="tcg")
    assert driver.state() == State.NOT_FOUND
    driver.disk.write_bytes(b"")
    assert driver.state() == State.STOPPED
    assert driver.list_forwards() == []
    with pytest.raises(MachineStateError, match="`pymachine start dev`"):
        driver.add_forward(PortForward("tcp", "127.0.0.1", 8080, 80))
    # A pidfile whose process is alive but is not QEMU (a reused PID) counts as stopped.
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        driver.pidfile.write_text(f"{other.pid}\n")
        assert driver.state() == State.STOPPED
        assert driver.list_forwards() == []
    finally:
        other.kill()
        other.wait()


# -- start and precheck, with a stand-in qemu-system-x86_64 ----------------------------


def stand_in_qemu(folder: Path, stderr: str = "", code: int = 0) -> Path:
    """A qemu-system-x86_64 that records its argv and fails the way QEMU 7.2 does."""
    folder.mkdir(exist_ok=True)
    record = folder / "argv"
    script = folder / "qemu-system-x86_64"
    script.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > '{record}'\nprintf '%s\\n' \"{stderr}\" >&2\nexit {code}\n" if stderr else f"#!/bin/sh\nprintf '%s\\n' \"$@\" > '{record}'\nexit {code}\n")
    script.chmod(0o755)
    return record


def driver_with_runner(tmp_path: Path, runner: Runner) -> QemuDriver:
    driver = make_driver(tmp_path, accel="tcg", restrict_network=True)
    driver = QemuDriver(driver.spec, driver.options, runner)
    driver.disk.write_bytes(b"")
    return driver


def test_start_runs_the_command_line_and_rotates_the_console_log(tmp_path: Path) -> None:
    record = stand_in_qemu(tmp_path / "bin")
    driver = driver_with_runner(tmp_path, Runner(path=str(tmp_path / "bin")))
    driver.serial_log().write_text("last boot\n")
    driver.pidfile.write_text("999999\n")  # stale
    driver.start()
    assert record.read_text().splitlines() == driver.command_line()[1:]
    assert (driver.directory / "serial.log.1").read_text() == "last boot\n"
    assert not driver.pidfile.exists()


def test_start_on_a_busy_host_port_is_port_unavailable(tmp_path: Path) -> None:
    busy = "qemu-system-x86_64: -netdev user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:40022-:22: Could not set up host forwarding rule 'tcp:127.0.0.1:40022-:22'"
    stand_in_qemu(tmp_path / "bin", busy, 1)
    driver = driver_with_runner(tmp_path, Runner(path=str(tmp_path / "bin")))
    with pytest.raises(PortUnavailable, match="Host port 40022 is already in use"):
        driver.start()
    assert "Could not set up host forwarding rule" in (driver.directory / "qemu.log").read_text()


def test_start_failure_names_qemus_reason_and_its_log(tmp_path: Path) -> None:
    failure = "qemu-system-x86_64: -drive file=/nonexistent.qcow2,if=none,id=data,format=qcow2: Could not open '/nonexistent.qcow2': No such file or directory"
    stand_in_qemu(tmp_path / "bin", failure, 1)
    driver = driver_with_runner(tmp_path, Runner(path=str(tmp_path / "bin")))
    with pytest.raises(DriverError) as caught:
        driver.start()
    assert not isinstance(caught.value, PortUnavailable)
    message = str(caught.value)
    assert message.startswith("QEMU did not start: ")
    assert "Could not open '/nonexistent.qcow2'" in message
    assert message.endswith(f"See {driver.directory / 'qemu.log'}")
    assert (driver.directory / "qemu.log").read_text().strip() == failure


def test_start_without_a_data_disk(tmp_path: Path) -> None:
    driver = make_driver(tmp_path, accel="tcg")
    with pytest.raises(DriverError, match="data disk of machine 'dev' is missing") as caught:
        driver.start()
    assert "`pymachine rm dev`" in str(caught.value)


def test_precheck(tmp_path: Path) -> None:
    from pymachine.errors import DriverNotAvailable

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DriverNotAvailable, match="`qemu-system-x86_64` is not installed") as caught:
        QemuDriver.precheck(Runner(path=str(empty)), QemuOptions())
    assert "apt-get install qemu-system-x86 qemu-utils" in str(caught.value)
    tools = tmp_path / "tools"
    stand_in_qemu(tools)
    (tools / "qemu-img").write_text("#!/bin/sh\nexit 0\n")
    (tools / "qemu-img").chmod(0o755)
    runner = Runner(path=str(tools))
    QemuDriver.precheck(runner, QemuOptions(accel="tcg"))
    with pytest.raises(DriverError, match="Unknown boot mode 'usb'"):
        QemuDriver.precheck(runner, QemuOptions(boot="usb"))
    with pytest.raises(DriverError, match="Unknown aslr setting 'maybe'"):
        QemuDriver.precheck(runner, QemuOptions(aslr="maybe"))
    with pytest.raises(DriverError, match="Unknown accelerator 'whpx'"):
        QemuDriver.precheck(runner, QemuOptions(accel="whpx"))


# -- arm64 guests: the virt board ----------------------------------------------------------

ARM64_CMDLINE = "console=ttyAMA0 quiet loglevel=3"


def test_arm64_direct_boot_argv_under_tcg(tmp_path: Path) -> None:
    # pvh: an amd64-only kernel form; an arm64 guest must never be handed it.
    driver = make_driver(tmp_path, arch="arm64", pvh=True, cmdline=ARM64_CMDLINE, accel="tcg", restrict_network=True)
    m = tmp_path / "m"
    assert driver.command_line() == [
        "qemu-system-aarch64", "-name", "pymachine-dev", "-nodefaults", "-no-user-config",
        "-machine", "virt,gic-version=max",
        "-accel", "tcg,thread=multi", "-cpu", TCG_CPU_ARM64,
        "-m", "1024", "-smp", "2,sockets=1,cores=2,threads=1", "-rtc", "base=utc",
        "-kernel", str(tmp_path / "vmlinuz"), "-initrd", str(tmp_path / "initrd"), "-append", f"{ARM64_CMDLINE} mitigations=off norandmaps",
        "-drive", f"file={m / 'data.qcow2'},if=none,id=data,format=qcow2,discard=unmap", "-device", "virtio-blk-pci,drive=data",
        "-drive", f"file={m / 'config.iso'},if=none,id=config,format=raw,readonly=on", "-device", "virtio-blk-pci,drive=config",
        "-netdev", "user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:40022-:22,hostfwd=tcp:127.0.0.1:42376-:2376",
        "-device", "virtio-net-pci,netdev=net0,romfile=",
        "-device", "virtio-rng-pci",
        "-serial", f"file:{m / 'serial.log'}", "-display", "none",
        "-qmp", f"unix:{m / 'control.qmp'},server=on,wait=off", "-qmp", f"unix:{m / 'watcher.qmp'},server=on,wait=off",
        "-pidfile", str(m / "qemu.pid"), "-daemonize",
    ]  # fmt: skip


def test_arm64_uefi_cdrom_argv(tmp_path: Path) -> None:
    firmware = code_image(tmp_path / "fw" / "CODE.fd")
    driver = make_driver(tmp_path, arch="arm64", accel="tcg", boot="cdrom", firmware=str(firmware))
    argv = driver.command_line()
    assert "-kernel" not in argv and "-initrd" not in argv and "-append" not in argv
    start = argv.index("-rtc") + 2
    assert argv[start : start + 8] == [
        "-drive", f"if=pflash,format=raw,readonly=on,file={firmware}",
        "-device", "virtio-scsi-pci,id=scsi0",
        "-drive", f"file={tmp_path / 'boot.iso'},if=none,id=cd0,format=raw,media=cdrom,readonly=on",
        "-device", "scsi-cd,bus=scsi0.0,drive=cd0,bootindex=0",
    ]  # fmt: skip
    # one flash drive only: no variables store, as Lima runs it
    assert sum(1 for a in value_after(argv, "-drive") if "if=pflash" in a) == 1
    assert not any(a.startswith("ide-cd") for a in value_after(argv, "-device"))
    assert driver.details()["firmware"] == f"UEFI {firmware}"


def test_arm64_cdrom_boots_a_small_uefi_image_with_bios(tmp_path: Path) -> None:
    # QEMU_EFI.fd is 2 MiB; virt's flash wants 64 MiB, so it is loaded with -bios instead.
    firmware = code_image(tmp_path / "QEMU_EFI.fd", 2 * 1024 * 1024)
    argv = make_driver(tmp_path, arch="arm64", accel="tcg", boot="cdrom", firmware=str(firmware)).command_line()
    assert value_after(argv, "-bios") == [str(firmware)]
    assert not any("if=pflash" in a for a in value_after(argv, "-drive"))


def test_arm64_has_no_bios(tmp_path: Path) -> None:
    with pytest.raises(DriverError, match="arm64 guests boot through UEFI") as caught:
        make_driver(tmp_path, arch="arm64", accel="tcg", boot="cdrom", firmware="bios").command_line()
    assert "-o firmware=auto, uefi" in str(caught.value)


def test_amd64_cdrom_boots_seabios_unless_uefi_is_asked_for_or_needed(tmp_path: Path) -> None:
    xdg = tmp_path / "xdg"
    ovmf = code_image(tmp_path / "ovmf" / "OVMF_CODE_4M.fd", 3653632)
    write_descriptor(xdg / "qemu" / "firmware" / "10-test-x86_64.json", ovmf, "x86_64", ["pc-i440fx-*", "pc-q35-*"], ["acpi-s3"])
    runner = Runner(env={"XDG_CONFIG_HOME": str(xdg)})

    def pflash(argv: list[str]) -> bool:
        return any("if=pflash" in a for a in value_after(argv, "-drive")) or "-bios" in argv

    # Accelerated: SeaBIOS and isolinux, the ISO's own command line is all it needs.
    accelerated = make_driver(tmp_path, accel="kvm", boot="cdrom", runner=runner).command_line()
    assert not pflash(accelerated) and "-smbios" not in accelerated
    # Under TCG the kernel needs the emulation words, which only systemd-boot can be
    # handed (SMBIOS Type 11): the CD boots through UEFI.
    emulated = make_driver(tmp_path, accel="tcg", boot="cdrom", runner=runner).command_line()
    assert f"if=pflash,format=raw,readonly=on,file={ovmf}" in value_after(emulated, "-drive")
    assert value_after(emulated, "-smbios") == ["type=11,value=io.systemd.boot.kernel-cmdline-extra=mitigations=off norandmaps"]
    forced_bios = make_driver(tmp_path, accel="tcg", boot="cdrom", firmware="bios", runner=runner).command_line()
    assert not pflash(forced_bios) and "-smbios" not in forced_bios
    uefi = make_driver(tmp_path, accel="kvm", boot="cdrom", firmware="uefi", runner=runner)
    argv = uefi.command_line()
    assert f"if=pflash,format=raw,readonly=on,file={ovmf}" in value_after(argv, "-drive")
    assert "-smbios" not in argv
    assert "ide-cd,drive=cd0,bootindex=0" in value_after(argv, "-device")  # q35's AHCI, as with SeaBIOS
    assert uefi.details()["firmware"] == f"UEFI {ovmf} (10-test-x86_64.json)"
    # Direct kernel boot maps no firmware at all, whatever -o firmware says.
    direct = make_driver(tmp_path, accel="tcg", firmware="uefi", runner=runner)
    assert not pflash(direct.command_line())
    assert direct.details()["firmware"] == "none (direct kernel boot)"


@pytest.mark.parametrize("make", ["missing", "unreadable"])
def test_a_firmware_path_that_cannot_be_used_is_a_one_line_error(tmp_path: Path, make: str) -> None:
    path = tmp_path / "CODE.fd"
    if make == "unreadable":
        code_image(path).chmod(0)
        if os.access(path, os.R_OK):
            pytest.skip("root reads anything")
    driver = make_driver(tmp_path, arch="arm64", accel="tcg", boot="cdrom", firmware=str(path))
    with pytest.raises(DriverError) as caught:
        driver.command_line()
    message = str(caught.value)
    assert "\n" not in message
    assert f"The firmware {path} {'does not exist' if make == 'missing' else 'cannot be read'}" in message
    assert "-o firmware=uefi" in message
    assert driver.details()["firmware"].startswith("missing: The firmware")


@pytest.mark.parametrize("system, fix", [("Linux", "sudo apt-get install qemu-efi-aarch64"), ("Darwin", "brew install qemu")])
def test_no_uefi_firmware_names_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, system: str, fix: str) -> None:
    mask_host_descriptors(tmp_path / "xdg")
    monkeypatch.setattr(platform, "system", lambda: system)
    driver = make_driver(tmp_path, arch="arm64", accel="tcg", boot="cdrom", runner=Runner(path=str(tmp_path), env={"XDG_CONFIG_HOME": str(tmp_path / "xdg")}))
    with pytest.raises(DriverError) as caught:
        driver.command_line()
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("No UEFI firmware for arm64 guests in QEMU's firmware descriptors (/usr/share/qemu/firmware, /etc/qemu/firmware, ")
    assert f"Run `{fix}`" in message and "-o firmware=PATH" in message


def test_a_user_descriptor_drives_the_command_line(tmp_path: Path) -> None:
    xdg = tmp_path / "xdg"
    mine = code_image(tmp_path / "mine" / "CODE.fd")
    write_descriptor(xdg / "qemu" / "firmware" / "60-edk2-aarch64.json", mine, "aarch64", ["virt-*"], [])
    driver = make_driver(tmp_path, arch="arm64", accel="tcg", boot="cdrom", runner=Runner(env={"XDG_CONFIG_HOME": str(xdg)}))
    assert f"if=pflash,format=raw,readonly=on,file={mine}" in value_after(driver.command_line(), "-drive")


# -- accelerators and CPUs, per host ----------------------------------------------------------


def test_linux_x86_runs_arm64_under_tcg_with_the_measured_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(platform, "system", lambda: "Linux")
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    chosen = detect_accelerator(Runner(), "auto", "arm64")
    assert chosen == Accelerator("tcg", "an arm64 guest on this amd64 host is emulated: KVM runs only the host's own architecture")
    driver = make_driver(tmp_path, arch="arm64")  # accel=auto
    assert QemuDriver.hardware_accelerated(driver.runner, driver.options, "arm64") is False
    argv = driver.command_line()
    assert value_after(argv, "-accel") == ["tcg,thread=multi"] and value_after(argv, "-cpu") == [TCG_CPU_ARM64]
    details = driver.details()
    assert (details["arch"], details["accelerator"], details["cpu"]) == ("arm64", "tcg", TCG_CPU_ARM64)
    assert details["accelerator_reason"] == chosen.reason and "fastest" in details["cpu_reason"]
    assert details["binary"] == "qemu-system-aarch64" and details["machine"] == "virt,gic-version=max"


def test_an_accelerator_cannot_run_the_other_architecture(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    with pytest.raises(DriverError, match="KVM runs only this amd64 host's own architecture, not an arm64 guest") as caught:
        detect_accelerator(Runner(), "kvm", "arm64")
    assert "-o accel=tcg" in str(caught.value)


def test_linux_arm64_host_uses_kvm_when_dev_kvm_is_usable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(platform, "system", lambda: "Linux")
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    chosen = detect_accelerator(Runner(), "auto", "arm64")
    if os.access("/dev/kvm", os.R_OK | os.W_OK):
        assert chosen == Accelerator("kvm", "/dev/kvm is usable")
        assert choose_cpu(Runner(), chosen, "arm64") == CpuModel("host", "the host's own CPU, under KVM")
    else:
        assert chosen.name == "tcg" and "/dev/kvm" in chosen.reason
    assert detect_accelerator(Runner(), "auto", "amd64").reason.startswith("an amd64 guest on this arm64 host is emulated")


class MacHost:
    """This test's Mac: Darwin on arm64 or x86_64, with faithful fakes of sysctl, codesign
    and sw_vers first on the runner's path, and Homebrew prefixes in the test's folder."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, machine: str = "arm64") -> None:
        monkeypatch.setattr(platform, "system", lambda: "Darwin")
        monkeypatch.setattr(platform, "machine", lambda: machine)
        self.tmp = tmp_path
        self.bin = install(tmp_path / "mac-bin", "sysctl", "codesign", "sw_vers")
        self.fake = FakeMac(tmp_path / "mac.json").initialise()
        if machine == "x86_64":
            self.fake.intel()
        self.apple_silicon_brew, self.intel_brew = tmp_path / "opt-homebrew", tmp_path / "usr-local"
        monkeypatch.setattr(qemu_module, "HOMEBREW_PREFIXES", (str(self.apple_silicon_brew), str(self.intel_brew)))
        self.env = {macos_fake.STATE_ENV: str(self.fake.path), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
        self.runner = Runner(path=str(self.bin), env=self.env)

    def brew_install_qemu(self, version: str = "9.1.0", prefix: Path | None = None, entitlement: bool | None = True) -> Path:
        """Stand-in qemu-system-* and qemu-img in a Homebrew prefix; the binaries signed
        with the hypervisor entitlement (True), without it (False), or not at all (None)."""
        folder = (prefix or self.apple_silicon_brew) / "bin"
        folder.mkdir(parents=True, exist_ok=True)
        for program in ("qemu-system-aarch64", "qemu-system-x86_64", "qemu-img"):
            path = folder / program
            path.write_text(
                "#!/bin/sh\n"
                f"if [ \"$1\" = \"--version\" ]; then printf 'QEMU emulator version {version}\\nCopyright (c) 2003-2024 Fabrice Bellard and the QEMU Project developers\\n'; exit 0; fi\n"
                f"printf '%s\\n' \"$@\" > '{folder / (program + '.argv')}'\n"
            )
            path.chmod(0o755)
            if program.startswith("qemu-system"):
                self.fake.sign(path, None if entitlement is None else {"com.apple.security.hypervisor": entitlement} if entitlement else {"com.apple.security.cs.allow-jit": True})
        return folder


@pytest.fixture
def mac(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> MacHost:
    return MacHost(tmp_path, monkeypatch, "arm64")


def test_apple_silicon_runs_arm64_under_hvf_with_the_host_cpu(tmp_path: Path, mac: MacHost) -> None:
    mac.brew_install_qemu()
    driver = make_driver(tmp_path, arch="arm64", runner=mac.runner)
    assert detect_accelerator(mac.runner, "auto", "arm64") == Accelerator("hvf", "kern.hv_support is 1")
    assert QemuDriver.hardware_accelerated(mac.runner, driver.options, "arm64") is True
    argv = driver.command_line()
    assert argv[0] == str(mac.apple_silicon_brew / "bin" / "qemu-system-aarch64")  # not on PATH: Homebrew's
    assert value_after(argv, "-machine") == ["virt"]  # HVF: QEMU's GICv2 default, as Lima runs it
    assert value_after(argv, "-accel") == ["hvf"] and value_after(argv, "-cpu") == ["host"]
    assert value_after(argv, "-append") == [CMDLINE]  # no emulation-only additions
    assert ["sysctl", "-n", "hw.optional.arm.FEAT_SME"] in mac.fake.calls()


def test_apple_m4_runs_with_cpu_max(tmp_path: Path, mac: MacHost) -> None:
    mac.fake.set("sysctl", "hw.optional.arm.FEAT_SME", "1")
    mac.fake.set("sysctl", "machdep.cpu.brand_string", "Apple M4 Pro")
    accel = detect_accelerator(mac.runner, "auto", "arm64")
    cpu = choose_cpu(mac.runner, accel, "arm64")
    assert cpu.model == "max" and "lima#3032" in cpu.reason
    assert value_after(make_driver(tmp_path, arch="arm64", runner=mac.runner).command_line(), "-cpu") == ["max"]
    assert value_after(make_driver(tmp_path, arch="arm64", runner=mac.runner, cpu="host").command_line(), "-cpu") == ["host"]  # -o cpu wins


def test_a_macos_without_the_sme_sysctl_keeps_cpu_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    host = MacHost(tmp_path, monkeypatch, "arm64")
    host.fake.initialise(macos="13.6", sme=None)  # `sysctl: unknown oid 'hw.optional.arm.FEAT_SME'`, exit 1
    accel = detect_accelerator(host.runner, "auto", "arm64")
    assert choose_cpu(host.runner, accel, "arm64") == CpuModel("host", "the host's own CPU, under HVF")


def test_intel_mac_runs_amd64_under_hvf_without_avx512vl_and_1g_pages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    intel = MacHost(tmp_path, monkeypatch, "x86_64")
    intel.brew_install_qemu(prefix=intel.intel_brew)
    argv = make_driver(tmp_path, runner=intel.runner).command_line()
    assert argv[0] == str(intel.intel_brew / "bin" / "qemu-system-x86_64")
    assert value_after(argv, "-machine") == ["q35"]
    assert value_after(argv, "-accel") == ["hvf"] and value_after(argv, "-cpu") == ["host,-avx512vl,-pdpe1gb"]


@pytest.mark.parametrize("machine, guest, cpu", [("arm64", "amd64", TCG_CPU), ("x86_64", "arm64", TCG_CPU_ARM64)])
def test_the_other_architecture_on_a_mac_is_emulated_and_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, machine: str, guest: str, cpu: str) -> None:
    host = MacHost(tmp_path, monkeypatch, machine)
    chosen = detect_accelerator(host.runner, "auto", guest)
    native = "arm64" if machine == "arm64" else "amd64"
    assert chosen == Accelerator("tcg", f"an {guest} guest on this {native} host is emulated: HVF runs only the host's own architecture")
    assert QemuDriver.hardware_accelerated(host.runner, QemuOptions(), guest) is False
    driver = make_driver(tmp_path, arch=guest, runner=host.runner)
    assert value_after(driver.command_line(), "-cpu") == [cpu]
    assert driver.details()["accelerator_reason"] == chosen.reason
    assert not any(call[0] == "sysctl" for call in host.fake.calls())  # no need to ask


def test_a_mac_without_hypervisor_framework_emulates(mac: MacHost) -> None:
    mac.fake.set("sysctl", "kern.hv_support", "0")
    assert detect_accelerator(mac.runner, "auto", "arm64") == Accelerator("tcg", "this Mac does not offer Hypervisor.framework (kern.hv_support is 0)")


# -- finding a Mac's QEMU -----------------------------------------------------------------


def test_homebrew_programs_are_found_when_not_on_path(tmp_path: Path, mac: MacHost) -> None:
    assert find_program(mac.runner, "qemu-system-aarch64") is None
    with pytest.raises(DriverNotAvailable, match="`qemu-system-aarch64` is not installed. Run `brew install qemu`"):
        QemuDriver.precheck(mac.runner, QemuOptions(), "arm64")
    mac.brew_install_qemu(prefix=mac.intel_brew)
    assert find_program(mac.runner, "qemu-system-aarch64") == str(mac.intel_brew / "bin" / "qemu-system-aarch64")
    mac.brew_install_qemu()  # Apple Silicon's prefix is searched first
    assert find_program(mac.runner, "qemu-img") == str(mac.apple_silicon_brew / "bin" / "qemu-img")
    QemuDriver.precheck(mac.runner, QemuOptions(), "arm64")
    # On PATH, the name is kept as typed.
    on_path = Runner(path=f"{mac.bin}{os.pathsep}{mac.intel_brew / 'bin'}", env=mac.env)
    assert find_program(on_path, "qemu-system-aarch64") == "qemu-system-aarch64"
    driver = make_driver(tmp_path, arch="arm64", runner=mac.runner)
    driver.create()
    assert (mac.apple_silicon_brew / "bin" / "qemu-img.argv").read_text().split() == ["create", "-q", "-f", "qcow2", str(driver.disk), "4096M"]


def test_homebrew_is_not_searched_on_linux(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    host = MacHost(tmp_path, monkeypatch)
    host.brew_install_qemu()
    monkeypatch.setattr(platform, "system", lambda: "Linux")
    assert find_program(host.runner, "qemu-system-aarch64") is None


def test_homebrews_firmware_is_found_beside_its_qemu(tmp_path: Path, mac: MacHost) -> None:
    mac.brew_install_qemu()
    mask_host_descriptors(tmp_path / "xdg", keep=("60-edk2-aarch64.json",))
    share = mac.apple_silicon_brew / "share" / "qemu"
    code = code_image(share / "edk2-aarch64-code.fd")
    # QEMU's own descriptor, as `make install` writes it with Homebrew's prefix.
    write_descriptor(share / "firmware" / "60-edk2-aarch64.json", code, "aarch64", ["virt-*"], ["verbose-static"])
    driver = make_driver(tmp_path, arch="arm64", boot="cdrom", runner=mac.runner)
    assert f"if=pflash,format=raw,readonly=on,file={code}" in value_after(driver.command_line(), "-drive")
    # precheck and doctor find it the same way, from the program's name alone.
    assert resolve_firmware(mac.runner, QemuOptions(), "arm64") == FirmwareChoice(code, "raw", share / "firmware" / "60-edk2-aarch64.json")
    QemuDriver.precheck(mac.runner, QemuOptions(boot="cdrom"), "arm64")
    assert f"arm64 UEFI firmware (for -o boot=cdrom): {code} (60-edk2-aarch64.json)" in QemuDriver.host_report(mac.runner).notes


def test_precheck_requires_the_emulator_of_the_guests_architecture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(platform, "system", lambda: "Linux")
    tools = tmp_path / "tools"
    stand_in_qemu(tools)
    (tools / "qemu-img").write_text("#!/bin/sh\nexit 0\n")
    (tools / "qemu-img").chmod(0o755)
    runner = Runner(path=str(tools))
    QemuDriver.precheck(runner, QemuOptions(accel="tcg"), "amd64")
    with pytest.raises(DriverNotAvailable, match="`qemu-system-aarch64` is not installed") as caught:
        QemuDriver.precheck(runner, QemuOptions(accel="tcg"), "arm64")
    assert "sudo apt-get install qemu-system-arm qemu-efi-aarch64 qemu-utils" in str(caught.value)
    # -o binary= still names the program, whatever the architecture.
    QemuDriver.precheck(runner, QemuOptions(accel="tcg", binary="qemu-system-x86_64"), "arm64")
    with pytest.raises(DriverError, match="The firmware /nonexistent.fd does not exist"):
        QemuDriver.precheck(runner, QemuOptions(accel="tcg", firmware="/nonexistent.fd"), "amd64")
    with pytest.raises(DriverError, match="arm64 guests boot through UEFI"):
        QemuDriver.precheck(runner, QemuOptions(accel="tcg", binary="qemu-system-x86_64", boot="cdrom", firmware="bios"), "arm64")


def test_hv_denied_names_the_missing_entitlement(tmp_path: Path, mac: MacHost) -> None:
    folder = mac.brew_install_qemu(entitlement=False)
    script = folder / "qemu-system-aarch64"
    script.write_text("#!/bin/sh\nprintf 'qemu-system-aarch64: Error: HV_DENIED\\n' >&2\nexit 134\n")
    driver = make_driver(tmp_path, arch="arm64", runner=mac.runner)
    driver.disk.write_bytes(b"")
    with pytest.raises(DriverError) as caught:
        driver.start()
    message = str(caught.value)
    assert f"{script} lacks the com.apple.security.hypervisor entitlement" in message
    assert f"Run `codesign --sign - --entitlements ENT.plist --force {script}`" in message and "-o accel=tcg" in message


# -- codesign's two output shapes ----------------------------------------------------------------


@pytest.mark.parametrize(
    "output, granted",
    [
        ("[Dict]\n\t[Key] com.apple.security.hypervisor\n\t[Value]\n\t\t[Bool] true\n", True),
        ("[Dict]\n\t[Key] com.apple.security.hypervisor\n\t[Value]\n\t\t[Bool] false\n\t[Key] com.apple.security.cs.allow-jit\n\t[Value]\n\t\t[Bool] true\n", False),
        ("[Dict]\n\t[Key] com.apple.security.cs.allow-jit\n\t[Value]\n\t\t[Bool] true\n", False),
        ("\ufffd\ufffdqq\x00\x00\x01\x06" + plistlib.dumps({"com.apple.security.hypervisor": True}).decode(), True),
        ("\ufffd\ufffdqq\x00\x00\x01\x06" + plistlib.dumps({"com.apple.security.hypervisor": False, "com.apple.security.cs.allow-jit": True}).decode(), False),
        ("", False),
    ],
    ids=["tree", "tree-false", "tree-other", "xml", "xml-false", "nothing"],
)
def test_hypervisor_entitlement_reads_both_formats(output: str, granted: bool) -> None:
    assert hypervisor_entitlement(output) is granted


# -- pymachine doctor on a Mac ---------------------------------------------------------------------


def test_doctor_on_a_healthy_apple_silicon_mac(mac: MacHost) -> None:
    mac.brew_install_qemu("9.1.0")
    report = QemuDriver.host_report(mac.runner)
    binary = mac.apple_silicon_brew / "bin" / "qemu-system-aarch64"
    assert (report.installed, report.version, report.accelerator, report.detail) == (True, "9.1.0", "hvf", "kern.hv_support is 1")
    assert report.notes[:3] == ("HVF: usable (kern.hv_support is 1)", f"entitlement: {binary} carries com.apple.security.hypervisor", "macOS 14.5")
    assert report.notes[3] == "amd64 guests: emulated (TCG) by qemu-system-x86_64 9.1.0"
    assert ["codesign", "-d", "--entitlements", "-", str(binary)] in mac.fake.calls()
    assert ["sw_vers", "-productVersion"] in mac.fake.calls()


def test_doctor_names_each_problem_with_its_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mac = MacHost(tmp_path, monkeypatch, "arm64")
    mac.fake.initialise(macos="12.3", hv_support="0")
    binary = mac.brew_install_qemu("8.1.3", entitlement=False) / "qemu-system-aarch64"
    report = QemuDriver.host_report(mac.runner)
    assert (report.installed, report.version, report.accelerator) == (True, "8.1.3", "tcg")
    notes = "\n".join(report.notes)
    assert "QEMU 8.1.3 is older than 8.2.1, the oldest that runs Apple Silicon guests reliably: run `brew upgrade qemu`" in notes
    assert "HVF: not usable (kern.hv_support is 0), so every guest runs emulated: run pymachine on the Mac itself, or turn on nested virtualization" in notes
    assert f"entitlement: {binary} lacks com.apple.security.hypervisor, so HVF refuses it (HV_DENIED): run `codesign --sign - --entitlements ENT.plist --force {binary}`" in notes
    assert "macOS 12.3: guests with more than 3 GiB can panic the host under HVF (lima#795): update macOS to 12.4 or later" in notes


def test_doctor_on_an_old_macos_reads_the_xml_entitlements(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mac = MacHost(tmp_path, monkeypatch, "x86_64")
    mac.fake.initialise(macos="11.7.10")
    mac.fake.intel(macos="11.7.10")
    binary = mac.brew_install_qemu("8.2.1", prefix=mac.intel_brew) / "qemu-system-x86_64"
    report = QemuDriver.host_report(mac.runner)
    assert report.accelerator == "hvf"
    assert f"entitlement: {binary} carries com.apple.security.hypervisor" in report.notes
    assert "macOS 11.7.10" in report.notes  # the 3 GiB panic is an Apple Silicon one


def test_doctor_on_an_unsigned_qemu(mac: MacHost) -> None:
    binary = mac.brew_install_qemu(entitlement=None) / "qemu-system-aarch64"
    notes = "\n".join(QemuDriver.host_report(mac.runner).notes)
    assert f"entitlement: codesign cannot read {binary} ({binary}: code object is not signed at all), so HVF will refuse it: run `codesign --sign - --entitlements ENT.plist --force {binary}`" in notes


def test_doctor_on_a_mac_without_qemu(mac: MacHost) -> None:
    report = QemuDriver.host_report(mac.runner)
    assert not report.installed and report.detail == "`qemu-system-aarch64` is not installed. Run `brew install qemu`"


def test_doctor_command_shows_the_notes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], restored_logging) -> None:
    from pymachine.cli.main import run_cli

    mac = MacHost(tmp_path, monkeypatch, "arm64")
    binary = mac.brew_install_qemu("8.1.3", entitlement=False) / "qemu-system-aarch64"
    monkeypatch.setenv("PATH", str(mac.bin))
    for key, value in mac.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("PYMACHINE_STORAGE_PATH", str(tmp_path / "home"))
    monkeypatch.setenv("PYMACHINE_CACHE_PATH", str(tmp_path / "cache"))
    assert run_cli(["doctor"]) == 0
    lines = capsys.readouterr().out.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("qemu "))
    assert lines[first] == "qemu        installed 8.1.3; accelerator: hvf - kern.hv_support is 1"
    details = []
    for line in lines[first + 1 :]:
        if not line.startswith(" " * 12):
            break
        details.append(line.strip())
    assert details[0].startswith("QEMU 8.1.3 is older than 8.2.1") and details[0].endswith("run `brew upgrade qemu`")
    assert any(d.startswith(f"entitlement: {binary} lacks com.apple.security.hypervisor") for d in details)
    assert run_cli(["doctor", "--format", "json"]) == 0
    qemu = next(d for d in json.loads(capsys.readouterr().out)["drivers"] if d["name"] == "qemu")
    assert qemu["notes"] == details


@pytest.mark.parametrize(("version", "arch", "mode"), [
    ("7.2.22", "amd64", "tcg,thread=single"),
    ("9.2.0", "amd64", "tcg,thread=single"),
    ("10.0.2", "amd64", "tcg,thread=multi"),
    ("7.2.22", "arm64", "tcg,thread=multi"),
])  # fmt: skip
def test_x86_guests_run_single_threaded_tcg_on_a_qemu_whose_mttcg_kills_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version: str, arch: str, mode: str) -> None:
    folder = fake_qemu(tmp_path / "qemu", version)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    argv = make_driver(tmp_path, accel="tcg", arch=arch).command_line()
    assert value_after(argv, "-accel") == [mode]
