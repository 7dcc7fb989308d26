"""Provisioning over SSH: the Docker engine installed, secured with TLS, and answering.

    1. wait for SSH (host key pinned); on timeout, show the console's last lines
    2. install the engine bundle when the guest's differs: SFTP upload with progress,
       checksum verified in the guest, unpacked onto the data disk
    3. write the certificates, daemon.json and dockerd's extra flags; the last two are
       written beside the ones in use and checked by dockerd itself (`--validate`)
       before they replace them, so a configuration dockerd refuses never replaces
       one it runs with
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
from pymachine.errors import ConfigRefused, DataDiskFull, EngineFailed, MachineError, MachineStateError, SSHError
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
#: The two files dockerd's own check reads; staged as FILE.new until it passes.
DAEMON_FILES = (f"{GUEST_STATE}/daemon.json", f"{GUEST_STATE}/dockerd.args")
#: What the engine script answers for a subcommand it does not know (images before `validate`).
ENGINE_USAGE = "engine: usage:"
SSH_TIMEOUT = 120.0
#: The guest's console line once SSH is up (iso/rootfs/etc/init.d/rcS).
READY_LINE = b"pymachine: ready"
#: How long a console without that line holds back the first SSH attempt.
CONSOLE_READY_WAIT = 30.0
DOCKER_TIMEOUT = 90.0
#: Less room than this on the data disk, and dockerd cannot be counted on to start or write.
FULL_BELOW_KB = 64 * 1024
#: What the guest's console says at boot when the data disk is full (iso/rootfs/etc/init.d/rcS).
FULL_DISK_LINE = b"pymachine: the data disk "
#: Interfaces the engine makes in the guest (docker0, user bridges br-*, containers' veths).
ENGINE_INTERFACES = ("docker", "br-", "veth")
#: Where the guest's boot names the NIC it configured (iso/rootfs/etc/init.d/rcS).
NIC_FILE = "/run/pymachine/nic"
#: One SSH round trip for every fact provisioning needs, in sections split by "--" lines:
#: the NIC, every interface's IPv4 addresses, the engine's bundle and state, whether the
#: data disk is mounted, the config files' sums, the data disk's size and free KiB.
FACTS_SCRIPT = (
    f"cat {NIC_FILE} 2>/dev/null; echo --; "
    "ip -4 -o addr show scope global | awk '{print $2, $4}'; echo --; "
    f"{ENGINE} version; echo --; {ENGINE} status; echo --; "
    "grep -q ' /mnt/data ' /proc/mounts && echo data || echo ram; echo --; "
    f"sha256sum {' '.join(CONFIG_FILES)} 2>/dev/null; echo --; "
    "df -kP /mnt/data 2>/dev/null | awk 'NR == 2 {print $2, $4}'; echo --; "
    f"cat /sys/class/net/$(cat {NIC_FILE} 2>/dev/null)/mtu 2>/dev/null; true"
)


@dataclass(frozen=True)
class EngineBundle:
    """The Docker engine as the guest installs it: one zstd tarball and its sha256."""

    path: Path
    sha256: str
    version: str


@dataclass(frozen=True)
class GuestFacts:
    """What one SSH round trip tells about the guest."""

    #: the IPv4 addresses of the guest's own NIC (the server certificate's SANs)
    addresses: list[str]
    engine_sha256: str
    engine_running: bool
    data_disk: bool
    #: sha256 of each config file pymachine writes, as the guest has it now
    config_sums: dict[str, str]
    #: the data disk's filesystem: its size and what is free, in KiB (0: unknown)
    data_kb: int = 0
    free_kb: int = 0
    #: the MTU the guest's NIC has (0: unknown); below the machine's guest_mtu when the
    #: guest could not set up large frames at boot
    nic_mtu: int = 0

    @property
    def data_disk_full(self) -> bool:
        """True when the data disk has too little room for dockerd to start or write."""
        return self.data_disk and self.data_kb > 0 and self.free_kb < FULL_BELOW_KB


def nic_addresses(nic: str, lines: str) -> list[str]:
    """The IPv4 addresses of `nic` among `IFACE ADDRESS` lines (`ip -4 -o addr show`).

    Only the NIC pymachine configured counts: docker0, Docker's other bridges and the
    containers' veths come and go with the engine, and a server certificate that named
    them would be reissued (and dockerd restarted) whenever they change. A guest that
    does not say which NIC it configured (an older image) is read without those."""
    pairs = [line.split()[:2] for line in lines.splitlines() if len(line.split()) >= 2]
    if nic:
        chosen = [address for iface, address in pairs if iface == nic]
    else:
        chosen = [address for iface, address in pairs if not iface.startswith(ENGINE_INTERFACES)]
    return [address.split("/")[0] for address in chosen]


def full_disk_error(name: str, facts: GuestFacts, cause: str = "") -> DataDiskFull:
    """The one line that says the data disk is full, and what to run."""
    size_gb = facts.data_kb / 1024 / 1024
    bigger = max(2, int(size_gb * 2 + 0.999))
    free = f"{facts.free_kb // 1024} MB free of {size_gb:.1f} GB"
    why = f" ({cause})" if cause else ""
    if facts.engine_running:
        fix = f"Free space with `docker --context pymachine-{name} system prune -a`, or grow the disk with `pymachine disk grow {name} {bigger}G`; then run `pymachine provision {name}`"
    else:
        fix = f"Run `pymachine disk grow {name} {bigger}G` (or free space in /var/lib/docker over `pymachine ssh {name}`), then `pymachine provision {name}`"
    return DataDiskFull(f"The data disk of machine '{name}' is full ({free}){why}, so Docker cannot run; the VM is left running", fix)


def grow_filesystem(ssh: GuestSSH, size_mb: int) -> int:
    """Grow the mounted data disk's ext4 to its device's new size (online); its new size in
    KiB. Waits for the guest's kernel to see a disk the hypervisor has just grown."""
    sectors = size_mb * 2048
    script = (
        "dev=$(awk '$2 == \"/mnt/data\" {print $1}' /proc/mounts); "
        '[ -n "$dev" ] || { echo "no data disk is mounted at /mnt/data" >&2; exit 1; }; '
        "name=${dev#/dev/}; i=0; "
        f'while [ "$(cat /sys/class/block/$name/size)" -lt {sectors} ] && [ $i -lt 100 ]; do usleep 100000; i=$((i + 1)); done; '
        'resize2fs "$dev" >/dev/null 2>&1 || resize2fs "$dev"; '
        "df -kP /mnt/data | awk 'NR == 2 {print $2}'"
    )
    out = ssh.run(script, timeout=300).stdout.split()
    return int(out[-1]) if out and out[-1].isdigit() else 0


