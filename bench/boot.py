"""Boot time of the image under QEMU: from starting the VM to a key-authenticated SSH
login (host key verified), for direct kernel boot and for -cdrom. Each run is a fresh
machine, so the first-boot format of the data disk is included.

    python bench/boot.py [--runs 3] [--arch amd64|arm64]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import CACHE, save, summary  # noqa: E402

from pymachine.arch import ARCHES, host_arch  # noqa: E402
from pymachine.driver import BootMedia  # noqa: E402
from pymachine.drivers.qemu import QemuDriver, QemuOptions, detect_accelerator  # noqa: E402
from pymachine.guest.certs import SSHKeyPair  # noqa: E402
from pymachine.guest.provision import console_ready  # noqa: E402
from pymachine.guest.ssh import GuestSSH, SSHTarget  # noqa: E402
from pymachine.image import BootImage, manifest_name  # noqa: E402
from pymachine.runner import Runner  # noqa: E402
from tests.contract import make_spec  # noqa: E402


def boot_once(image: BootImage, mode: str, folder: Path) -> float:
    boot = BootMedia(image.iso, image.kernel, image.initrd, image.cmdline, image.pvh_kernel)
    spec = dataclasses.replace(make_spec(folder, "bootbench", boot), arch=image.arch)
    driver = QemuDriver(spec, QemuOptions(restrict_network=True, boot=mode), Runner())
    driver.create()
    host_key = SSHKeyPair.public_of(spec.directory / "ssh_host_ed25519_key")
    target = SSHTarget(spec.name, "127.0.0.1", spec.ssh_port, "root", spec.directory / "id_ed25519", " ".join(host_key.split()[:2]))
    try:
        started = time.monotonic()
        driver.start()
        with GuestSSH(target) as ssh:
            # As `create` does: the first attempt waits for the console's ready line.
            ssh.wait(180, booted=console_ready(driver.serial_log()))
            ssh.run("true")
            return time.monotonic() - started
    finally:
        driver.remove()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--arch", default=host_arch(), choices=ARCHES)
    args = parser.parse_args()
    image = BootImage.from_manifest(CACHE / manifest_name(args.arch))
    result: dict = {"arch": args.arch, "accelerator": detect_accelerator(Runner(), "auto", args.arch).name, "iso_MB": round(image.iso.stat().st_size / 1e6, 1)}
    if image.engine_bundle:
        result["engine_bundle_MB"] = round(image.engine_bundle.stat().st_size / 1e6, 1)
    for mode in ("kernel", "cdrom"):
        times = []
        for run in range(args.runs):
            with tempfile.TemporaryDirectory(prefix="pymachine-boot-") as tmp:
                times.append(boot_once(image, mode, Path(tmp) / "m"))
            print(f"{mode} run {run + 1}: {times[-1]:.1f} s", flush=True)
        result[f"{mode}_boot_to_ssh_s"] = summary(times)
        print(f"{mode}: median {result[f'{mode}_boot_to_ssh_s']['median']:.1f} s to a key-authenticated SSH login")
    print(f"saved to {save(f'boot-{args.arch}', result)}")


if __name__ == "__main__":
    main()
