#!/usr/bin/env bash
# Everything the tests need, then the tests: set-up, the boot image (built once and
# kept in $PYMACHINE_CACHE_PATH while its inputs do not change), and pytest. When run
# as root, pytest runs in a network namespace with loopback alone, so no test can send
# anything off this host. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export PYMACHINE_CACHE_PATH=${PYMACHINE_CACHE_PATH:-$HOME/.cache/pymachine-test}
export PATH="$PWD/.venv/bin:$PATH"
.venv/bin/pymachine image build

if [ "$(id -u)" = 0 ] && unshare -n true 2>/dev/null; then
    exec unshare -n bash -c 'ip link set lo up && exec .venv/bin/python -m pytest "$@"' pytest "$@"
fi
exec .venv/bin/python -m pytest "$@"
