"""A scripted guest for provisioning without a VM: what pymachine's guest answers over SSH.

The answers are those of the guest scripts in iso/rootfs: the facts script of
machine.provision, and `/usr/libexec/pymachine/engine` install | version | start |
restart | stop | status | validate (which answers as `dockerd --validate` of Docker 26.1
does, from its recorded `--help`: unknown flags, missing values, numbers, and flags that
repeat a daemon.json key). The guest only answers while its fake VM runs with an SSH
forward on the port the host dials, as a real guest behind a NAT rule would.

Starting the engine starts a real HTTPS server on the host side of the VM's Docker
forward (127.0.0.1 only), with the server certificate, key and CA that provisioning
wrote into the guest, requiring a client certificate signed by that CA: so the core's
wait for `/_ping` over TLS runs for real. Call `GuestFarm.stop()` at the end.
"""

from __future__ import annotations

import hashlib
import http.server
import ssl
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pymachine.errors import SSHError
from pymachine.guest.provision import CONFIG_FILES, ENGINE, FACTS_SCRIPT, GUEST_STATE, TLS_DIR
from pymachine.guest.ssh import Result, SSHTarget

#: (vm name, protocol, host port, guest port) -> does a running VM carry that forward?
ForwardCheck = Callable[[str, str, int, int], bool]
#: vm name -> the host port of its forward to guest port 2376
DockerPort = Callable[[str], int]
#: vm name -> its data disk's size in MB
DiskSize = Callable[[str], int]
#: Less free room than this (KiB), and dockerd dies at start ("no space left on device").
ENGINE_NEEDS_KB = 64 * 1024


