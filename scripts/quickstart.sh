#!/usr/bin/env bash
# The main job on a fresh Debian machine, end to end: install what is needed, build the
# boot image, create a machine, run a container that publishes port 3001, and show it
# answering on this host's localhost:3001. Run it again any time.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
name=${PYMACHINE_DEMO_NAME:-quickstart}

pymachine image build

# The demo imports its image from local files, so the VM may stay cut off from every
# network but its own forwards. Drop `-o restrict-network=true` to let it pull images.
case "$(pymachine status "$name" 2>/dev/null || echo none)" in
    none) pymachine create "$name" -o restrict-network=true ;;
    Running) ;;
    Stopped) pymachine start "$name" ;;
    *) pymachine rm -f -y "$name"; pymachine create "$name" -o restrict-network=true ;;
esac
eval "$(pymachine env "$name")"

rootfs=$(mktemp --suffix=.tar)
./scripts/busybox-rootfs.sh "$rootfs"
docker import "$rootfs" pymachine-demo:latest >/dev/null
rm -f "$rootfs"
docker rm -f hello >/dev/null 2>&1 || true
docker run -d --name hello -p 3001:80 pymachine-demo:latest httpd -f -p 80 -h /www >/dev/null

echo "docker run -d -p 3001:80 ... returned; asking http://localhost:3001/ on this host:" >&2
for attempt in $(seq 1 50); do
    if curl -fsS --max-time 2 http://localhost:3001/; then
        pymachine ports "$name"
        echo "Done. Try: eval \$(pymachine env $name); docker ps. Clean up with: pymachine rm -y $name" >&2
        exit 0
    fi
    sleep 0.2
done
echo "Error: nothing answered on localhost:3001. Run \`pymachine ports $name\` to see why." >&2
exit 1
