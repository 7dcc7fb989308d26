#!/usr/bin/env bash
# Writes a tiny root filesystem tarball for `docker import`, so a demo or a test needs
# no registry: busybox (sh, httpd ...), a web page, and OpenBSD's nc for UDP (busybox's
# nc has no -u). Everything comes from the packages the image build already unpacked.
# Usage: busybox-rootfs.sh OUT.tar
set -euo pipefail
out=$1
cache=${PYMACHINE_CACHE_PATH:-$HOME/.pymachine/cache}
tree="$cache/image-work/tree"
[ -x "$tree/busybox-static/bin/busybox" ] || { echo "Error: $tree/busybox-static/bin/busybox is missing. Run \`pymachine image build\` first." >&2; exit 1; }
root=$(mktemp -d)
mkdir -p "$root/bin" "$root/www" "$root/tmp" "$root/lib/x86_64-linux-gnu" "$root/lib64"
cp "$tree/busybox-static/bin/busybox" "$root/bin/busybox"
for applet in sh httpd nc echo cat sleep ls sed wc head dd true; do ln -s busybox "$root/bin/$applet"; done
cp "$tree/netcat-openbsd/bin/nc.openbsd" "$root/bin/nc.openbsd"
cp -L "$tree/libc6/lib/x86_64-linux-gnu/libc.so.6" "$tree/libc6/lib/x86_64-linux-gnu/libresolv.so.2" "$tree/libbsd0/usr/lib/x86_64-linux-gnu/libbsd.so.0" \
    "$tree/libmd0/usr/lib/x86_64-linux-gnu/libmd.so.0" "$root/lib/x86_64-linux-gnu/"
cp -L "$tree/libc6/lib64/ld-linux-x86-64.so.2" "$root/lib64/"
echo "hello from a container in a pymachine VM" > "$root/www/index.html"
tar -C "$root" -cf "$out" .
rm -rf "$root"