def tail(path: Path | None, lines: int = 15) -> str:
    """The last lines of a log, formatted to follow an error message."""
    if path is None or not path.exists():
        return ""
    text = path.read_text(errors="replace").strip().splitlines()[-lines:]
    if not text:
        return ""
    return "\n--- last console lines ---\n" + "\n".join(text) + "\n---"


def daemon_config(config: MachineConfig, driver_name: str, nic_mtu: int = 0) -> dict:
    """The daemon.json the guest's dockerd reads. `nic_mtu` is the MTU the guest's NIC
    really has (0: unknown); the containers' never exceeds it."""
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
    mtu = min(config.guest_mtu, nic_mtu) if nic_mtu else config.guest_mtu
    if mtu > 1500:
        # Containers' interfaces take the NIC's MTU, on the default bridge and on the networks
        # compose creates, unless the user's --engine-opt sets either (dockerd refuses a key
        # given twice). A guest whose boot fell back to 1500 (its console says why) gets
        # Docker's defaults, so containers never send frames larger than the NIC's.
        given = {engine_option_key(item) for item in config.engine_options}
        if "mtu" not in given:
            settings["mtu"] = mtu
        if "default-network-opt" not in given:
            settings["default-network-opts"] = {"bridge": {"com.docker.network.driver.mtu": str(mtu)}}
    return settings


def engine_option_key(item: str) -> str:
    """The dockerd flag an `--engine-opt` names: "dns" for `dns=1.1.1.1` or `--dns=1.1.1.1`."""
    return item.partition("=")[0].strip().lstrip("-")


def engine_flags(engine_options: list[str]) -> list[str]:
    """`--engine-opt dns=1.1.1.1` (docker-machine's form) becomes dockerd's `--dns=1.1.1.1`."""
    flags = []
    for item in engine_options:
        _, sep, value = item.partition("=")
        key = engine_option_key(item)
        flags.append(f"--{key}={value}" if sep else f"--{key}")
    return flags


def dockerd_complaint(output: str) -> str:
    """The reason in what `dockerd --validate` printed, without its framing."""
    for line in output.splitlines():
        line = line.strip()
        if not line or line.startswith("See 'dockerd --help'") or line == "configuration OK":
            continue
        line = line.removeprefix("Status: ")
        if line.startswith("unable to configure the Docker daemon with file "):
            line = line.split(": ", 1)[-1]
        return line.removeprefix("merged configuration validation from file and command line flags failed: ").rstrip(".")
    return "no reason given"


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


