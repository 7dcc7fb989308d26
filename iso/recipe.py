"""What goes into the boot image and the engine bundle. Edit this file to add a package.

Every package named here is pinned, with its version and sha256, in iso/packages.lock
(`pymachine image lock` rewrites that file from the current apt sources). Binaries are
taken by path; the shared libraries they need are found by reading their ELF headers
and taken from LIBRARY_PACKAGES, so a missing library fails the build, not the boot.
"""

from __future__ import annotations

ARCH = "amd64"
MULTIARCH = "x86_64-linux-gnu"

#: The kernel: a metapackage here, resolved to the real linux-image-X.Y.Z-N-amd64 by `lock`.
KERNEL_METAPACKAGE = "linux-image-amd64"

#: Packages whose files go into the initramfs: (package, [(path in package, path in guest), ...]).
#: A path in the guest of None means the same path.
ISO_FILES: dict[str, list[tuple[str, str | None]]] = {
    "busybox-static": [("bin/busybox", None)],
    "dropbear-bin": [
        ("usr/sbin/dropbear", None),
        ("usr/lib/dropbear/dropbearconvert", None),
    ],
    # dropbear runs the SFTP subsystem from /usr/lib/sftp-server.
    "openssh-sftp-server": [("usr/lib/openssh/sftp-server", "usr/lib/sftp-server")],
    "e2fsprogs": [("sbin/mke2fs", None), ("etc/mke2fs.conf", None)],
    # iptables-legacy: under emulation each nft-backed call costs ~140 ms against ~60 ms,
    # and dockerd makes dozens of calls at start (start to Docker ready: -5 s).
    "iptables": [("usr/sbin/xtables-legacy-multi", None), (f"usr/lib/{MULTIARCH}/xtables/", None)],
    # nc -U: talks to dockerd's unix socket from the guest (checks, debugging).
    "netcat-openbsd": [("bin/nc.openbsd", "usr/bin/nc.openbsd")],
    # The engine bundle is zstd-compressed; the Debian zstd binary is self-contained.
    "zstd": [("usr/bin/zstd", None)],
    # dockerd pulls images over HTTPS: the guest needs the CA roots (concatenated at build).
    "ca-certificates": [("usr/share/ca-certificates/mozilla/", None)],
}

#: Names under which the multi-call binaries answer.
SYMLINKS: dict[str, str] = {
    "sbin/mkfs.ext4": "mke2fs",
    "usr/sbin/iptables": "xtables-legacy-multi",
    "usr/sbin/iptables-save": "xtables-legacy-multi",
    "usr/sbin/iptables-restore": "xtables-legacy-multi",
    "usr/sbin/ip6tables": "xtables-legacy-multi",
    "usr/sbin/ip6tables-save": "xtables-legacy-multi",
    "usr/sbin/ip6tables-restore": "xtables-legacy-multi",
    "usr/bin/unzstd": "zstd",
    "usr/bin/dropbearconvert": "../lib/dropbear/dropbearconvert",
}

#: The boot loader, taken from these packages but not put in the initramfs.
BOOTLOADER_FILES: dict[str, list[tuple[str, str]]] = {
    "isolinux": [("usr/lib/ISOLINUX/isolinux.bin", "isolinux/isolinux.bin")],
    "syslinux-common": [("usr/lib/syslinux/modules/bios/ldlinux.c32", "isolinux/ldlinux.c32")],
}

#: What the engine bundle holds: (package, path in package, name in the bundle's bin/).
ENGINE_FILES: list[tuple[str, str, str]] = [
    ("docker.io", "usr/sbin/dockerd", "dockerd"),
    ("docker.io", "usr/sbin/docker-proxy", "docker-proxy"),
    ("containerd", "usr/bin/containerd", "containerd"),
    ("containerd", "usr/bin/containerd-shim-runc-v2", "containerd-shim-runc-v2"),
    ("runc", "usr/sbin/runc", "runc"),
    ("tini", "usr/bin/tini-static", "docker-init"),
]

#: The package whose upstream version names the engine bundle.
ENGINE_VERSION_PACKAGE = "docker.io"

#: Where shared libraries may come from (for the initramfs and for the bundle).
LIBRARY_PACKAGES: list[str] = [
    "libc6",
    "libcrypt1",
    "libtomcrypt1",
    "libtommath1",
    "libgmp10",
    "zlib1g",
    "libext2fs2",
    "libcom-err2",
    "libblkid1",
    "libuuid1",
    "libxtables12",
    "libip4tc2",
    "libip6tc2",
    "libmnl0",
    "libnftnl11",
    "libnetfilter-conntrack3",
    "libnfnetlink0",
    "liblzma5",
    "liblz4-1",
    "libzstd1",
    "libsystemd0",
    "libcap2",
    "libgcrypt20",
    "libgpg-error0",
    "libdevmapper1.02.1",
    "libselinux1",
    "libpcre2-8-0",
    "libudev1",
    "libseccomp2",
    "libbsd0",
    "libmd0",
]

#: Kernel modules, with their dependencies added from the modules' own metadata.
#: Disk and NIC drivers cover what QEMU (virtio), VirtualBox (e1000, AHCI, PIIX) and
#: Parallels (virtio, e1000, AHCI, NVMe) present; the rest is what Docker needs.
KERNEL_MODULES: list[str] = [
    # buses, disks, CDs, file systems
    "virtio_pci", "virtio_blk", "virtio_scsi", "virtio_net", "virtio_rng", "virtio_balloon",
    "virtio_console",
    "ahci", "ata_piix", "ata_generic", "sd_mod", "sr_mod", "nvme",
    "e1000", "e1000e",
    "isofs", "ext4", "overlay", "loop",
    "9p", "9pnet_virtio",  # host folders shared by QEMU (virtio-9p): `create --mount`
    "vboxguest", "vboxsf",  # ... and by VirtualBox (its shared folders)
    "crc32c_generic",  # libcrc32c asks for crc32c by name; modules.dep does not say so
    "button", "evdev",  # ACPI power button, so `stop` shuts the guest down cleanly
    # Docker's bridge network and published ports (iptables-legacy)
    "bridge", "br_netfilter", "veth", "macvlan", "ipvlan", "vxlan", "dummy", "tun",
    "nf_conntrack_netlink", "nf_nat", "nf_conntrack",
    "xt_addrtype", "xt_conntrack", "xt_MASQUERADE", "xt_nat", "xt_tcpudp", "xt_mark",
    "xt_comment", "xt_multiport", "xt_state", "xt_REDIRECT", "ipt_REJECT", "ip6t_REJECT",
    "ip_tables", "ip6_tables", "iptable_nat", "iptable_filter", "ip6table_nat", "ip6table_filter",
]

#: Passed to the kernel by isolinux and by the QEMU driver's direct boot.
KERNEL_CMDLINE = "console=tty0 console=ttyS0,115200 quiet loglevel=3 rodata=off"

#: Volume id of the boot ISO. (The config medium's is pymachine.guest.configmedium.VOLUME_ID.)
BOOT_VOLUME_ID = "PYMACHINE"
