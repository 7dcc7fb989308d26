#!/usr/bin/env bash
# Installs what pymachine needs on a Debian or Ubuntu host, then pymachine itself into
# .venv. Safe to run again: it installs only what is missing. apt-get runs through sudo
# when this is not run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
sudo=""
[ "$(id -u)" = 0 ] || sudo=sudo

packages=()
backports=()
# QEMU 10 or newer. Debian 12's QEMU 7.2 runs x86-64 guests under multi-threaded TCG
# with a bug that now and then kills one at boot (see MTTCG_SAFE_FOR_X86 in
# drivers/qemu.py; pymachine then falls back to slower single-threaded TCG). On Debian 12
# QEMU comes from bookworm-backports (10.0), which only the packages named here use.
codename=$(. /etc/os-release 2>/dev/null; echo "${VERSION_CODENAME:-}")
qemu_major() { "$1" --version 2>/dev/null | sed -n 's/.*version \([0-9][0-9]*\)\..*/\1/p' | head -n 1; }
for pair in qemu-system-x86_64:qemu-system-x86 qemu-system-aarch64:qemu-system-arm qemu-img:qemu-utils; do
    program=${pair%%:*} package=${pair##*:}
    major=$(qemu_major "$program")
    if [ "$codename" = bookworm ] && [ "${major:-0}" -lt 10 ]; then
        backports+=("$package")
    elif [ -z "$major" ]; then
        packages+=("$package")  # arm64 guests (Apple Silicon's architecture) run here too, under TCG
    fi
done
if ((${#backports[@]})) && ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    echo "setup: adding bookworm-backports to apt's sources, for QEMU 10" >&2
    printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
        | $sudo tee /etc/apt/sources.list.d/bookworm-backports.sources >/dev/null
fi
# UEFI firmware: arm64 guests boot their ISO through it, and amd64 ones under emulation.
[ -f /usr/share/AAVMF/AAVMF_CODE.fd ] || packages+=(qemu-efi-aarch64)
[ -f /usr/share/OVMF/OVMF_CODE.fd ] || packages+=(ovmf)
# The tests read the boot image's EFI system partition (FAT) with independent tools.
command -v mdir >/dev/null || packages+=(mtools)
command -v fsck.fat >/dev/null || packages+=(dosfstools)
command -v dpkg-deb >/dev/null || packages+=(dpkg)
command -v ssh >/dev/null || packages+=(openssh-client)
command -v curl >/dev/null || packages+=(curl)
command -v ip >/dev/null || packages+=(iproute2)
python3 -c 'import ensurepip, venv' 2>/dev/null || packages+=(python3-venv)

if ((${#packages[@]} + ${#backports[@]})); then
    $sudo apt-get update -qq
fi
if ((${#packages[@]})); then
    echo "setup: installing ${packages[*]}" >&2
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi
if ((${#backports[@]})); then
    echo "setup: installing ${backports[*]} from bookworm-backports" >&2
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends -t bookworm-backports "${backports[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
# An editable install of the one package, pymachine, mapped over machine/, drivers/ and
# iso/. strict mode: a tree of links under build/ on a plain path entry; the default
# mode's import hook costs about 20 ms at every start of Python, `pymachine env` included.
# The distribution was called "pymachine" before it took its free PyPI name.
.venv/bin/python -m pip uninstall -q -y pymachine >/dev/null 2>&1 || true
# The image distributions (pymachine-vm-image-ARCH) are left out: a development checkout
# builds its own image, and they exist only once scripts/dist.sh has made them.
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e . --config-settings editable_mode=strict
.venv/bin/python - <<'PY' > .venv/requirements-dev.txt
import tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
wanted = project["dependencies"] + project["optional-dependencies"]["image"] + project["optional-dependencies"]["test"]
print("\n".join(r for r in wanted if not r.startswith("pymachine-vm-image-")))
PY
.venv/bin/python -m pip install -q --disable-pip-version-check -r .venv/requirements-dev.txt
# pymachine-vm's own dependencies as wheels, from PyPI, for the test that installs the
# release's wheels into a fresh virtualenv inside a network namespace.
.venv/bin/python - <<'PY' > .venv/requirements-runtime.txt
import tomllib
print("\n".join(r for r in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"] if not r.startswith("pymachine-vm-image-")))
PY
.venv/bin/python -m pip download -q --disable-pip-version-check --only-binary=:all: -d .venv/wheelhouse -r .venv/requirements-runtime.txt
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
