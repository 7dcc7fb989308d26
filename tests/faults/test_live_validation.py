"""Live: a real guest's dockerd checks the daemon config before it replaces the one in
use, and the built image records its dockerd's flags for `create` to check against."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pymachine.image import BootImage, manifest_name

from ..conftest import image_cache
from ..live import CLI

pytestmark = [pytest.mark.live, pytest.mark.timeout(900)]
NAME = "valid"


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory, boot_image):
    cli = CLI(tmp_path_factory.mktemp("store"), image_cache())
    yield cli
    cli.pm("rm", "-f", "-y", NAME, check=False)


def test_the_built_image_records_its_dockerd_flags(cli: CLI) -> None:
    image = BootImage.from_manifest(image_cache() / manifest_name("amd64"))
    assert image.dockerd is not None, "the build recorded no dockerd flags"
    assert image.dockerd.flags["dns"] == "ipSlice" and image.dockerd.shorthands["H"] == "host"
    refused = cli.pm("create", "never", "--engine-opt", "no-such-flag", check=False)
    assert refused.returncode == 1
    assert refused.stderr.splitlines()[-1].startswith(f"Error: --engine-opt 'no-such-flag': the image's dockerd {image.engine_version} has no flag --no-such-flag")
    assert not (cli.storage / "machines" / "never").exists()


def test_engine_settings_reach_dockerd_after_its_own_check(cli: CLI) -> None:
    cli.pm("create", NAME, "-o", "restrict-network=true", "--memory", "1024", "--no-mounts", "--engine-opt", "dns=192.0.2.53", "--engine-label", "env=test", timeout=600)
    info = json.loads(cli.docker(NAME, "info", "--format", "{{json .}}").stdout)
    assert "env=test" in info["Labels"]
    assert cli.pm("ssh", NAME, "cat", "/var/lib/pymachine/dockerd.args").stdout == "--dns=192.0.2.53\n"
    assert cli.pm("ssh", NAME, "ls /var/lib/pymachine/*.new 2>/dev/null; true").stdout == ""
    # The real engine script's check, on a config dockerd refuses and on the one in use.
    ok = cli.pm("ssh", NAME, "/usr/libexec/pymachine/engine validate /var/lib/pymachine/daemon.json /var/lib/pymachine/dockerd.args")
    assert "configuration OK" in ok.stdout


def test_a_config_dockerd_refuses_leaves_the_running_one(cli: CLI) -> None:
    config_path = Path(cli.machine_dir(NAME)) / "config.json"
    data = json.loads(config_path.read_text())
    data["engine_options"] = ["mtu=abc"]
    config_path.write_text(json.dumps(data))
    done = cli.pm("provision", NAME, check=False)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    line = done.stderr.splitlines()[-1]
    assert line.startswith(f'Error: dockerd refuses the engine settings of machine \'{NAME}\' (invalid argument "abc" for "--mtu" flag')
    assert line.endswith(f"Run `pymachine rm {NAME}` and create it again with other --engine-opt, --engine-label or --engine-registry-mirror values")
    assert cli.pm("ssh", NAME, "cat", "/var/lib/pymachine/dockerd.args").stdout == "--dns=192.0.2.53\n"
    assert cli.pm("ssh", NAME, "ls /var/lib/pymachine/*.new 2>/dev/null; true").stdout == ""
    assert cli.docker(NAME, "version", "--format", "{{.Server.Version}}").stdout.strip(), "dockerd kept running"


def test_rm_leaves_nothing(cli: CLI) -> None:
    cli.pm("rm", "-y", NAME)
    assert not cli.machine_dir(NAME).exists()
