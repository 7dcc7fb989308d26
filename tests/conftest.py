"""Shared fixtures.

Live tests (marked `live`) boot real VMs under QEMU with the boot image from the
cache folder named by $PYMACHINE_CACHE_PATH (default ~/.cache/pymachine-test), which
`.ci/run` builds before the tests. Every guest runs with restrict=on: nothing it sends
leaves this host, and every host forward binds 127.0.0.1.
"""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

import pytest

from pymachine.home import Home
from pymachine.image import BootImage, manifest_name
from pymachine.progress import RecordingProgress

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = Path.home() / ".cache" / "pymachine-test"


def image_cache() -> Path:
    return Path(os.environ.get("PYMACHINE_CACHE_PATH") or DEFAULT_CACHE)


@pytest.fixture
def restored_logging():
    """run_cli points the root logger at the test's debug.log: put it back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)


@pytest.fixture
def home(tmp_path: Path) -> Home:
    """A Home on a fresh folder, sharing the boot image cache."""
    return Home(tmp_path / "home", progress=RecordingProgress(), cache=image_cache())


def load_image(arch: str) -> BootImage:
    """The built boot image of `arch`; live tests fail (not skip) without it, as CI builds both."""
    manifest = image_cache() / manifest_name(arch)
    if not manifest.exists():
        pytest.fail(f"no {arch} boot image in {image_cache()}: run `PYMACHINE_CACHE_PATH={image_cache()} pymachine image build --arch all`")
    return BootImage.from_manifest(manifest)


def make_rootfs(arch: str, folder: Path) -> Path:
    """A tarball of a tiny root filesystem (busybox) of `arch`, for `docker import`."""
    from .live import program

    tarball = folder / f"busybox-{arch}.tar"
    env = {**os.environ, "PYMACHINE_CACHE_PATH": str(image_cache()), "PYMACHINE": program("pymachine")}
    subprocess.run([str(ROOT / "scripts" / "busybox-rootfs.sh"), str(tarball), arch], check=True, env=env)
    return tarball


@pytest.fixture(scope="session")
def boot_image() -> BootImage:
    """The amd64 boot image (the architecture of this project's CI host)."""
    return load_image("amd64")


@pytest.fixture(scope="session")
def boot_image_arm64() -> BootImage:
    """The arm64 boot image (Apple Silicon's architecture), which runs here under TCG."""
    return load_image("arm64")


@pytest.fixture(scope="session")
def busybox_rootfs(tmp_path_factory: pytest.TempPathFactory, boot_image: BootImage) -> Path:
    """A tarball of a tiny amd64 root filesystem (busybox) for `docker import`: no registry needed."""
    return make_rootfs(boot_image.arch, tmp_path_factory.mktemp("rootfs"))


@pytest.fixture(scope="session", autouse=True)
def docker_config(tmp_path_factory: pytest.TempPathFactory):
    """Docker contexts made by tests land in a throwaway docker config, not the user's."""
    folder = tmp_path_factory.mktemp("docker-config")
    old = os.environ.get("DOCKER_CONFIG")
    os.environ["DOCKER_CONFIG"] = str(folder)
    for key in ("DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH"):
        os.environ.pop(key, None)
    yield folder
    if old is None:
        os.environ.pop("DOCKER_CONFIG", None)
    else:
        os.environ["DOCKER_CONFIG"] = old


@pytest.fixture
def watched(tmp_path: Path):
    """A forward watcher of machine "dev" over a RecordingDriver and a GuestShell, without a VM."""
    from pymachine.forwarding.watcher import ForwardWatcher
    from pymachine.store import Store

    from .fakes.watcher import GuestShell, RecordingDriver

    directory = tmp_path / "machines" / "dev"
    directory.mkdir(parents=True)
    driver, shell = RecordingDriver(), GuestShell()
    watcher = ForwardWatcher("dev", directory, driver, "127.0.0.1", lambda: shell, Store(tmp_path))  # type: ignore[arg-type]
    yield watcher, driver, shell
    watcher.close()
