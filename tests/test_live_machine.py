"""A real machine, end to end, through the `pymachine` and `docker` commands:
create, docker through `env`, stop and start, security, and rm leaving nothing.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from pymachine.procs import alive, read_pidfile

from .conftest import image_cache
from .contract import wait_for
from .live import CLI, program

pytestmark = [pytest.mark.live, pytest.mark.timeout(900)]
NAME = "e2e"


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory, boot_image, busybox_rootfs: Path, docker_config):
    cli = CLI(tmp_path_factory.mktemp("store"), image_cache())
    cli.rootfs = busybox_rootfs
    cli.shared = tmp_path_factory.mktemp("shared folder")  # a space in the path, as in "/Users/John Smith"
    cli.readonly = tmp_path_factory.mktemp("readonly")
    yield cli
    # Whatever a failed test left: no VM or watcher may outlive the module.
    cli.pm("rm", "-f", "-y", NAME, check=False)


def test_create_gives_a_working_docker(cli: CLI) -> None:
    created = cli.pm(
        "create", NAME, "-o", "restrict-network=true", "--memory", "1536",
        "--mount", str(cli.shared), "--mount", f"{cli.readonly}:/srv/readonly:ro",
    )
    assert "Waiting for SSH" in created.stderr and "Waiting for Docker" in created.stderr
    assert cli.pm("status", NAME).stdout.strip() == "Running"
    rows = json.loads(cli.pm("ls", "--format", "json").stdout)
    assert [(r["Name"], r["State"], r["Driver"]) for r in rows] == [(NAME, "Running", "qemu")]
    assert rows[0]["URL"].startswith("tcp://127.0.0.1:")
    # the console log shows the boot: the kernel's own messages, then pymachine's
    console = cli.pm("logs", NAME).stdout
    assert "Linux version" in console and "pymachine:" in console
    # `version NAME` and ls's DOCKER column give the same number (no Debian +dfsg1 suffix)
    assert "v" + cli.pm("version", NAME).stdout.strip() == rows[0]["Docker"]

    cli.docker(NAME, "import", str(cli.rootfs), "busybox-local:latest")
    out = cli.docker(NAME, "run", "--rm", "busybox-local", "echo", "hello from the guest").stdout
    assert out.strip() == "hello from the guest"
    info = json.loads(cli.docker(NAME, "info", "--format", "{{json .}}").stdout)
    assert "provider=qemu" in info["Labels"]
    assert info["OperatingSystem"].startswith("pymachine")


def test_memory_a_container_frees_goes_back_to_the_host(cli: CLI) -> None:
    """Free page reporting: 30 s after a container that held 1 GiB exits, the VM process
    is back within 256 MB of where it was before."""

    def host_memory() -> int:
        value = json.loads(cli.pm("inspect", NAME).stdout)["host_memory_mb"]
        assert isinstance(value, int) and value > 0
        return value

    before = host_memory()
    rows = json.loads(cli.pm("ls", "--format", "json").stdout)
    assert abs(rows[0]["HostMemoryMB"] - before) < 256
    # 1 GiB written to a tmpfs is 1 GiB of guest RAM until the container and its tmpfs go.
    container = cli.docker(
        NAME, "run", "-d", "--tmpfs", "/fill:size=1100m", "busybox-local", "sh", "-c", "dd if=/dev/zero of=/fill/f bs=1M count=1024 && sleep 4",
    ).stdout.strip()
    assert wait_for(lambda: host_memory() > before + 768, timeout=120, interval=0.5), "the container's 1 GiB never reached the host"
    cli.docker(NAME, "wait", container)
    cli.docker(NAME, "rm", container)
    deadline = time.monotonic() + 30
    while (now := host_memory()) > before + 256 and time.monotonic() < deadline:
        time.sleep(2)
    assert now <= before + 256, f"{before} MB before, still {now} MB 30 s after the container exited"


def test_host_folders_are_shared_for_bind_mounts(cli: CLI) -> None:
    """`docker run -v HOST-PATH:...` sees the host's folder: Docker resolves the path in
    the guest, where the share appears at the same path."""
    (cli.shared / "from-host.txt").write_text("written on the host\n")
    (cli.readonly / "data.txt").write_text("read only\n")
    out = cli.docker(
        NAME, "run", "--rm", "-v", f"{cli.shared}:/work", "-v", "/srv/readonly:/ro", "busybox-local", "sh", "-c",
        "cat /work/from-host.txt /ro/data.txt && echo made in a container > /work/from-container.txt && "
        "(touch /ro/nope 2>/dev/null && echo writable || echo refused)",
    ).stdout
    assert out.splitlines() == ["written on the host", "read only", "refused"]
    assert (cli.shared / "from-container.txt").read_text() == "made in a container\n"
    assert not (cli.readonly / "nope").exists()
    (cli.shared / "from-host.txt").write_text("changed on the host\n")
    again = cli.docker(NAME, "run", "--rm", "-v", f"{cli.shared}:/work", "busybox-local", "cat", "/work/from-host.txt").stdout
    assert again == "changed on the host\n", "the guest sees host edits at once"
    mounts = json.loads(cli.pm("inspect", NAME).stdout)["mounts"]
    assert mounts == [
        {"host": str(cli.shared), "guest": str(cli.shared), "writable": True},
        {"host": str(cli.readonly), "guest": "/srv/readonly", "writable": False},
    ]


def test_docker_context_and_config_flags(cli: CLI, boot_image) -> None:
    env = {k: v for k, v in cli.env.items() if not k.startswith("DOCKER_") or k == "DOCKER_CONFIG"}
    by_context = subprocess.run([program("docker"), "--context", f"pymachine-{NAME}", "images", "--format", "{{.Repository}}"], env=env, capture_output=True, text=True, check=True)
    assert "busybox-local" in by_context.stdout
    flags = cli.pm("config", NAME).stdout.split()
    by_flags = subprocess.run([program("docker"), *[f.replace('"', "") for f in flags], "version", "--format", "{{.Server.Version}}"], env=env, capture_output=True, text=True, check=True)
    assert by_flags.stdout.strip().startswith(boot_image.engine_version)
    cli.pm("use", NAME)
    assert cli.pm("active").stdout.strip() == NAME


def test_env_for_every_shell(cli: CLI) -> None:
    url = cli.pm("url", NAME).stdout.strip()
    fish = cli.pm("env", NAME, "--shell", "fish").stdout
    assert fish.count("set -gx DOCKER_") == 4
    # Where the host sets the CA bundle Python's requests reads (REQUESTS_CA_BUNDLE, else
    # CURL_CA_BUNDLE), env points that one variable at a bundle that also trusts the machine.
    read_by_requests = next((k for k in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE") if cli.env.get(k)), None)
    for key in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        assert (f"set -gx {key} " in fish) == (key == read_by_requests), fish
    bare = {k: v for k, v in cli.env.items() if k not in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")}
    plain = subprocess.run([program("pymachine"), "env", NAME, "--shell", "fish"], env=bare, capture_output=True, text=True, check=True)
    assert plain.stdout.count("set -gx") == 4, plain.stdout
    assert f"$Env:DOCKER_HOST = \"{url}\"" in cli.pm("env", NAME, "--shell", "powershell").stdout
    assert f"SET DOCKER_HOST={url}" in cli.pm("env", NAME, "--shell", "cmd").stdout
    assert "unset DOCKER_HOST" in cli.pm("env", "--unset").stdout
    assert cli.pm("ip", NAME).stdout.strip() == "127.0.0.1"


def test_ssh_scp_and_exit_codes(cli: CLI, tmp_path: Path) -> None:
    assert cli.pm("ssh", NAME, "--", "exit", "3", check=False).returncode == 3
    assert cli.pm("ssh", NAME, "uname -r").stdout.strip().endswith("amd64")
    source = tmp_path / "payload.bin"
    source.write_bytes(os.urandom(300_000))
    cli.pm("scp", str(source), f"{NAME}:/tmp/payload.bin")
    back = tmp_path / "back.bin"
    cli.pm("scp", f"{NAME}:/tmp/payload.bin", str(back))
    assert back.read_bytes() == source.read_bytes()
    missing = cli.pm("scp", f"{NAME}:/nonexistent/file", str(tmp_path / "x"), check=False)
    assert missing.returncode == 1
    assert missing.stderr == f"Error: No such file or folder: {NAME}:/nonexistent/file. Check the path with `pymachine ssh {NAME} ls -la /nonexistent`\n"


def test_start_of_a_running_machine_is_refused(cli: CLI) -> None:
    done = cli.pm("start", NAME, check=False)
    assert done.returncode == 1
    assert done.stderr.startswith("Error: Machine 'e2e' is already running")
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_a_client_without_the_client_certificate_is_refused(cli: CLI) -> None:
    port = int(cli.pm("url", NAME).stdout.strip().rsplit(":", 1)[1])
    certs = cli.machine_dir(NAME)
    context = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
            with context.wrap_socket(sock, server_hostname="127.0.0.1") as tls:
                tls.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
                if not tls.recv(100):
                    raise ConnectionResetError("closed without an answer")
    # And with the certificate the same request works.
    context.load_cert_chain(str(certs / "cert.pem"), str(certs / "key.pem"))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        with context.wrap_socket(sock, server_hostname="127.0.0.1") as tls:
            tls.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
            assert b"OK" in tls.recv(1000)


def test_ssh_refuses_a_host_key_mismatch(cli: CLI) -> None:
    pub = cli.machine_dir(NAME) / "ssh_host_ed25519_key.pub"
    original = pub.read_text()
    from pymachine.guest.certs import SSHKeyPair

    pub.write_text(SSHKeyPair.generate("other").public_line + "\n")
    try:
        done = cli.pm("ssh", NAME, "true", check=False)
        assert done.returncode == 1
        assert "host key differs" in done.stderr
    finally:
        pub.write_text(original)


def test_stop_and_start_keep_images_and_containers(cli: CLI) -> None:
    cli.docker(NAME, "create", "--name", "kept", "busybox-local", "true")
    cli.pm("stop", NAME)
    assert cli.pm("status", NAME).stdout.strip() == "Stopped"
    assert read_pidfile(cli.machine_dir(NAME) / "watcher.pid") is None, "the watcher stops with the machine"
    cli.pm("start", NAME)
    images = cli.docker(NAME, "images", "--format", "{{.Repository}}").stdout.split()
    assert "busybox-local" in images
    assert "kept" in cli.docker(NAME, "ps", "-a", "--format", "{{.Names}}").stdout.split()
    shared = cli.docker(NAME, "run", "--rm", "-v", f"{cli.shared}:/work", "busybox-local", "cat", "/work/from-container.txt").stdout
    assert shared == "made in a container\n", "the shared folder is mounted again after a restart"


def test_rm_leaves_nothing(cli: CLI) -> None:
    directory = cli.machine_dir(NAME)
    qemu = read_pidfile(directory / "qemu.pid")
    watcher = read_pidfile(directory / "watcher.pid")
    assert qemu and alive(qemu)
    cli.pm("rm", "-y", NAME)
    assert not directory.exists()
    assert wait_for(lambda: not alive(qemu), timeout=10)
    assert watcher is None or wait_for(lambda: not alive(watcher), timeout=10)
    contexts = subprocess.run([program("docker"), "context", "ls", "--format", "{{.Name}}"], env=cli.env, capture_output=True, text=True, check=True).stdout
    assert f"pymachine-{NAME}" not in contexts
    assert cli.pm("ls", "-q").stdout.strip() == ""


def test_interrupted_create_is_marked_error_and_cleaned_by_rm(cli: CLI) -> None:
    """Ctrl-C (SIGINT) or a kill (SIGTERM) in the middle of create leaves no VM running."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        name = f"cut{int(sig)}"
        proc = subprocess.Popen([program("pymachine"), "create", name, "-o", "restrict-network=true"], env=cli.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        pidfile = cli.machine_dir(name) / "qemu.pid"
        assert wait_for(lambda: read_pidfile(pidfile) is not None, timeout=60), "QEMU never started"
        qemu = read_pidfile(pidfile)
        time.sleep(1.0)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 1, err
        assert "interrupted" in err and f"pymachine rm -f {name}" in err
        assert "Traceback" not in err
        assert wait_for(lambda: not alive(qemu), timeout=15), "the VM process outlived the interrupted create"
        assert cli.pm("status", name).stdout.strip() == "Error"
        cli.pm("rm", "-f", "-y", name)
        assert not cli.machine_dir(name).exists()