def console_says_disk_full(log: Path) -> bool:
    """True if this boot's console has the guest's line about a full data disk."""
    try:
        with open(log, "rb") as handle:
            return FULL_DISK_LINE in handle.read()
    except OSError:
        return False


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
        out = self.ssh.run(FACTS_SCRIPT, timeout=30).stdout
        parts = [""]
        for line in out.splitlines():
            if line.strip() == "--":
                parts.append("")
            else:
                parts[-1] += line + "\n"
        parts = [p.strip() for p in parts]
        while len(parts) < 8:
            parts.append("")
        sums = {}
        for line in parts[5].splitlines():
            digest, _, path = line.strip().partition("  ")
            if path:
                sums[path] = digest
        space = [int(n) for n in parts[6].split() if n.isdigit()]
        data_kb, free_kb = (space[0], space[1]) if len(space) >= 2 else (0, 0)
        return GuestFacts(
            addresses=nic_addresses(parts[0].strip(), parts[1]),
            engine_sha256=parts[2].strip(),
            engine_running=parts[3].strip() == "running",
            data_disk=parts[4].strip() == "data",
            config_sums=sums,
            data_kb=data_kb,
            free_kb=free_kb,
            nic_mtu=int(parts[7]) if parts[7].isdigit() else 0,
        )

    def check_room(self, cause: Exception | None = None) -> None:
        """Raise DataDiskFull when the data disk is full (after `cause`, a failed step,
        only if the disk explains it)."""
        try:
            facts = self.facts()
        except SSHError:
            return
        if facts.data_disk_full:
            detail = str(cause).splitlines()[0][:120] if cause is not None else ""
            raise full_disk_error(self.config.name, facts, detail)

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
                f"{GUEST_STATE}/daemon.json": (json.dumps(daemon_config(self.config, driver_name, facts.nic_mtu), indent=2).encode(), 0o644),
                f"{GUEST_STATE}/dockerd.args": (("\n".join(flags) + "\n").encode() if flags else b"", 0o644),
            }
            changed = {path: item for path, item in files.items() if facts.config_sums.get(path) != hashlib.sha256(item[0]).hexdigest()}
            if not changed:
                return False
            self.ssh.run(f"mkdir -p {TLS_DIR} && chmod 700 {TLS_DIR}", timeout=30)
            if not any(path in changed for path in DAEMON_FILES):
                self.ssh.write_many(changed)
                return True
            # The certificates first: dockerd's check loads them too.
            staged = {f"{path}.new": files[path] for path in DAEMON_FILES}
            self.ssh.write_many({**{p: item for p, item in changed.items() if p not in DAEMON_FILES}, **staged})
            self.validate_daemon_config()
            self.ssh.run(" && ".join(f"mv -f {path}.new {path}" for path in DAEMON_FILES), timeout=30)
            return True

    def validate_daemon_config(self) -> None:
        """dockerd's own check of the staged daemon.json and flags; on a refusal the
        staged files are removed and the ones in use stay."""
        config, args = (f"{path}.new" for path in DAEMON_FILES)
        done = self.ssh.run(f"{ENGINE} validate {config} {args}", timeout=120, check=False)
        if done.returncode == 0:
            return
        output = f"{done.stdout}\n{done.stderr}"
        if ENGINE_USAGE in output:
            return  # an image from before `engine validate`: dockerd checks at start, as it did
        self.ssh.run(f"rm -f {config} {args}", timeout=30, check=False)
        name = self.config.name
        raise ConfigRefused(
            f"dockerd refuses the engine settings of machine '{name}' ({dockerd_complaint(output)}); the daemon config in use was left as it was",
            f"Run `pymachine rm {name}` and create it again with other --engine-opt, --engine-label or --engine-registry-mirror values",
        )

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
        the guest's installed engine.

        Once SSH answers, a failure is an EngineFailed (DataDiskFull when the data disk is
        the reason): the guest is reachable, so the caller keeps it running."""
        self.wait_for_ssh()
        try:
            facts = self.facts()
            if facts.data_disk_full:
                raise full_disk_error(self.config.name, facts)
            installed = False
            if engine is not None:
                installed = self.install_engine(engine, facts, force=reinstall)
            changed = self.configure(facts, driver_name, regenerate=regenerate)
            self.start_engine(restart=facts.engine_running and (installed or changed))
            self.wait_for_docker()
        except (EngineFailed, ConfigRefused):
            raise
        except MachineError as exc:
            self.check_room(exc)
            raise EngineFailed(exc.message, exc.hint) from exc
        return facts
