"""--engine-* checks: dockerd's flag list (parsed from its --help, recorded by the image
build, committed for Docker 26.1) and the rules for labels, mirrors and registries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pymachine.arch import host_arch
from pymachine.engineoptions import DOCKERD_26_1, DockerdFlags, check_engine_flags, check_engine_settings, parse_dockerd_help
from pymachine.errors import MachineError
from pymachine.image import BootImage, manifest_name
from pymachine.iso import recipe
from pymachine.iso.build import ImageBuilder, LockedPackage
from pymachine.runner import Runner

FIXTURE = Path(__file__).parent / "fixtures" / "dockerd-26.1.5-help.txt"


def test_the_committed_list_is_dockerd_26_1s_own_help() -> None:
    """The fallback list is what Debian's dockerd 26.1.5 prints, not a hand-made one."""
    parsed = parse_dockerd_help(FIXTURE.read_text())
    assert dict(parsed.flags) == dict(DOCKERD_26_1.flags)
    assert dict(parsed.shorthands) == dict(DOCKERD_26_1.shorthands)


def test_parse_dockerd_help_reads_types_switches_and_shorthands() -> None:
    parsed = parse_dockerd_help(FIXTURE.read_text())
    assert len(parsed.flags) == 85
    assert parsed.flags["debug"] == "" and parsed.flags["dns"] == "ipSlice" and parsed.flags["mtu"] == "int"
    assert parsed.flags["default-address-pool"] == "pool-options"
    assert parsed.flags["cri-containerd"] == "", "a switch whose description starts in lower case"
    assert parsed.shorthands == {"b": "bridge", "D": "debug", "G": "group", "H": "host", "l": "log-level", "p": "pidfile", "s": "storage-driver", "v": "version"}
    # "--tlsverify" also appears in a wrapped description line: it is a switch, once.
    assert parsed.flags["tlsverify"] == "" and parsed.flags["tls"] == ""


@pytest.mark.parametrize("item", ["dns=1.1.1.1", "--dns=1.1.1.1", "debug", "mtu=1400", "default-address-pool=base=10.10.0.0/16,size=24", "data-root=/mnt/data/x"])
def test_flags_dockerd_knows_pass(item: str) -> None:
    check_engine_settings([item], [], [], [])
    check_engine_flags([item], DOCKERD_26_1)


@pytest.mark.parametrize("mirror", ["https://mirror.example", "http://10.0.0.5:5000/", "https://[::1]:5000"])
def test_mirrors_dockerd_takes_pass(mirror: str) -> None:
    check_engine_settings([], [], [mirror], [])


@pytest.mark.parametrize("registry", ["registry.local:5000", "10.0.0.0/8", "[::1]:5000"])
def test_insecure_registries_dockerd_takes_pass(registry: str) -> None:
    check_engine_settings([], [], [], [registry])


def test_labels_dockerd_takes_pass() -> None:
    check_engine_settings([], ["env=test", "empty=", "a=b=c", "same=1", "same=1"], [], [])


def test_manifest_round_trip_and_damaged_lists() -> None:
    flags = DockerdFlags({"debug": "", "dns": "ipSlice"}, {"D": "debug"})
    again = DockerdFlags.from_manifest(json.loads(json.dumps(flags.as_manifest())), "x")
    assert again is not None and dict(again.flags) == dict(flags.flags) and dict(again.shorthands) == {"D": "debug"}
    for damaged in (None, [], {"flags": []}, {"flags": {}}, "flags"):
        assert DockerdFlags.from_manifest(damaged, "x") is None


