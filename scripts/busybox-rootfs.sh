#!/usr/bin/env bash
# Writes a tiny root filesystem tarball for `docker import`, so a demo or a test needs
# no registry: busybox (sh, httpd ...), a web page, and OpenBSD's nc for UDP (busybox's
# nc has no -u). Everything comes from the packages the image build already unpacked,
# found where pymachine says its image is (`pymachine image path`).
# Usage: busybox-rootfs.sh OUT.tar [amd64|arm64]   (default: this host's architecture)
set -euo pipefail
out=$1
arch=${2:-}
pymachine=${PYMACHINE:-pymachine}
manifest=$("$pymachine" image path ${arch:+--arch "$arch"})
arch=${arch:-$(basename "$manifest" .manifest.json | sed 's/.*-//')}
tree="$(dirname "$manifest")/image-work/$arch/tree"
case "$arch" in
    amd64) triplet=x86_64-linux-gnu; loader=lib64/ld-linux-x86-64.so.2 ;;
    arm64) triplet=aarch64-linux-gnu; loader=lib/ld-linux-aarch64.so.1 ;;
    *) echo "Error: no rootfs recipe for $arch. Run \`busybox-rootfs.sh OUT.tar amd64\` or arm64." >&2; exit 1 ;;
esac
[ -x "$tree/busybox-static/usr/bin/busybox" ] || { echo "Error: $tree/busybox-static/usr/bin/busybox is missing. Run \`pymachine image build --arch $arch\` first." >&2; exit 1; }
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/bin" "$root/www" "$root/tmp" "$root/lib/$triplet" "$root/$(dirname "$loader")"
cp "$tree/busybox-static/usr/bin/busybox" "$root/bin/busybox"
for applet in sh httpd nc echo cat sleep ls sed wc head dd true uname; do ln -s busybox "$root/bin/$applet"; done
cp "$tree/netcat-openbsd/usr/bin/nc.openbsd" "$root/bin/nc.openbsd"
libs="$tree/libc6/usr/lib/$triplet"
cp -L "$libs/libc.so.6" "$libs/libresolv.so.2" "$tree/libbsd0/usr/lib/$triplet/libbsd.so.0" \
    "$tree/libmd0/usr/lib/$triplet/libmd.so.0" "$root/lib/$triplet/"
cp -L "$libs/$(basename "$loader")" "$root/$loader"
echo "hello from a container in a pymachine VM" > "$root/www/index.html"
tar -C "$root" -cf "$out" .
