"""The QEMU driver without a VM: its command line, accelerator choice, `info usernet`
parsing, and its monitor conversation (against a fake QMP socket that answers with the
strings QEMU 7.2 prints)."""

from __future__ import annotations

import json
import os
import platform
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
    Accelerator,
    QemuDriver,
    QemuOptions,
    detect_accelerator,
    parse_usernet,
)
from pymachine.errors import DriverError, MachineStateError, PortUnavailable
from pymachine.runner import Runner

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


def make_driver(tmp_path: Path, *, kernel: bool = True, pvh: bool = False, cmdline: str = CMDLINE, **options) -> QemuDriver:
    directory = tmp_path / "m"
    directory.mkdir(exist_ok=True)
    boot = BootMedia(
        iso=tmp_path / "boot.iso",
        kernel=tmp_path / "vmlinuz" if kernel else None,
        initrd=tmp_path / "initrd" if kernel else None,
        cmdline=cmdline,
        pvh_kernel=tmp_path / "vmlinux" if pvh else None,
    )
    spec = MachineSpec("dev", directory, 2, 1024, 4096, boot, directory / "config.iso", ssh_port=40022, docker_port=42376)
    return QemuDriver(spec, QemuOptions(**options), Runner())


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
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "-name", "pymachine-dev"])  # stands in for qemu
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
