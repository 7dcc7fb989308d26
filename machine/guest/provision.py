"""Provisioning over SSH: the Docker engine installed, secured with TLS, and answering.

    1. wait for SSH (host key pinned); on timeout, show the console's last lines
    2. install the engine bundle when the guest's differs: SFTP upload with progress,
       checksum verified in the guest, unpacked onto the data disk
    3. write the certificates, daemon.json and dockerd's extra flags
    4. (re)start dockerd under the guest's supervisor (it restarts dockerd if it dies)
    5. wait until /_ping answers over TLS from the host
The docker context is the caller's (pymachine.machine) last step.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pymachine.driver import Driver, State
from pymachine.errors import MachineStateError, SSHError
from pymachine.guest.certs import CertificateAuthority, CertPaths, server_needs_renewal
from pymachine.guest.dockerapi import DockerAPI
from pymachine.guest.ssh import GuestSSH
from pymachine.progress import Progress
from pymachine.store import MachineConfig

GUEST_STATE = "/var/lib/pymachine"
TLS_DIR = f"{GUEST_STATE}/tls"
ENGINE = "/usr/libexec/pymachine/engine"
#: The files `configure` writes; their sums in the guest tell whether anything changed.
CONFIG_FILES = [f"{TLS_DIR}/ca.pem", f"{TLS_DIR}/server.pem", f"{TLS_DIR}/server-key.pem", f"{GUEST_STATE}/daemon.json", f"{GUEST_STATE}/dockerd.args"]
SSH_TIMEOUT = 120.0
#: The guest's console line once SSH is up (iso/rootfs/etc/init.d/rcS).
READY_LINE = b"pymachine: ready"
#: How long a console without that line holds back the first SSH attempt.
CONSOLE_READY_WAIT = 30.0
DOCKER_TIMEOUT = 90.0


@dataclass(frozen=True)
class EngineBundle:
    """The Docker engine as the guest installs it: one zstd tarball and its sha256."""

    path: Path
    sha256: str
    version: str


@dataclass(frozen=True)
class GuestFacts:
    """What one SSH round trip tells about the guest."""

    addresses: list[str]
    engine_sha256: str
    engine_running: bool
    data_disk: bool
    #: sha256 of each config file pymachine writes, as the guest has it now
    config_sums: dict[str, str]


def tail(path: Path | None, lines: int = 15) -> str:
    """The last lines of a log, formatted to follow an error message."""
    if path is None or not path.exists():
        return ""
    text = path.read_text(errors="replace").strip().splitlines()[-lines:]
    if not text:
        return ""
    return "\n--- last console lines ---\n" + "\n".join(text) + "\n---"


def daemon_config(config: MachineConfig, driver_name: str) -> dict:
    """The daemon.json the guest's dockerd reads."""
    settings: dict = {
        "hosts": ["unix:///var/run/docker.sock", "tcp://0.0.0.0:2376"],
        "tls": True,
        "tlsverify": True,
        "tlscacert": f"{GUEST_STATE}/tls/ca.pem",
        "tlscert": f"{GUEST_STATE}/tls/server.pem",
        "tlskey": f"{GUEST_STATE}/tls/server-key.pem",
        "labels": [f"provider={driver_name}", f"pymachine.name={config.name}", *config.engine_labels],
        "storage-driver": "overlay2",
        "log-opts": {"max-size": "10m", "max-file": "3"},
    }
    if config.insecure_registries:
        settings["insecure-registries"] = list(config.insecure_registries)
    if config.registry_mirrors:
        settings["registry-mirrors"] = list(config.registry_mirrors)
    return settings


def engine_flags(engine_options: list[str]) -> list[str]:
    """`--engine-opt dns=1.1.1.1` (docker-machine's form) becomes dockerd's `--dns=1.1.1.1`."""
    flags = []
    for item in engine_options:
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("-")
        flags.append(f"--{key}={value}" if sep else f"--{key}")
    return flags


def console_ready(log: Path, patience: float = CONSOLE_READY_WAIT) -> Callable[[], bool]:
    """A check that the guest's console (this boot's serial log) shows the ready line.

    A console that stays silent (a hypervisor that writes it late, another image)
    holds SSH back for `patience` seconds at most; connections are tried after that.
    """
    give_up = time.monotonic() + patience

    def booted() -> bool:
        if time.monotonic() > give_up:
            return True
        try:
            with open(log, "rb") as handle:
                return READY_LINE in handle.read()
        except OSError:
            return False

    return booted


