"""What goes into the boot image and the engine bundle. Edit this file to add a package.

One recipe, two architectures (amd64 and arm64), from Debian 13 (trixie). Every package
named here is pinned, per architecture, with its version and sha256, in
iso/packages-ARCH.lock (`pymachine image lock` rewrites those from the archive).
Binaries are taken by path; the shared libraries they need are found by reading their
ELF headers and taken from LIBRARY_PACKAGES, so a missing library fails the build, not
the boot.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    """What differs between the architectures."""

    arch: str
    #: Debian's multiarch triplet: where shared libraries live
    multiarch: str
    #: the kernel metapackage, resolved to the real linux-image-X.Y.Z-ABI-ARCH by `lock`
    kernel_metapackage: str
    #: the serial console the hypervisors give this architecture's guests
    console: str
    #: the removable-media boot file UEFI firmware runs from the ESP
    efi_boot_file: str
    #: systemd-boot's EFI binary in the systemd-boot-efi package
    systemd_boot: str
    #: whether the ISO also boots by BIOS (isolinux)
    bios: bool
    #: more files for the engine bundle: (package, path in package, name in bin/)
    engine_extra: tuple[tuple[str, str, str], ...] = ()
    #: more kernel modules this architecture's hypervisors need
    modules_extra: tuple[str, ...] = ()


TARGETS: dict[str, Target] = {
    "amd64": Target(
        arch="amd64",
        multiarch="x86_64-linux-gnu",
        kernel_metapackage="linux-image-amd64",
        console="ttyS0,115200",
        efi_boot_file="BOOTX64.EFI",
        systemd_boot="usr/lib/systemd/boot/efi/systemd-bootx64.efi",
        bios=True,
        # VirtualBox on Intel presents AHCI, PIIX IDE and an e1000.
        modules_extra=("ahci", "ata_piix", "ata_generic", "e1000", "e1000e", "vboxguest", "vboxsf"),
    ),
    "arm64": Target(
        arch="arm64",
        multiarch="aarch64-linux-gnu",
        kernel_metapackage="linux-image-arm64",
        console="ttyAMA0",
        efi_boot_file="BOOTAA64.EFI",
        systemd_boot="usr/lib/systemd/boot/efi/systemd-bootaa64.efi",
        bios=False,
        # amd64 containers on an arm64 guest (`docker run --platform linux/amd64`): QEMU's
        # user-mode emulator, a static binary, registered with binfmt_misc at boot.
        engine_extra=(("qemu-user", "usr/bin/qemu-x86_64", "qemu-x86_64"),),
        # QEMU's virt machine signals the power button through a PL061 GPIO line.
        modules_extra=("gpio_keys",),
    ),
}

#: The Debian release the image is built from.
SUITE = "trixie"

#: Packages whose files go into the initramfs: (package, [(path in package, path in guest), ...]).
#: A path in the guest of None means the same path. "{multiarch}" is the target's triplet.
ISO_FILES: dict[str, list[tuple[str, str | None]]] = {
    # trixie's busybox-static installs to /usr/bin (merged /usr); the guest keeps /bin/busybox.
    "busybox-static": [("usr/bin/busybox", "bin/busybox")],
    "dropbear-bin": [
        ("usr/sbin/dropbear", None),
        ("usr/bin/dropbearconvert", None),
    ],
    # dropbear runs the SFTP subsystem from /usr/lib/sftp-server.
    "openssh-sftp-server": [("usr/lib/openssh/sftp-server", "usr/lib/sftp-server")],
    "e2fsprogs": [("usr/sbin/mke2fs", None), ("usr/sbin/resize2fs", None), ("usr/sbin/e2fsck", None), ("etc/mke2fs.conf", None)],
    # iptables-legacy: under emulation each nft-backed call costs ~140 ms against ~60 ms,
    # and dockerd makes dozens of calls at start (start to Docker ready: -5 s).
    "iptables": [("usr/sbin/xtables-legacy-multi", None), ("usr/lib/{multiarch}/xtables/", None)],
    # iproute2's tc (busybox's has no pedit): the QEMU guest raises the MSS in the SYNs its
    # NAT (slirp) sends, so TCP through a forward carries 64 KiB segments (rcS, "network").
    "iproute2": [("usr/sbin/tc", "sbin/tc")],
    # nc -U: talks to dockerd's unix socket from the guest (checks, debugging).
    "netcat-openbsd": [("usr/bin/nc.openbsd", None)],
    # The engine bundle is zstd-compressed; the Debian zstd binary is self-contained.
    "zstd": [("usr/bin/zstd", None)],
    # dockerd pulls images over HTTPS: the guest needs the CA roots (concatenated at build).
    "ca-certificates": [("usr/share/ca-certificates/mozilla/", None)],
}

#: Names under which the multi-call binaries answer.
SYMLINKS: dict[str, str] = {
    "sbin/mkfs.ext4": "../usr/sbin/mke2fs",
    "usr/sbin/iptables": "xtables-legacy-multi",
    "usr/sbin/iptables-save": "xtables-legacy-multi",
    "usr/sbin/iptables-restore": "xtables-legacy-multi",
    "usr/sbin/ip6tables": "xtables-legacy-multi",
    "usr/sbin/ip6tables-save": "xtables-legacy-multi",
    "usr/sbin/ip6tables-restore": "xtables-legacy-multi",
    "usr/bin/unzstd": "zstd",
}

#: The BIOS boot loader (amd64), taken from these packages but not put in the initramfs.
BIOS_FILES: dict[str, list[tuple[str, str]]] = {
    "isolinux": [("usr/lib/ISOLINUX/isolinux.bin", "isolinux/isolinux.bin")],
    "syslinux-common": [("usr/lib/syslinux/modules/bios/ldlinux.c32", "isolinux/ldlinux.c32")],
}

#: The UEFI boot loader: systemd-boot, run by the firmware from the ISO's ESP.
EFI_PACKAGE = "systemd-boot-efi"

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
    "libext2fs2t64",
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
    "libsystemd0",
    "libcap2",
    "libseccomp2",
    "liblzma5",
    "liblz4-1",
    "libzstd1",
    "libmd0",
    "libbsd0",
    "libxxhash0",
    "libbpf1",
    "libelf1t64",
]

#: Kernel modules, with their dependencies added from the modules' own metadata (a module
#: the kernel has built in is skipped). Disk and NIC drivers cover what QEMU (virtio),
#: VirtualBox and Parallels present; the rest is what Docker needs.
KERNEL_MODULES: list[str] = [
    # buses, disks, CDs, file systems
    "virtio_pci", "virtio_blk", "virtio_scsi", "virtio_net", "virtio_rng", "virtio_balloon",
    "virtio_console",
    "sd_mod", "sr_mod", "nvme",
    "isofs", "ext4", "overlay", "loop",
    "9p", "9pnet_virtio",  # host folders shared by QEMU (virtio-9p): `create --mount`
    "crc32c_generic",  # libcrc32c asks for crc32c by name; modules.dep does not say so
    "button", "evdev",  # the power button, so `stop` shuts the guest down cleanly
    "binfmt_misc",  # foreign-architecture containers (arm64 guests: amd64 through qemu-user)
    # Docker's bridge network and published ports (iptables-legacy)
    "bridge", "br_netfilter", "veth", "macvlan", "ipvlan", "vxlan", "dummy", "tun",
    "nf_conntrack_netlink", "nf_nat", "nf_conntrack",
    "xt_addrtype", "xt_conntrack", "xt_MASQUERADE", "xt_nat", "xt_tcpudp", "xt_mark",
    "xt_comment", "xt_multiport", "xt_state", "xt_REDIRECT", "ipt_REJECT", "ip6t_REJECT",
    "ip_tables", "ip6_tables", "iptable_nat", "iptable_filter", "ip6table_nat", "ip6table_filter",
    # large segments through QEMU's NAT: tc's ingress hook, a u32 match, the MSS rewrite
    "sch_ingress", "cls_u32", "act_pedit", "act_csum",
]

#: The kernel's command line (isolinux, systemd-boot and the QEMU driver's direct boot).
#: cryptomgr.notests: the crypto self-tests cost a second of every boot under emulation.
#: No `quiet`: the console log (`pymachine logs`) is where a failed boot is read, so it
#: keeps every kernel message; measured under TCG, the boot takes no longer for it.
CMDLINE = "console=tty0 console={console} rodata=off cryptomgr.notests=1"

#: Volume id of the boot ISO. (The config medium's is pymachine.guest.configmedium.VOLUME_ID.)
BOOT_VOLUME_ID = "PYMACHINE"


def kernel_cmdline(target: Target) -> str:
    return CMDLINE.format(console=target.console)


def iso_files(target: Target) -> dict[str, list[tuple[str, str | None]]]:
    """ISO_FILES with the target's multiarch triplet filled in."""
    return {
        package: [(src.format(multiarch=target.multiarch), dest.format(multiarch=target.multiarch) if dest else None) for src, dest in files]
        for package, files in ISO_FILES.items()
    }


def engine_files(target: Target) -> list[tuple[str, str, str]]:
    return [*ENGINE_FILES, *target.engine_extra]


def kernel_modules(target: Target) -> list[str]:
    return [*KERNEL_MODULES, *target.modules_extra]


def wanted_packages(target: Target) -> list[str]:
    """Every package the recipe takes files from for `target` (the kernel apart)."""
    names = set(ISO_FILES) | set(LIBRARY_PACKAGES) | {EFI_PACKAGE}
    names |= {pkg for pkg, _, _ in engine_files(target)}
    if target.bios:
        names |= set(BIOS_FILES)
    return sorted(names)
