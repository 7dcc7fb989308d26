#!/usr/bin/env bash
# Builds every distribution of a release into dist/, on a Debian host:
#   pymachine_vm-VERSION-py3-none-any.whl                 the tool (the `pymachine` command)
#   pymachine_vm_image_amd64-VERSION-py3-none-any.whl     the amd64 boot image and engine
#   pymachine_vm_image_arm64-VERSION-py3-none-any.whl     the arm64 boot image and engine
# pymachine-vm depends on the image of the host's architecture at its own version, so
# `pipx install pymachine-vm` brings everything `pymachine create` needs.
# The same inputs give the same bytes: the image build is reproducible, the image wheels
# are written with fixed dates, and the tool's wheel gets SOURCE_DATE_EPOCH.
# Usage: scripts/dist.sh [OUT]   (default: dist/)
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-dist}")
[ -x .venv/bin/pymachine ] || ./scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
pymachine image build --arch all >/dev/null
mkdir -p "$out"
rm -f "$out"/pymachine_vm-*.whl "$out"/pymachine_vm_image_*.whl
pymachine image dist --arch all --out "$out" >/dev/null

# The tool's wheel, from a copy of the tracked files (the checkout's own build/ holds the
# editable install's links).
source=$(mktemp -d)
trap 'rm -rf "$source"' EXIT
git ls-files -z | tar --null -T - -cf - | tar -xf - -C "$source"
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-315532800} .venv/bin/python -m pip wheel -q --no-deps --no-build-isolation -w "$out" "$source" >/dev/null
ls -l "$out"/*.whl >&2
