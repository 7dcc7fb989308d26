#!/usr/bin/env bash
# Installs what pymachine needs on a Debian or Ubuntu host, then pymachine itself into
# .venv. Safe to run again: it installs only what is missing. apt-get runs through sudo
# when this is not run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
sudo=""
[ "$(id -u)" = 0 ] || sudo=sudo

packages=()
command -v qemu-system-x86_64 >/dev/null || packages+=(qemu-system-x86)
# arm64 guests (Apple Silicon's architecture) run here too, under TCG, with UEFI firmware.
command -v qemu-system-aarch64 >/dev/null || packages+=(qemu-system-arm)
[ -f /usr/share/AAVMF/AAVMF_CODE.fd ] || packages+=(qemu-efi-aarch64)
[ -f /usr/share/OVMF/OVMF_CODE.fd ] || packages+=(ovmf)
# The tests read the boot image's EFI system partition (FAT) with independent tools.
command -v mdir >/dev/null || packages+=(mtools)
command -v fsck.fat >/dev/null || packages+=(dosfstools)
command -v qemu-img >/dev/null || packages+=(qemu-utils)
command -v dpkg-deb >/dev/null || packages+=(dpkg)
command -v ssh >/dev/null || packages+=(openssh-client)
command -v curl >/dev/null || packages+=(curl)
command -v ip >/dev/null || packages+=(iproute2)
python3 -c 'import ensurepip, venv' 2>/dev/null || packages+=(python3-venv)

# The boot image is built from Debian packages fetched with `apt-get download`:
# the package lists must be there even when nothing needs installing.
if ((${#packages[@]})) || ! apt-cache show busybox-static >/dev/null 2>&1; then
    $sudo apt-get update -qq
fi
if ((${#packages[@]})); then
    echo "setup: installing ${packages[*]}" >&2
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
# An editable install of the one package, pymachine, mapped over machine/, drivers/ and
# iso/. strict mode: a tree of links under build/ on a plain path entry; the default
# mode's import hook costs about 20 ms at every start of Python, `pymachine env` included.
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[image,test]' --config-settings editable_mode=strict
# Compiled once here: PYTHONDONTWRITEBYTECODE would otherwise make every run recompile.
.venv/bin/python -m compileall -q "$(.venv/bin/python -c 'import os, pymachine; print(os.path.dirname(pymachine.__file__))')" >/dev/null

# A docker CLI for the host. Without one, take the client out of Debian's docker.io
# package without installing the package (which would also start a local daemon).
if ! command -v docker >/dev/null && [ ! -x .venv/bin/docker ]; then
    echo "setup: no docker CLI found; unpacking the client from Debian's docker.io package" >&2
    work=$(mktemp -d)
    (cd "$work" && apt-get download -q -o APT::Sandbox::User=root docker.io >/dev/null && dpkg-deb -x docker.io_*.deb tree)
    install -m 0755 "$work/tree/usr/bin/docker" .venv/bin/docker
    rm -rf "$work"
fi
echo "setup: done ($(.venv/bin/pymachine --version))" >&2
