"""The release: scripts/dist.sh's wheels, installed as a Mac user would install them.

- Installed from the wheels alone into a fresh virtualenv, on a host whose apt-get,
  apt-cache, dpkg and dpkg-deb all fail, `pymachine create` boots the installed image and
  a container's published port answers on the host. The wheels come from dist/, their
  dependencies from the wheels setup.sh downloaded from PyPI (the tests run with no
  network).
- For each Mac (Apple Silicon, Intel) the dependency markers pick the image of its own
  architecture, evaluated with `packaging` for that Mac's environment.
- The GitHub workflows validate against GitHub's published schema.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import parse_wheel_filename

from pymachine import __version__
from pymachine.iso.dist import wheel_name

from .conftest import ROOT, image_cache
from .live import free_port, http_get

MACS = {
    "Apple Silicon": {"platform_machine": "arm64", "sys_platform": "darwin", "platform_system": "Darwin", "os_name": "posix"},
    "Intel Mac": {"platform_machine": "x86_64", "sys_platform": "darwin", "platform_system": "Darwin", "os_name": "posix"},
    "arm64 Linux": {"platform_machine": "aarch64", "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix"},
    "x86-64 Linux": {"platform_machine": "x86_64", "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix"},
}
EXPECTED = {"Apple Silicon": "arm64", "Intel Mac": "amd64", "arm64 Linux": "arm64", "x86-64 Linux": "amd64"}


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """scripts/dist.sh's output, from the images the tests' cache already holds."""
    out = tmp_path_factory.mktemp("dist")
    env = {**os.environ, "PYMACHINE_CACHE_PATH": str(image_cache())}
    done = subprocess.run([str(ROOT / "scripts" / "dist.sh"), str(out)], env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def requirements_of(wheel: Path) -> list[Requirement]:
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(archive.read(name).decode())
    return [Requirement(r) for r in metadata.get_all("Requires-Dist") or []]


@pytest.mark.live
def test_dist_builds_three_wheels_under_the_size_limit(dist: Path) -> None:
    names = sorted(p.name for p in dist.glob("*.whl"))
    assert names == sorted([f"pymachine_vm-{__version__}-py3-none-any.whl", wheel_name("amd64"), wheel_name("arm64")])
    for wheel in dist.glob("*.whl"):
        assert wheel.stat().st_size < 90_000_000, f"{wheel.name} is too big for PyPI"
        with zipfile.ZipFile(wheel) as archive:
            tops = {n.split("/", 1)[0] for n in archive.namelist() if ".dist-info/" not in n}
        assert tops == {"pymachine"}, f"{wheel.name} claims {tops}"


@pytest.mark.live
@pytest.mark.parametrize("mac", sorted(MACS))
def test_each_host_gets_the_image_of_its_own_architecture(dist: Path, mac: str) -> None:
    """pip evaluates pymachine-vm's markers on the target; `pip download --platform` would not."""
    environment = {**default_environment(), **MACS[mac]}
    wanted = [r for r in requirements_of(dist / f"pymachine_vm-{__version__}-py3-none-any.whl") if r.name.startswith("pymachine-vm-image-")]
    chosen = [r for r in wanted if r.marker is None or r.marker.evaluate(environment)]
    assert [r.name for r in chosen] == [f"pymachine-vm-image-{EXPECTED[mac]}"]
    assert str(chosen[0].specifier) == f"=={__version__}", "the image is pinned to pymachine's own version"
    # The image wheel installs on any platform (its tag is py3-none-any), so nothing but
    # the marker decides, and a user can add the other architecture's by hand.
    _, version, _, tags = parse_wheel_filename(wheel_name(EXPECTED[mac]))
    assert str(version) == __version__ and {str(t) for t in tags} == {"py3-none-any"}


@pytest.mark.live
@pytest.mark.timeout(1200)
def test_install_and_create_with_no_apt_anywhere(dist: Path, tmp_path: Path, busybox_rootfs: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    wheelhouse = ROOT / ".venv" / "wheelhouse"
    assert wheelhouse.is_dir(), "scripts/setup.sh downloads the dependencies' wheels there"
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-index", "--find-links", str(dist), "--find-links", str(wheelhouse)]
    subprocess.run([*pip, "pymachine-vm"], check=True, timeout=600)
    site = next((venv / "lib").glob("python3.*/site-packages"))
    ours = {p.name for p in site.iterdir() if "pymachine" in p.name.lower()}
    assert ours == {"pymachine", f"pymachine_vm-{__version__}.dist-info", f"pymachine_vm_image_amd64-{__version__}.dist-info"}
    assert (site / "pymachine" / "images" / "amd64" / f"pymachine-{__version__}-amd64.iso").is_file()

    home = tmp_path / "home"
    home.mkdir()
    port = free_port()
    failing = tmp_path / "no-such-tool"
    failing.write_text("#!/bin/sh\necho \"$0: not on this host\" >&2\nexit 127\n")
    failing.chmod(0o755)
    hidden = [shutil.which(tool) for tool in ("apt-get", "apt-cache", "dpkg", "dpkg-deb")]
    script = f"""
set -eu
for tool in {" ".join(t for t in hidden if t)}; do mount --bind {failing} "$tool"; done
apt-get --version >/dev/null 2>&1 && {{ echo "apt-get still works" >&2; exit 3; }}
export HOME={home} PATH={venv / "bin"}:{Path(shutil.which("docker") or "/usr/local/bin/docker").parent}:/usr/sbin:/usr/bin:/sbin:/bin
unset PYMACHINE_STORAGE_PATH PYMACHINE_CACHE_PATH DOCKER_HOST DOCKER_CERT_PATH DOCKER_TLS_VERIFY
export DOCKER_CONFIG={home}/.docker
cd {tmp_path}
pymachine image ls --format json > {tmp_path}/images.json
pymachine create dev -o restrict-network=true
eval "$(pymachine env dev)"
docker import {busybox_rootfs} busybox-local >/dev/null
docker run -d -p {port}:80 busybox-local httpd -f -p 80 -h /www >/dev/null
"""
    try:
        done = subprocess.run(["unshare", "-m", "bash", "-c", script], capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        images = json.loads((tmp_path / "images.json").read_text())
        chosen = [row for row in images if row["Chosen"]]
        assert [(r["Arch"], r["Source"]) for r in chosen] == [("amd64", "installed")]
        answer = None
        for _ in range(50):
            answer = http_get(port)
            if answer:
                break
            subprocess.run(["sleep", "0.2"])
        assert answer and "hello from a container" in answer
    finally:
        env = {**os.environ, "HOME": str(home)}
        env.pop("PYMACHINE_STORAGE_PATH", None)
        subprocess.run([str(venv / "bin" / "pymachine"), "rm", "-f", "-y", "dev"], env=env, capture_output=True, timeout=300)


def test_the_workflows_are_valid_github_workflows() -> None:
    workflows = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
    assert {p.name for p in workflows} == {"ci.yml", "release.yml"}
    done = subprocess.run(
        [str(Path(sys.executable).parent / "check-jsonschema"), "--builtin-schema", "vendor.github-workflows", *map(str, workflows)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    ci = (ROOT / ".github" / "workflows" / "ci.yml").read_text()
    assert "run: ./scripts/test.sh" in ci, "CI runs the README's test command"
    assert "./scripts/test.sh" in (ROOT / "README.md").read_text()
    release = (ROOT / ".github" / "workflows" / "release.yml").read_text()
    assert "image: debian:13" in release and "scripts/dist.sh" in release and "id-token: write" in release
