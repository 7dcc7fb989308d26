"""The hypervisor guard against fake VM processes.

Each fake is a tiny sleeping script started through a symlink named like the real
VM process (VBoxHeadless, prl_vm_app, qemu-system-x86_64) with the arguments the real
one runs with, so /proc shows the same name and command line. Every process a test
starts is stopped by its PID when the test ends. Other VMs may really run on this
host while the tests run, so assertions look only at the fakes' PIDs.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pymachine.errors import HypervisorConflict
from pymachine.guard import HypervisorGuard, VMProcess
from pymachine.progress import RecordingProgress
from pymachine.runner import Runner

from .fakes.processes import FakeVMs

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the fakes are found through /proc")


@pytest.fixture
def fakes(tmp_path: Path) -> Iterator[FakeVMs]:
    vms = FakeVMs(tmp_path)
    try:
        yield vms
    finally:
        vms.stop_all()


def ours(guard: HypervisorGuard, pid: int) -> VMProcess | None:
    return next((vm for vm in guard.running_vms() if vm.pid == pid), None)


def test_a_virtualbox_vm_is_found_and_refused(fakes: FakeVMs) -> None:
    pid = fakes.start("VBoxHeadless", "--comment", "dev", "--startvm", "4f1c3b2a-0000-4000-8000-000000000001", "--vrde", "config")
    guard = HypervisorGuard(Runner())
    assert ours(guard, pid) == VMProcess(pid, "VirtualBox", "dev", True)
    with pytest.raises(HypervisorConflict) as caught:
        guard.check("qemu")
    message = str(caught.value)
    assert f"VirtualBox VM 'dev' (pid {pid}; stop it with `VBoxManage controlvm 'dev' acpipowerbutton`)" in message
    assert message.endswith(". Stop them first, or pass --force to start anyway")


def test_a_parallels_vm_is_found_and_refused(fakes: FakeVMs) -> None:
    pid = fakes.start("prl_vm_app", "--openvm", str(fakes.folder / "Parallels" / "web.pvm"))
    guard = HypervisorGuard(Runner())
    assert ours(guard, pid) == VMProcess(pid, "Parallels", "web", True)
    with pytest.raises(HypervisorConflict, match=rf"Parallels VM 'web' \(pid {pid}; stop it with `prlctl stop 'web'`\)"):
        guard.check("virtualbox")


def test_an_accelerated_qemu_is_refused_beside_virtualbox(fakes: FakeVMs) -> None:
    pid = fakes.start("qemu-system-x86_64", "-name", "pymachine-other", "-accel", "kvm", "-m", "1024")
    guard = HypervisorGuard(Runner())
    assert ours(guard, pid) == VMProcess(pid, "QEMU", "pymachine-other", True)
    with pytest.raises(HypervisorConflict, match=rf"QEMU VM 'pymachine-other' \(pid {pid}; stop it with `pymachine stop other`\)"):
        guard.check("virtualbox")


def test_a_tcg_qemu_is_no_conflict(fakes: FakeVMs) -> None:
    pid = fakes.start("qemu-system-x86_64", "-name", "pymachine-slow", "-accel", "tcg,thread=multi")
    guard = HypervisorGuard(Runner())
    found = ours(guard, pid)
    assert found is not None and not found.accelerated
    assert pid not in [vm.pid for vm in guard.conflicts("virtualbox")]


def test_vms_of_the_same_hypervisor_are_allowed(fakes: FakeVMs) -> None:
    pid = fakes.start("VBoxHeadless", "--comment", "other", "--startvm", "4f1c3b2a-0000-4000-8000-000000000002")
    guard = HypervisorGuard(Runner())
    assert pid not in [vm.pid for vm in guard.conflicts("virtualbox")]
    assert pid in [vm.pid for vm in guard.conflicts("parallels")]


def test_a_vm_without_hardware_virtualization_is_allowed(fakes: FakeVMs) -> None:
    fakes.start("VBoxHeadless", "--comment", "dev", "--startvm", "4f1c3b2a-0000-4000-8000-000000000003")
    HypervisorGuard(Runner()).check("qemu", accelerated=False)


def test_force_allows_and_says_so(fakes: FakeVMs) -> None:
    pid = fakes.start("prl_vm_app", "--openvm", str(fakes.folder / "dev.pvm"))
    progress = RecordingProgress()
    HypervisorGuard(Runner()).check("qemu", force=True, progress=progress)
    notes = [text for kind, text in progress.events if kind == "note"]
    assert any("because of --force" in note and f"pid {pid}" in note for note in notes)


def test_processes_end_when_the_test_ends(tmp_path: Path) -> None:
    vms = FakeVMs(tmp_path)
    pid = vms.start("VBoxHeadless", "--comment", "gone")
    vms.stop_all()
    assert ours(HypervisorGuard(Runner()), pid) is None


def test_on_macos_the_guard_reads_ps_as_a_mac_prints_it(tmp_path: Path) -> None:
    """On a Mac there is no /proc: the guard runs `ps`, here a faithful fake of macOS's."""
    from .fakes import macos
    from .fakes.tools import install

    mac = macos.FakeMac(tmp_path / "mac.json").initialise()
    mac.run(4242, "/Applications/VirtualBox.app/Contents/Resources/VirtualBoxVM.app/Contents/MacOS/VirtualBoxVM", "--comment", "win11", "--startvm", "1f2e3d4c", "--no-startvm-errormsgbox")
    mac.run(4343, "/Applications/Parallels Desktop.app/Contents/MacOS/Parallels VM.app/Contents/MacOS/prl_vm_app", "--openvm", "/Users/John Smith/Parallels/Ubuntu 22.04.pvm")
    mac.run(4444, "/opt/homebrew/bin/qemu-system-aarch64", "-name", "pymachine-dev", "-machine", "virt,accel=hvf", "-accel", "hvf")
    mac.run(4545, "/System/Applications/Utilities/Terminal.app/Contents/MacOS/Terminal")
    runner = Runner(path=str(install(tmp_path / "bin", "ps")), env={macos.STATE_ENV: str(mac.path)})
    guard = HypervisorGuard(runner, proc_root=tmp_path / "no-proc")
    found = {vm.pid: vm for vm in guard.running_vms()}
    assert sorted(found) == [4242, 4343, 4444]
    assert (found[4242].family, found[4242].vm) == ("VirtualBox", "win11")
    assert (found[4343].family, found[4343].vm) == ("Parallels", "Ubuntu 22.04")
    assert (found[4444].family, found[4444].vm, found[4444].accelerated) == ("QEMU", "pymachine-dev", True)
    with pytest.raises(HypervisorConflict) as caught:
        guard.check("qemu")
    assert "VirtualBox VM 'win11' (pid 4242; stop it with `VBoxManage controlvm 'win11' acpipowerbutton`)" in str(caught.value)
    assert "Parallels VM 'Ubuntu 22.04' (pid 4343; stop it with `prlctl stop 'Ubuntu 22.04'`)" in str(caught.value)
    calls = mac.calls()
    assert calls[0] == ["ps", "-axo", "pid=,comm="]
    assert ["ps", "-o", "args=", "-p", "4545"] not in calls, "only VM processes are looked at"
