"""One SSH wrapper over paramiko: lazy connect, the guest's host key pinned, both output
streams drained together, and a timeout that keeps what the command printed.

The guest's host key is generated on the host and handed to the guest on its config
medium, so the very first connection is already verified: there is no trust on first
use and no StrictHostKeyChecking=no.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pymachine.errors import SSHError, SSHTimeout

log = logging.getLogger(__name__)
# paramiko logs every refused early connection at ERROR with a traceback; those belong
# in the debug log (when the CLI sets one up), never on the user's terminal.
logging.getLogger("paramiko").addHandler(logging.NullHandler())


@dataclass(frozen=True)
class SSHTarget:
    """Who to log in as, where, with which key, expecting which host key."""

    machine: str
    host: str
    port: int
    user: str
    key_path: Path
    host_key: str  # "ssh-ed25519 AAAA..." as the guest will present it


@dataclass(frozen=True)
class Result:
    """What a command run in the guest left behind."""

    command: str
    returncode: int
    stdout: str
    stderr: str


class GuestSSH:
    """A connection to one guest, opened on first use and reused after."""

    def __init__(self, target: SSHTarget, connect_timeout: float = 10.0) -> None:
        self.target = target
        self.connect_timeout = connect_timeout
        self._client: Any = None

    # -- connection -----------------------------------------------------------------

    def connect(self) -> None:
        """Open the connection now (normally it opens on first use)."""
        if self._client is not None and self._client.get_transport() and self._client.get_transport().is_active():
            return
        self._client = self._open(self.connect_timeout)

    def _open(self, timeout: float, banner_timeout: float | None = None) -> Any:
        import paramiko

        target = self.target
        client = paramiko.SSHClient()
        keytype, blob = target.host_key.split()[:2]
        host_key = paramiko.PKey.from_type_string(keytype, _b64(blob))
        client.get_host_keys().add(f"[{target.host}]:{target.port}", keytype, host_key)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            pkey = paramiko.Ed25519Key.from_private_key_file(str(target.key_path))
        except FileNotFoundError:
            raise SSHError(f"SSH key {target.key_path} of machine '{target.machine}' is missing", f"Run `pymachine rm {target.machine}` and create it again") from None
        try:
            client.connect(
                target.host,
                target.port,
                username=target.user,
                pkey=pkey,
                look_for_keys=False,
                allow_agent=False,
                timeout=timeout,
                banner_timeout=banner_timeout or timeout,
                auth_timeout=max(timeout, 10.0),
            )
        except paramiko.BadHostKeyException:
            client.close()
            raise SSHError(
                f"The SSH server on {target.host}:{target.port} is not machine '{target.machine}': its host key differs from the one pymachine made for it",
                "Run `pymachine ls` to see which machine uses that port",
            ) from None
        except paramiko.AuthenticationException:
            client.close()
            raise SSHError(f"Machine '{target.machine}' refused pymachine's SSH key", f"Run `pymachine logs {target.machine}` to see the guest's console") from None
        except paramiko.SSHException as exc:
            client.close()
            if "not found in known_hosts" in str(exc):
                raise SSHError(
                    f"The SSH server on {target.host}:{target.port} offered a host key of another type than machine '{target.machine}' has",
                    "Run `pymachine ls` to see which machine uses that port",
                ) from None
            raise _Retryable(str(exc)) from None
        except (OSError, EOFError) as exc:
            client.close()
            raise _Retryable(str(exc) or type(exc).__name__) from None
        return client

    def wait(self, timeout: float, on_failure: Callable[[], str] | None = None, booted: Callable[[], bool] | None = None) -> None:
        """Connect, retrying while the guest boots, for up to `timeout` seconds.

        `booted` (when given) tells that the guest says it is ready, e.g. from its
        console: until then no connection is tried. That matters because a forwarded
        port accepts at once while the guest is still booting, and such an early
        connection then hangs until its timeout, well after sshd is up.
        `on_failure` supplies extra text (such as the last console lines) for the error.
        """
        deadline = time.monotonic() + timeout
        if booted is not None:
            while not booted() and time.monotonic() < deadline:
                time.sleep(0.05)
        pause = 0.1
        last = "no answer"
        while True:
            try:
                # A short banner timeout: a connection made too early is abandoned
                # and retried rather than waited on.
                self._client = self._open(min(5.0, max(1.0, deadline - time.monotonic())), banner_timeout=2.0)
                return
            except _Retryable as exc:
                last = str(exc)
            if time.monotonic() + pause > deadline:
                detail = on_failure() if on_failure else ""
                raise SSHError(
                    f"Machine '{self.target.machine}' did not answer SSH on {self.target.host}:{self.target.port} within {timeout:.0f}s ({last}){detail}",
                    f"Run `pymachine logs {self.target.machine}` to see its console",
                )
            time.sleep(pause)
            pause = min(pause * 1.5, 0.5)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> GuestSSH:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def client(self) -> Any:
        if self._client is None:
            try:
                self.connect()
            except _Retryable as exc:
                raise SSHError(
                    f"Cannot reach machine '{self.target.machine}' over SSH on {self.target.host}:{self.target.port} ({exc})",
                    f"Run `pymachine status {self.target.machine}`; start it with `pymachine start {self.target.machine}`",
                ) from None
        return self._client

    # -- commands -------------------------------------------------------------------

    def run(self, command: str, *, timeout: float = 60.0, check: bool = True, input: bytes | None = None) -> Result:
        """Run a shell command in the guest, draining stdout and stderr together."""
        channel = self.session()
        channel.exec_command(command)
        if input is not None:
            channel.sendall(input)
        channel.shutdown_write()
        out, err = bytearray(), bytearray()
        deadline = time.monotonic() + timeout
        while True:
            while channel.recv_ready():
                out += channel.recv(65536)
            while channel.recv_stderr_ready():
                err += channel.recv_stderr(65536)
            if channel.exit_status_ready() and not channel.recv_ready() and not channel.recv_stderr_ready():
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                channel.close()
                raise SSHTimeout(
                    f"`{_short(command)}` in machine '{self.target.machine}' did not finish within {timeout:.0f}s",
                    out.decode(errors="replace"),
                    err.decode(errors="replace"),
                    f"Run `pymachine ssh {self.target.machine}` to look around",
                )
            select.select([channel], [], [], min(remaining, 0.5))
        status = channel.recv_exit_status()
        _close(channel)
        result = Result(command, status, out.decode(errors="replace"), err.decode(errors="replace"))
        log.debug("ssh %s: %r -> %s", self.target.machine, command, status)
        if check and status != 0:
            detail = (result.stderr.strip() or result.stdout.strip()).splitlines()
            raise SSHError(
                f"`{_short(command)}` failed in machine '{self.target.machine}' (exit {status}): {detail[-1] if detail else 'no output'}",
                f"Run `pymachine ssh {self.target.machine}` to look around",
            )
        return result

    def stream(self, command: str, stdout: Any, stderr: Any, stdin: Any = None) -> int:
        """Run a command, copying its output to binary streams as it arrives; its exit code."""
        channel = self.session()
        channel.exec_command(command)
        if stdin is None:
            channel.shutdown_write()
        while True:
            readable = [channel] + ([stdin] if stdin is not None else [])
            ready, _, _ = select.select(readable, [], [], 0.5)
            if stdin is not None and stdin in ready:
                data = os.read(stdin.fileno(), 65536)
                if data:
                    channel.sendall(data)
                else:
                    channel.shutdown_write()
                    stdin = None
            while channel.recv_ready():
                stdout.write(channel.recv(65536))
                stdout.flush()
            while channel.recv_stderr_ready():
                stderr.write(channel.recv_stderr(65536))
                stderr.flush()
            if channel.exit_status_ready() and not channel.recv_ready() and not channel.recv_stderr_ready():
                break
        status = channel.recv_exit_status()
        _close(channel)
        return status

    def put(self, local: Path, remote: str, progress: Callable[[int, int], None] | None = None) -> None:
        """Copy a file to the guest over SFTP."""
        sftp = self.sftp()
        try:
            sftp.put(str(local), remote, callback=progress)
        finally:
            close_sftp(sftp)

    def get(self, remote: str, local: Path, progress: Callable[[int, int], None] | None = None) -> None:
        """Copy a file from the guest over SFTP."""
        sftp = self.sftp()
        try:
            sftp.get(remote, str(local), callback=progress)
        finally:
            close_sftp(sftp)

    def write(self, remote: str, data: bytes, mode: int = 0o644) -> None:
        """Write a small file in the guest atomically (temp file, then rename)."""
        self.write_many({remote: (data, mode)})

    def write_many(self, files: dict[str, tuple[bytes, int]]) -> None:
        """Write several small files over one SFTP session, each atomically."""
        sftp = self.sftp()
        try:
            for remote, (data, mode) in files.items():
                tmp = f"{remote}.pymachine-tmp"
                with sftp.open(tmp, "wb") as handle:
                    handle.write(data)
                sftp.chmod(tmp, mode)
                sftp.posix_rename(tmp, remote)
        finally:
            close_sftp(sftp)

    def session(self) -> Any:
        """A new channel. dropbear now and then refuses one ("Unable to open channel")
        right after another closed; a moment later, or on a new connection, it works."""
        import paramiko

        for attempt in range(3):
            try:
                return self.client.get_transport().open_session(timeout=self.connect_timeout)
            except (paramiko.SSHException, EOFError, OSError) as exc:
                log.debug("opening a channel to %s failed (%s), attempt %d", self.target.machine, exc, attempt + 1)
                if attempt == 0:
                    time.sleep(0.2)
                else:
                    self.close()
        return self.client.get_transport().open_session(timeout=self.connect_timeout)

    def sftp(self) -> Any:
        import paramiko

        return paramiko.SFTPClient(self._sftp_channel())

    def _sftp_channel(self) -> Any:
        channel = self.session()
        channel.invoke_subsystem("sftp")
        return channel

    def forward_socket(self, host: str, port: int) -> Any:
        """A channel to host:port as seen from the guest (like ssh -W)."""
        transport = self.client.get_transport()
        return transport.open_channel("direct-tcpip", (host, port), ("127.0.0.1", 0), timeout=self.connect_timeout)


def _close(channel: Any, wait: float = 5.0) -> None:
    """Close a channel the way dropbear copes with: send EOF, let the server close first.

    Closing first while the guest's end still has output queued makes dropbear 2022.83
    abort the whole connection (`Failed assertion ... !channel->sent_close`).
    """
    try:
        if not channel.closed:
            channel.shutdown_write()
        deadline = time.monotonic() + wait
        while not channel.closed and time.monotonic() < deadline:
            if channel.recv_ready():
                channel.recv(65536)
            elif channel.recv_stderr_ready():
                channel.recv_stderr(65536)
            else:
                time.sleep(0.005)
    except (OSError, EOFError):
        pass
    channel.close()


def close_sftp(sftp: Any) -> None:
    """Close an SFTP session gracefully (see _close)."""
    channel = sftp.get_channel()
    if channel is not None:
        _close(channel)
    sftp.close()


class _Retryable(Exception):
    """The guest is not answering yet; try again."""


def _b64(text: str) -> bytes:
    import base64

    return base64.b64decode(text)


def _short(command: str) -> str:
    command = " ".join(command.split())
    return command if len(command) <= 60 else command[:57] + "..."


def port_is_open(host: str, port: int, timeout: float = 0.2) -> bool:
    """True if something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