def test_an_image_without_a_list_falls_back_to_docker_26_1(tmp_path: Path) -> None:
    (tmp_path / "boot.iso").write_bytes(b"x")
    manifest = {"version": "0.1.0", "arch": "amd64", "artifacts": {"iso": {"file": "boot.iso"}, "engine": {"file": "e", "sha256": "0", "version": "26.1.5"}}}
    (tmp_path / manifest_name("amd64")).write_text(json.dumps(manifest))
    image = BootImage.from_manifest(tmp_path / manifest_name("amd64"))
    assert image.dockerd is None and image.dockerd_flags is DOCKERD_26_1
    manifest["artifacts"]["engine"]["dockerd"] = {"flags": {"debug": ""}, "shorthands": {}}
    (tmp_path / manifest_name("amd64")).write_text(json.dumps(manifest))
    image = BootImage.from_manifest(tmp_path / manifest_name("amd64"))
    assert image.dockerd_flags.source == "the image's dockerd 26.1.5"
    with pytest.raises(MachineError, match="the image's dockerd 26.1.5 has no flag --dns"):
        check_engine_flags(["dns=1.1.1.1"], image.dockerd_flags)


# -- the build records the list -------------------------------------------------------


def _fake_dockerd(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n[ \"$1\" = --help ] || exit 2\ncat <<'EOF'\n{text}EOF\n")
    path.chmod(0o755)


def _lock() -> dict[str, LockedPackage]:
    return {recipe.ENGINE_VERSION_PACKAGE: LockedPackage(recipe.ENGINE_VERSION_PACKAGE, "26.1.5+dfsg1-9+deb13u1+b1", "0" * 64)}


def test_the_build_records_the_flags_of_the_images_own_dockerd(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    _fake_dockerd(tree / "usr" / "sbin" / "dockerd", FIXTURE.read_text())
    builder = ImageBuilder(tmp_path / "out", tmp_path / "work", Runner(), arch=host_arch())
    found = builder.dockerd_flags({recipe.ENGINE_VERSION_PACKAGE: tree}, _lock())
    assert found is not None and dict(found.flags) == dict(DOCKERD_26_1.flags)


def test_a_dockerd_that_cannot_run_or_prints_no_usage_records_nothing(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    builder = ImageBuilder(tmp_path / "out", tmp_path / "work", Runner(), arch=host_arch())
    (tree / "usr" / "sbin").mkdir(parents=True)
    (tree / "usr" / "sbin" / "dockerd").write_bytes(b"\x7fELF not for this host")
    (tree / "usr" / "sbin" / "dockerd").chmod(0o755)
    assert builder.dockerd_flags({recipe.ENGINE_VERSION_PACKAGE: tree}, _lock()) is None
    _fake_dockerd(tree / "usr" / "sbin" / "dockerd", "Usage: something else\n")
    assert builder.dockerd_flags({recipe.ENGINE_VERSION_PACKAGE: tree}, _lock()) is None


def test_another_architectures_build_uses_the_hosts_dockerd_of_the_same_version(tmp_path: Path) -> None:
    other = "arm64" if host_arch() == "amd64" else "amd64"
    builder = ImageBuilder(tmp_path / "out", tmp_path / "work", Runner(), arch=other)
    foreign = tmp_path / "foreign-tree"
    assert builder.dockerd_flags({recipe.ENGINE_VERSION_PACKAGE: foreign}, _lock()) is None, "no host build to borrow from"
    host_tree = tmp_path / "work" / host_arch() / "tree" / recipe.ENGINE_VERSION_PACKAGE
    _fake_dockerd(host_tree / "usr" / "sbin" / "dockerd", FIXTURE.read_text())
    (host_tree / ".pymachine-from").write_text(f"docker.io_26.1.5+dfsg1-9+deb13u1+b1_{host_arch()}.deb")
    found = builder.dockerd_flags({recipe.ENGINE_VERSION_PACKAGE: foreign}, _lock())
    assert found is not None and "dns" in found.flags
    # Another version unpacked there is no evidence for this one.
    (host_tree / ".pymachine-from").write_text(f"docker.io_27.0.0-1_{host_arch()}.deb")
    assert builder.dockerd_flags({recipe.ENGINE_VERSION_PACKAGE: foreign}, _lock()) is None