class Provisioner:
    """Runs the provisioning steps for one machine."""

    def __init__(self, config: MachineConfig, directory: Path, driver: Driver, ssh: GuestSSH, ca: CertificateAuthority, progress: Progress) -> None:
        self.config = config
        self.directory = directory
        self.driver = driver
        self.ssh = ssh
        self.ca = ca
        self.progress = progress
        self.certs = CertPaths(directory)

    def wait_for_ssh(self, timeout: float = SSH_TIMEOUT) -> None:
        with self.progress.step("Waiting for SSH"):
            log = self.driver.serial_log()
            self.ssh.wait(timeout, on_failure=lambda: tail(log), booted=self._still_running(console_ready(log) if log else lambda: True))

    def _still_running(self, booted: Callable[[], bool]) -> Callable[[], bool]:
        """`booted`, failing at once (not after the SSH timeout) if the VM stops meanwhile,
        as a guest that cannot run under the chosen accelerator does."""
        name = self.config.name
        checked = [time.monotonic()]

        def check() -> bool:
            if time.monotonic() - checked[0] >= 1.0:
                checked[0] = time.monotonic()
                if self.driver.state() in (State.STOPPED, State.NOT_FOUND):
                    raise MachineStateError(f"The VM of machine '{name}' stopped while it was booting", f"Run `pymachine logs {name}` to see how far it got")
            return booted()

        return check

    def facts(self) -> GuestFacts:
        script = (
            f"ip -4 -o addr show scope global | awk '{{print $4}}' | cut -d/ -f1; echo --; "
            f"{ENGINE} version; echo --; {ENGINE} status; echo --; "
            "grep -q ' /mnt/data ' /proc/mounts && echo data || echo ram; echo --; "
            f"sha256sum {' '.join(CONFIG_FILES)} 2>/dev/null; true"
        )
        out = self.ssh.run(script, timeout=30).stdout
        parts = [p.strip() for p in out.split("--")]
        while len(parts) < 5:
            parts.append("")
        sums = {}
        for line in parts[4].splitlines():
            digest, _, path = line.strip().partition("  ")
            if path:
                sums[path] = digest
        return GuestFacts(
            addresses=[a for a in parts[0].split() if a],
            engine_sha256=parts[1].strip(),
            engine_running=parts[2].strip() == "running",
            data_disk=parts[3].strip() == "data",
            config_sums=sums,
        )

    def install_engine(self, engine: EngineBundle, facts: GuestFacts, force: bool = False) -> bool:
        """Upload and unpack the bundle unless the guest has this very one; True if installed."""
        if not force and facts.engine_sha256 == engine.sha256:
            return False
        remote = f"{GUEST_STATE}/engine-upload.tar.zst"
        size = engine.path.stat().st_size
        with self.progress.step(f"Uploading Docker engine {engine.version} ({size / 1e6:.0f} MB)"):
            report = self.progress.transfer("Uploading the engine bundle", size)
            self.ssh.put(engine.path, remote, progress=report)
        with self.progress.step("Installing the engine"):
            self.ssh.run(f"{ENGINE} install {remote} {shlex.quote(engine.sha256)}", timeout=300)
        return True

    def configure(self, facts: GuestFacts, driver_name: str, regenerate: bool = False) -> bool:
        """Certificates, daemon.json and dockerd's flags, written into the guest when they
        differ from what it has; True if anything changed (dockerd must then restart)."""
        with self.progress.step("Configuring TLS and the daemon"):
            self.ca.ensure()
            if regenerate or server_needs_renewal(self.certs, facts.addresses, self.ca):
                self.ca.issue_server(self.certs, self.config.name, facts.addresses)
            else:
                self.ca.copy_client(self.certs)
            flags = engine_flags(self.config.engine_options)
            files = {
                f"{TLS_DIR}/ca.pem": (self.certs.ca.read_bytes(), 0o644),
                f"{TLS_DIR}/server.pem": (self.certs.server_cert.read_bytes(), 0o644),
                f"{TLS_DIR}/server-key.pem": (self.certs.server_key.read_bytes(), 0o600),
                f"{GUEST_STATE}/daemon.json": (json.dumps(daemon_config(self.config, driver_name), indent=2).encode(), 0o644),
                f"{GUEST_STATE}/dockerd.args": (("\n".join(flags) + "\n").encode() if flags else b"", 0o644),
            }
            changed = {path: item for path, item in files.items() if facts.config_sums.get(path) != hashlib.sha256(item[0]).hexdigest()}
            if not changed:
                return False
            self.ssh.run(f"mkdir -p {TLS_DIR} && chmod 700 {TLS_DIR}", timeout=30)
            self.ssh.write_many(changed)
            return True

    def start_engine(self, restart: bool) -> None:
        with self.progress.step("Starting the Docker daemon"):
            self.ssh.run(f"{ENGINE} {'restart' if restart else 'start'}", timeout=60)

    def wait_for_docker(self, timeout: float = DOCKER_TIMEOUT) -> None:
        endpoint = self.driver.docker_endpoint()
        api = DockerAPI(endpoint.host, endpoint.port, self.certs)
        try:
            with self.progress.step("Waiting for Docker"):
                api.wait_ready(timeout, on_failure=self._docker_log_tail)
        finally:
            api.close()

    def _docker_log_tail(self) -> str:
        try:
            out = self.ssh.run("tail -n 12 /var/log/docker.log", timeout=15, check=False).stdout.strip()
        except SSHError:
            return ""
        return f"\n--- last lines of the guest's /var/log/docker.log ---\n{out}\n---" if out else ""

    def run(self, engine: EngineBundle | None, driver_name: str, *, reinstall: bool = False, regenerate: bool = False) -> GuestFacts:
        """All steps, from a booted VM to a daemon answering over TLS; `engine` None keeps
        the guest's installed engine."""
        self.wait_for_ssh()
        facts = self.facts()
        installed = False
        if engine is not None:
            installed = self.install_engine(engine, facts, force=reinstall)
        changed = self.configure(facts, driver_name, regenerate=regenerate)
        self.start_engine(restart=facts.engine_running and (installed or changed))
        self.wait_for_docker()
        return facts