class _Ping(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path == "/_ping":
            body = b"OK"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Api-Version", "1.41")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_error(404, "page not found")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class GuestState:
    """One guest's disk and engine, kept across SSH connections."""

    name: str
    files: dict[str, bytes] = field(default_factory=dict)
    engine_sha256: str = ""
    commands: list[str] = field(default_factory=list)
    server: http.server.ThreadingHTTPServer | None = None
    thread: threading.Thread | None = None
    tls_dir: tempfile.TemporaryDirectory | None = None
    log: list[str] = field(default_factory=list)
    #: what the data disk holds, in KiB (its size comes from the farm's disk_mb)
    used_kb: int = 1024 * 1024
    #: dockerd has run since boot (so docker0 exists)
    engine_ran: bool = False
    #: the MTU of its NIC, as /sys/class/net/eth0/mtu says (VirtualBox and Parallels: 1500)
    nic_mtu: int = 1500
    #: how many times dockerd was (re)started
    engine_starts: int = 0
    #: the boot of its VM this guest was last reached in (GuestFarm.boot_id)
    boot: str = ""

    @property
    def engine_running(self) -> bool:
        return self.server is not None


class GuestFarm:
    """The guests of one test; its `connect` is a Home's ssh_factory."""

    def __init__(self, forward_works: ForwardCheck, docker_port: DockerPort, disk_mb: DiskSize | None = None) -> None:
        self.forward_works = forward_works
        self.docker_port = docker_port
        #: the VM's data disk size in MB, as its hypervisor has it: the guest's filesystem
        #: fills the disk (the guest grows it at boot), 20 GB when not given
        self.disk_mb = disk_mb or (lambda name: 20480)
        #: vm name -> something that changes with each boot of its VM; when given, a guest
        #: reached after a new boot lost its running dockerd, and starts the installed one
        #: as the real guest's boot does (`engine boot`)
        self.boot_id: Callable[[str], str] | None = None
        self.guests: dict[str, GuestState] = {}

    def space(self, name: str) -> tuple[int, int]:
        """`df -kP /mnt/data` of guest `name`: (size, free) in KiB."""
        size = self.disk_mb(name) * 1024
        used = self.guests[name].used_kb if name in self.guests else 0
        return size, max(0, size - used)

    def connect(self, target: SSHTarget) -> ScriptedGuest:
        state = self.guests.setdefault(target.machine, GuestState(target.machine))
        return ScriptedGuest(self, state, target)

    def stop(self) -> None:
        for state in self.guests.values():
            stop_engine(state)


class ScriptedGuest:
    """Duck-types machine.ssh.GuestSSH for the provisioner."""

    def __init__(self, farm: GuestFarm, state: GuestState, target: SSHTarget) -> None:
        self.farm = farm
        self.state = state
        self.target = target
        self.connected = False

    def _reachable(self) -> bool:
        return self.target.host == "127.0.0.1" and self.farm.forward_works(self.target.machine, "tcp", self.target.port, 22)

    def wait(self, timeout: float, on_failure: Callable[[], str] | None = None, booted: Callable[[], bool] | None = None) -> None:
        if booted is not None and not booted():
            raise SSHError(
                f"Machine '{self.target.machine}' never said it was ready on its console",
                f"Run `pymachine logs {self.target.machine}` to see its console",
            )
        if not self._reachable():
            raise SSHError(
                f"Machine '{self.target.machine}' did not answer SSH on {self.target.host}:{self.target.port} within {timeout:.0f}s (connection refused)",
                f"Run `pymachine logs {self.target.machine}` to see its console",
            )
        if self.target.user != "root" or not self.target.key_path.exists():
            raise SSHError(f"Machine '{self.target.machine}' refused pymachine's SSH key", f"Run `pymachine logs {self.target.machine}` to see the guest's console")
        self._boot()
        self.connected = True

    def _boot(self) -> None:
        if self.farm.boot_id is None:
            return
        boot = self.farm.boot_id(self.target.machine)
        state = self.state
        if state.boot == boot:
            return
        state.boot = boot
        stop_engine(state)
        state.engine_ran = False
        configured = state.engine_sha256 and f"{GUEST_STATE}/daemon.json" in state.files
        if configured and self.farm.space(state.name)[1] >= ENGINE_NEEDS_KB:
            start_engine(state, self.farm.docker_port(state.name))

    def connect(self) -> None:
        self.wait(10)

    def close(self) -> None:
        self.connected = False

    def __enter__(self) -> ScriptedGuest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, command: str, *, timeout: float = 60.0, check: bool = True, input: bytes | None = None) -> Result:
        if not self.connected:
            self.connect()
        self.state.commands.append(command)
        status, out, err = self._answer(command)
        result = Result(command, status, out, err)
        if check and status != 0:
            detail = (err.strip() or out.strip()).splitlines()
            raise SSHError(
                f"`{command[:57]}` failed in machine '{self.target.machine}' (exit {status}): {detail[-1] if detail else 'no output'}",
                f"Run `pymachine ssh {self.target.machine}` to look around",
            )
        return result

    def put(self, local: Path, remote: str, progress: Callable[[int, int], None] | None = None) -> None:
        data = Path(local).read_bytes()
        self.state.files[remote] = data
        if progress is not None:
            progress(len(data), len(data))

    def write(self, remote: str, data: bytes, mode: int = 0o644) -> None:
        self.state.files[remote] = data

    def write_many(self, files: dict[str, tuple[bytes, int]]) -> None:
        for remote, (data, _mode) in files.items():
            self.state.files[remote] = data

    # -- the guest's scripts ------------------------------------------------------------------

    def _answer(self, command: str) -> tuple[int, str, str]:
        state = self.state
        if command == FACTS_SCRIPT:
            sums = "".join(f"{hashlib.sha256(state.files[p]).hexdigest()}  {p}\n" for p in CONFIG_FILES if p in state.files)
            running = "running" if state.engine_running else "stopped"
            # As in the real guest: docker0 appears once dockerd has run.
            addresses = "eth0 10.0.2.15/24\n" + ("docker0 172.17.0.1/16\n" if state.engine_ran else "")
            size, free = self.farm.space(state.name)
            return 0, f"eth0\n--\n{addresses}--\n{state.engine_sha256}\n--\n{running}\n--\ndata\n--\n{sums}--\n{size} {free}\n--\n{state.nic_mtu}\n", ""
        if command.startswith(f"{ENGINE} install "):
            _, _, bundle, want = command.split()[:4]
            data = state.files.pop(bundle, None)
            if data is None:
                return 1, "", f"engine: no bundle at {bundle}\n"
            got = hashlib.sha256(data).hexdigest()
            if got != want.strip("'"):
                return 1, "", f"engine: bundle checksum mismatch: expected {want}, got {got}\n"
            state.engine_sha256 = got
            return 0, "", ""
        if command.startswith(f"mkdir -p {TLS_DIR}"):
            return 0, "", ""
        if command in (f"{ENGINE} start", f"{ENGINE} restart"):
            if command.endswith("restart"):
                stop_engine(state)
            if not state.engine_sha256:
                return 1, "", "engine: no engine installed: run `pymachine provision` on the host\n"
            if f"{GUEST_STATE}/daemon.json" not in state.files:
                return 1, "", "engine: no daemon config: run `pymachine provision` on the host\n"
            if self.farm.space(state.name)[1] < ENGINE_NEEDS_KB:
                # The supervisor starts, and dockerd dies at once, again and again.
                state.log.append("failed to start daemon: error initializing graphdriver: mkdir /var/lib/docker/overlay2: no space left on device")
                return 0, "", ""
            if not state.engine_running:
                start_engine(state, self.farm.docker_port(self.target.machine))
            return 0, "", ""
        if command == f"{ENGINE} stop":
            stop_engine(state)
            return 0, "", ""
        if command == f"{ENGINE} status":
            return 0, "running\n" if state.engine_running else "stopped\n", ""
        if command.startswith(f"{ENGINE} validate "):
            _, _, config, args = command.split()
            if not state.engine_sha256:
                return 1, "", "engine: no engine installed: run `pymachine provision` on the host\n"
            return dockerd_validate(state.files.get(config, b""), state.files.get(args, b""), config)
        if command.startswith(("mv -f ", "rm -f ")):
            for step in command.split(" && "):
                words = step.split()
                if words[:2] == ["mv", "-f"] and words[2] in state.files:
                    state.files[words[3]] = state.files.pop(words[2])
                elif words[:2] == ["rm", "-f"]:
                    for path in words[2:]:
                        state.files.pop(path, None)
                else:
                    return 1, "", f"{words[0]}: cannot stat '{words[2]}': No such file or directory\n"
            return 0, "", ""
        if command.startswith("tail -n 12 /var/log/docker.log"):
            return 0, "\n".join(state.log[-12:]) + "\n", ""
        name = command.split()[0] if command.split() else command
        return 127, "", f"sh: {name}: not found\n"


