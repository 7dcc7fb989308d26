"""The image distributions: one wheel per architecture that installs a built boot image
into the pymachine package, as `pymachine/images/ARCH/`.

`pip install pymachine-vm` then brings the image of the host's architecture with it
(pymachine-vm depends on `pymachine-vm-image-ARCH` at its own version, chosen by
environment markers), and `create` finds it there: no download at run time, no build,
no apt. The wheel carries the ISO, the engine bundle and a manifest naming just those
two; the kernel and initrd for direct boot are read from the ISO when a machine is made,
so nothing is shipped twice.

The wheel is written here rather than by a build backend, so that it claims no import
name of its own (its files sit under `pymachine/`) and the same image gives the same
bytes: entries sorted, one fixed timestamp, fixed modes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import zipfile
from pathlib import Path

from pymachine import __version__
from pymachine.errors import ImageError
from pymachine.image import IMAGE_DISTRIBUTION, manifest_name

#: Every entry's date: the earliest a zip file can hold.
ZIP_DATE = (1980, 1, 1, 0, 0, 0)
#: PyPI refuses files over 100 MB unless the project asks for more; stay well under.
SIZE_LIMIT = 90_000_000


def wheel_name(arch: str, version: str = __version__) -> str:
    return f"{IMAGE_DISTRIBUTION.format(arch=arch).replace('-', '_')}-{version}-py3-none-any.whl"


def write_image_wheel(cache: Path, arch: str, out: Path, version: str = __version__) -> Path:
    """The wheel of the `arch` image built into `cache`, written into the folder `out`."""
    manifest_path = cache / manifest_name(arch, version)
    try:
        manifest = json.loads(manifest_path.read_text())
        artifacts = {kind: manifest["artifacts"][kind] for kind in ("iso", "engine")}
    except (OSError, ValueError, KeyError) as exc:
        raise ImageError(f"No usable {arch} image build in {cache} ({exc.__class__.__name__})", f"Run `pymachine image build --arch {arch}` first") from None
    if manifest.get("version") != version or manifest.get("arch") != arch:
        raise ImageError(f"{manifest_path} is a {manifest.get('version')} {manifest.get('arch')} build, not {version} {arch}", f"Run `pymachine image build --arch {arch}`")
    shipped = dict(manifest, artifacts=artifacts)
    prefix = f"pymachine/images/{arch}"
    files: dict[str, bytes] = {f"{prefix}/{manifest_name(arch, version)}": (json.dumps(shipped, indent=2, sort_keys=True) + "\n").encode()}
    for item in artifacts.values():
        data = (cache / item["file"]).read_bytes()
        if hashlib.sha256(data).hexdigest() != item["sha256"]:
            raise ImageError(f"{cache / item['file']} does not match its manifest", f"Run `pymachine image build --arch {arch} --force`")
        files[f"{prefix}/{item['file']}"] = data
    name = IMAGE_DISTRIBUTION.format(arch=arch)
    info = f"{name.replace('-', '_')}-{version}.dist-info"
    files[f"{info}/METADATA"] = metadata(name, arch, version, manifest).encode()
    files[f"{info}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: pymachine iso/dist.py\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    record = "".join(f"{path},sha256={_digest(data)},{len(data)}\n" for path, data in sorted(files.items()))
    files[f"{info}/RECORD"] = (record + f"{info}/RECORD,,\n").encode()
    out.mkdir(parents=True, exist_ok=True)
    target = out / wheel_name(arch, version)
    partial = target.with_name(target.name + ".partial")
    with zipfile.ZipFile(partial, "w") as wheel:
        for path in [*sorted(p for p in files if not p.endswith("/RECORD")), f"{info}/RECORD"]:
            entry = zipfile.ZipInfo(path, ZIP_DATE)
            entry.external_attr = 0o644 << 16
            entry.compress_type = zipfile.ZIP_DEFLATED
            wheel.writestr(entry, files[path], compresslevel=9)
    partial.replace(target)
    if target.stat().st_size > SIZE_LIMIT:
        raise ImageError(f"{target.name} is {target.stat().st_size / 1e6:.0f} MB, over the {SIZE_LIMIT / 1e6:.0f} MB a PyPI file should stay under", "Make the image smaller")
    return target


def metadata(name: str, arch: str, version: str, manifest: dict) -> str:
    kernel = manifest.get("kernel_version", "")
    engine = manifest.get("artifacts", {}).get("engine", {}).get("version", "")
    return (
        "Metadata-Version: 2.1\n"
        f"Name: {name}\n"
        f"Version: {version}\n"
        f"Summary: The {arch} boot image of pymachine-vm: Debian {manifest.get('suite', '')} with Linux {kernel} and Docker {engine}\n"
        "License: Apache-2.0 (pymachine); the Debian packages inside keep their own licenses (GPL-2.0 Linux, Apache-2.0 Docker, ...)\n"
        "Requires-Python: >=3.10\n"
        "\n"
        f"Installs the {arch} boot ISO and Docker engine bundle of pymachine-vm {version} where pymachine looks for them. "
        "pymachine-vm depends on it for hosts of this architecture; install it by hand to run guests of the other one.\n"
    )


def _digest(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
