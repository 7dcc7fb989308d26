"""A small synchronous QMP client for QEMU's monitor socket.

Why not qemu.qmp: every pymachine command that asks a VM's state pays for the client's
import, and qemu.qmp's asyncio start-up alone costs more than `ls` may take in total.
The protocol needed here is a handful of JSON lines.
"""

from __future__ import annotations

import json
import socket
from typing import Any


class QMPError(Exception):
    """QEMU answered with an error, or the socket failed."""


class QMPClient:
    """One QMP session: connect, negotiate capabilities, execute commands."""

    def __init__(self, path: str, timeout: float = 2.0) -> None:
        self.path = path
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buffer = b""

    def __enter__(self) -> QMPClient:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError as exc:
            sock.close()
            raise QMPError(f"cannot connect to {self.path}: {exc}") from None
        self._sock = sock
        greeting = self._read_message()
        if "QMP" not in greeting:
            self.close()
            raise QMPError(f"unexpected QMP greeting: {greeting}")
        self.execute("qmp_capabilities")

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None
                self._buffer = b""

    def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """Run a QMP command and return its "return" value."""
        if self._sock is None:
            raise QMPError("not connected")
        message: dict[str, Any] = {"execute": command}
        if arguments:
            message["arguments"] = arguments
        try:
            self._sock.sendall(json.dumps(message).encode() + b"\n")
        except OSError as exc:
            raise QMPError(f"{command}: {exc}") from None
        while True:
            reply = self._read_message()
            if "event" in reply:
                continue
            if "error" in reply:
                error = reply["error"]
                raise QMPError(f"{command}: {error.get('desc', error)}")
            if "return" in reply:
                return reply["return"]

    def hmp(self, command_line: str) -> str:
        """A human monitor command; QEMU reports its failures inside the returned text."""
        result = self.execute("human-monitor-command", {"command-line": command_line})
        return result if isinstance(result, str) else ""

    def _read_message(self) -> dict[str, Any]:
        assert self._sock is not None
        while b"\n" not in self._buffer:
            try:
                chunk = self._sock.recv(65536)
            except OSError as exc:
                raise QMPError(f"reading {self.path}: {exc}") from None
            if not chunk:
                raise QMPError(f"QEMU closed {self.path}")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            raise QMPError(f"unreadable QMP message: {line[:200]!r}") from None