#: flag -> the daemon.json key it sets, for the flags whose key pymachine writes.
_FLAG_KEYS = {
    "label": "labels",
    "storage-driver": "storage-driver",
    "log-opt": "log-opts",
    "tlsverify": "tlsverify",
    "tls": "tls",
    "host": "hosts",
    "insecure-registry": "insecure-registries",
    "registry-mirror": "registry-mirrors",
    "mtu": "mtu",
    "default-network-opt": "default-network-opts",
}


def dockerd_validate(config: bytes, args: bytes, config_path: str) -> tuple[int, str, str]:
    """`engine validate`: dockerd --validate of Docker 26.1, its output on stdout (2>&1)."""
    import json

    from pymachine.engineoptions import DOCKERD_26_1

    known = DOCKERD_26_1.flags
    try:
        settings = json.loads(config)
    except ValueError as exc:
        return 1, f"unable to configure the Docker daemon with file {config_path}: {exc}\n", ""
    for arg in [a for a in args.decode().splitlines() if a]:
        name, sep, value = arg.lstrip("-").partition("=")
        if name not in known:
            return 1, f"Status: unknown flag: --{name}\nSee 'dockerd --help'., Code: 125\n", ""
        if known[name] and not sep:
            return 1, f"Status: flag needs an argument: --{name}\nSee 'dockerd --help'., Code: 125\n", ""
        if known[name] == "int" and not value.lstrip("-").isdigit():
            return 1, f'Status: invalid argument "{value}" for "--{name}" flag: strconv.ParseInt: parsing "{value}": invalid syntax\nSee \'dockerd --help\'., Code: 125\n', ""
        key = _FLAG_KEYS.get(name)
        if key in settings:
            return (
                1,
                f"unable to configure the Docker daemon with file {config_path}: the following directives are specified both as a flag and in the configuration file: {key}: (from flag: {value}, from file: {settings[key]})\n",
                "",
            )
    for label in settings.get("labels", []):
        if "=" not in label:
            return 1, f"unable to configure the Docker daemon with file {config_path}: merged configuration validation from file and command line flags failed: bad attribute format: {label}\n", ""
    return 0, "configuration OK\n", ""


def start_engine(state: GuestState, host_port: int) -> None:
    """dockerd answering /_ping over TLS on the host side of the Docker forward."""
    state.engine_ran = True
    state.engine_starts += 1
    state.tls_dir = tempfile.TemporaryDirectory(prefix="fake-guest-tls-")
    folder = Path(state.tls_dir.name)
    for name in ("ca.pem", "server.pem", "server-key.pem"):
        (folder / name).write_bytes(state.files[f"{TLS_DIR}/{name}"])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(folder / "server.pem", folder / "server-key.pem")
    context.load_verify_locations(folder / "ca.pem")
    context.verify_mode = ssl.CERT_REQUIRED
    server = http.server.ThreadingHTTPServer(("127.0.0.1", host_port), _Ping)
    server.daemon_threads = True
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, name=f"fake-dockerd-{state.name}", daemon=True)
    thread.start()
    state.server, state.thread = server, thread
    state.log.append(f"API listen on [::]:2376 (fake dockerd for {state.name})")


def stop_engine(state: GuestState) -> None:
    if state.server is not None:
        state.server.shutdown()
        state.server.server_close()
    if state.thread is not None:
        state.thread.join(timeout=10)
    if state.tls_dir is not None:
        state.tls_dir.cleanup()
    state.server = state.thread = state.tls_dir = None
