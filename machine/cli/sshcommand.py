"""`pymachine ssh` and `pymachine scp`: the user's own SSH sessions into a machine.

An interactive login uses the system's OpenSSH client with the machine's pinned host
key (StrictHostKeyChecking=yes, a known_hosts file of the machine's own); without an
OpenSSH client, paramiko gives a plain terminal session instead.
"""

from __future__ import annotations

import os
import posixpath
import shlex
import shutil
import stat
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pymachine.driver import State
from pymachine.errors import MachineError, MachineStateError
from pymachine.guest.ssh import close_sftp

if TYPE_CHECKING:
    from pymachine.cli.app import Session
    from pymachine.machine import Machine


def _require_running(machine: Machine) -> None:
    if machine.state() != State.RUNNING:
        raise MachineStateError(f"Machine '{machine.name}' is not running", f"Run `pymachine start {machine.name}`")


def ssh_argv(machine: Machine) -> list[str]:
    """The OpenSSH command line that logs into the machine."""
    target = machine.ssh_target()
    directory = machine.directory
    name = machine.name
    return [
        "ssh",
        "-i", str(target.key_path),
        "-p", str(target.port),
        "-o", "IdentitiesOnly=yes",
        "-o", f"UserKnownHostsFile={directory / 'known_hosts'}",
        "-o", f"HostKeyAlias=pymachine-{name}",
        "-o", "StrictHostKeyChecking=yes",
        "-o", "LogLevel=ERROR",
        f"{target.user}@{target.host}",
    ]


def interactive_ssh(machine: Machine) -> None:
    _require_running(machine)
    argv = ssh_argv(machine)
    program = shutil.which("ssh")
    if program is not None:
        os.execv(program, argv)
    _paramiko_shell(machine)


def run_remote(machine: Machine, command: list[str]) -> int:
    """Run a command in the guest, streaming its output; its exit status."""
    _require_running(machine)
    text = command[0] if len(command) == 1 else " ".join(shlex.quote(c) for c in command)
    with machine.ssh() as ssh:
        stdin = None if sys.stdin.isatty() else sys.stdin
        return ssh.stream(text, sys.stdout.buffer, sys.stderr.buffer, stdin=stdin)


def _paramiko_shell(machine: Machine) -> None:
    import select
    import termios
    import tty

    with machine.ssh() as ssh:
        channel = ssh.session()
        size = shutil.get_terminal_size()
        channel.get_pty(term=os.environ.get("TERM", "xterm"), width=size.columns, height=size.lines)
        channel.invoke_shell()
        old = termios.tcgetattr(sys.stdin)
        try:
            tty.setraw(sys.stdin.fileno())
            while not channel.exit_status_ready():
                ready, _, _ = select.select([channel, sys.stdin], [], [], 0.5)
                if channel in ready:
                    data = channel.recv(65536)
                    if not data:
                        break
                    os.write(sys.stdout.fileno(), data)
                if sys.stdin in ready:
                    channel.sendall(os.read(sys.stdin.fileno(), 1024))
        finally:
            termios.tcsetattr(sys.stdin, termios.TCSADRAIN, old)


def _split(location: str) -> tuple[str | None, str]:
    if ":" in location and not location.startswith(("/", ".")):
        machine, path = location.split(":", 1)
        return machine, path or "."
    return None, location


def copy(session: Session, source: str, destination: str, recursive: bool) -> None:
    src_machine, src_path = _split(source)
    dst_machine, dst_path = _split(destination)
    if (src_machine is None) == (dst_machine is None):
        raise MachineError("scp copies between this host and one machine: one side must be MACHINE:PATH", "Example: `pymachine scp ./app.tar dev:/tmp/`")
    name = src_machine or dst_machine
    assert name is not None
    machine = session.machine(name)
    _require_running(machine)
    with machine.ssh() as ssh:
        sftp = ssh.sftp()
        try:
            if dst_machine:
                _upload(sftp, Path(src_path), dst_path, recursive)
            else:
                _download(sftp, src_path, Path(dst_path), recursive)
        except FileNotFoundError as exc:
            # paramiko's FileNotFoundError carries no file name: name the path asked for.
            missing = exc.filename or (f"{name}:{dst_path}" if dst_machine else f"{name}:{src_path}")
            raise MachineError(f"No such file or folder: {missing}", f"Check the path with `pymachine ssh {name} ls -la {posixpath.dirname(dst_path if dst_machine else src_path) or '.'}`") from None
        finally:
            close_sftp(sftp)


def _remote_is_dir(sftp, path: str) -> bool:
    try:
        return stat.S_ISDIR(sftp.stat(path).st_mode)
    except FileNotFoundError:
        return False


def _upload(sftp, local: Path, remote: str, recursive: bool) -> None:
    if not local.exists():
        raise MachineError(f"No such file: {local}", "Check the path")
    if _remote_is_dir(sftp, remote):
        remote = posixpath.join(remote, local.name)
    if local.is_dir():
        if not recursive:
            raise MachineError(f"{local} is a folder", "Add -r to copy folders")
        if not _remote_is_dir(sftp, remote):
            sftp.mkdir(remote)
        for child in sorted(local.iterdir()):
            _upload(sftp, child, posixpath.join(remote, child.name), recursive)
        return
    sftp.put(str(local), remote)
    sftp.chmod(remote, stat.S_IMODE(local.stat().st_mode))


def _download(sftp, remote: str, local: Path, recursive: bool) -> None:
    if local.is_dir():
        local = local / posixpath.basename(remote.rstrip("/"))
    if _remote_is_dir(sftp, remote):
        if not recursive:
            raise MachineError(f"{remote} is a folder", "Add -r to copy folders")
        local.mkdir(exist_ok=True)
        for entry in sorted(sftp.listdir(remote)):
            _download(sftp, posixpath.join(remote, entry), local / entry, recursive)
        return
    sftp.get(remote, str(local))
