"""A fake `prlctl` and `prlsrvctl`: the subcommands pymachine uses, with their output shapes.

Run as `python parallels.py prlctl ARGS...` (or prlsrvctl) by the wrappers tools.py
writes. The state is in $PYMACHINE_FAKE_PARALLELS; every argv is logged beside it.
Failures print their message on stderr and exit 255, as prlctl does for a missing VM.
Where a message could not be confirmed from public sources, the fake says so in a
comment and the driver does not depend on its wording.

Apple Silicon: `prlctl create` makes a VM of the host's architecture (there is no option
to ask for another; Parallels Desktop 20.2+ hides an x86_64 emulation preview this fake
does not model). `prlctl list -i -j` reports it (Hardware/cpu/type "arm", "BIOS type"
"efi-arm64": ARM VMs boot by EFI, with no --efi-boot to set). A VM of the other
architecture (a bundle made on the other kind of Mac) does not start.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from parallels_model import PROCESS_STATES, FakeParallels, listen  # noqa: E402

NOT_FOUND = "Failed to get VM config: The virtual machine could not be found. The virtual machine is not registered in the virtual machine directory on your Mac."
FAILURE = 255
#: prlctl start of a VM made on an Intel Mac, on Apple Silicon. UNVERIFIED: only the last
#: sentence is quoted from a user's report of this error (vagrant-parallels#401).
NOT_RUNNABLE_ON_ARM = (
    'Failed to start the VM: Unable to start "{name}". This virtual machine was created on a Mac with an Intel processor '
    "and cannot be started on a Mac with Apple silicon. Please use an ISO or VHDX image file with an ARM-based operating system."
)
#: The reverse (a VM made on Apple Silicon, on an Intel Mac). UNVERIFIED wording.
NOT_RUNNABLE_ON_INTEL = (
    'Failed to start the VM: Unable to start "{name}". This virtual machine was created on a Mac with Apple silicon '
    "and cannot be started on a Mac with an Intel processor."
)
#: What the VM's firmware shows when no CD holds anything it can start. UNVERIFIED
#: words (Parallels' BIOS, and an EDK2-style EFI boot manager).
NO_BOOT_BIOS = "No boot device available, press Enter to continue."
NO_BOOT_EFI = "BdsDxe: No bootable option or device was found."


class Failure(Exception):
    """prlctl or prlsrvctl refusing: the message, and the exit status."""

    def __init__(self, message: str, status: int = FAILURE) -> None:
        super().__init__(message)
        self.status = status


#: prl_disk_tool's words, from its string table (Virtuozzo's open prl-disk-tool,
#: StringTable.cpp); Parallels Desktop's prl_disk_tool shares the tool's lineage.
DISK_INVALID_OPTION = "Invalid option '{}'"
DISK_INVALID_ARGS = "Invalid arguments"
DISK_NOT_FOUND = 'The specified disk image "{}" does not exist'
#: A disk whose VM runs. UNVERIFIED wording: the manual only says to use prl_disk_tool
#: "on disks of stopped virtual machines" (the running VM holds the image's lock).
DISK_IN_USE = "Failed to resize the disk: the disk image is in use by a running virtual machine."
#: Shrinking without --resize_partition. UNVERIFIED wording.
DISK_SHRINK = "Failed to resize the disk: the new size is smaller than the current size ({} Mb); use --resize_partition to shrink the last partition first."


def main(argv: list[str]) -> int:
    program, args = argv[0], argv[1:]
    fake = FakeParallels.from_environment()
    fake.log([program, *args])
    out: list[str] = []
    status = 0
    hang = 0.0
    try:
        with fake.transaction() as data:
            if data["faults"].get("login_failed", 0) > 0:
                data["faults"]["login_failed"] -= 1
                # vagrant-parallels retries on "Login failed:"; the rest of the line is unconfirmed.
                raise Failure("Login failed: Unable to connect to Parallels Service.")
            if program == "prlctl":
                hang = prlctl(data, args, out)
            elif program == "prl_disk_tool":
                prl_disk_tool(data, args, out)
            else:
                prlsrvctl(data, args, out)
    except Failure as exc:
        sys.stdout.write("\n".join(out) + ("\n" if out else ""))
        sys.stderr.write(f"{exc}\n")
        return exc.status
    if hang:
        # A graceful stop that the guest ignores: prlctl keeps waiting.
        time.sleep(hang)
        sys.stderr.write("Failed to stop the VM: Operation timed out.\n")  # wording unconfirmed
        return FAILURE
    sys.stdout.write("\n".join(out) + ("\n" if out else ""))
    return status


def _vm(data: dict[str, Any], name_or_id: str) -> dict[str, Any]:
    bare = name_or_id.strip("{}")
    for vm in data["vms"]:
        if name_or_id == vm["name"] or bare == vm["uuid"].strip("{}"):
            return vm
    raise Failure(NOT_FOUND)


def _dump(value: Any) -> str:
    # prlctl's JSON is tab-indented and escapes slashes.
    return json.dumps(value, indent="\t").replace("/", "\\/")


# -- prlctl -----------------------------------------------------------------------------


def prlctl(data: dict[str, Any], args: list[str], out: list[str]) -> float:
    if not args:
        raise Failure("Usage: prlctl <command> [options]", 1)
    command, rest = args[0], args[1:]
    if command in ("--version", "-V"):
        out.append(f"prlctl version {data['version']}")
        return 0.0
    handlers = {"create": create, "set": set_vm, "start": start, "stop": stop, "delete": delete, "list": list_vms}
    handler = handlers.get(command)
    if handler is None:
        raise Failure(f"Unknown command: {command}", 1)  # wording unconfirmed
    return handler(data, rest, out) or 0.0


def create(data: dict[str, Any], args: list[str], out: list[str]) -> None:
    if not args:
        raise Failure("Usage: prlctl create <vm_name> [options]", 1)
    name, rest = args[0], args[1:]
    opts = _flags(rest, {"--distribution", "-d", "--ostype", "-o", "--dst"}, {"--no-hdd"})
    arch = data.get("host_arch", "x86")
    dst = Path(opts.get("--dst") or Path.home() / "Parallels")
    bundle = dst / f"{name}.pvm"
    out.append("Creating the virtual machine...")
    if any(vm["name"] == name for vm in data["vms"]) or bundle.exists():
        raise Failure(f"Failed to create the VM: The virtual machine '{name}' already exists.")  # wording unconfirmed
    bundle.mkdir(parents=True)
    (bundle / "config.pvs").write_text(f"<ParallelsVirtualMachine name='{name}'/>\n")
    distribution = opts.get("--distribution") or opts.get("-d") or "other"
    out.append(f"Generate the VM configuration for {distribution}.")
    vm = {
        "uuid": "{" + str(uuid.uuid4()) + "}",
        "name": name,
        "status": "stopped",
        "distribution": distribution,
        "cpu_type": arch,  # the host's: prlctl has no option for another
        "efi_boot": "on" if arch == "arm" else "off",
        "booted": False,
        "home": str(bundle),
        "cpus": 2,
        "memsize": 2048,
        "startup_view": "window",
        "bootorder": "hdd0 cdrom0 net0",
        "nested_virt": "off",
        "devices": {
            "cdrom0": {"kind": "cdrom", "image": "", "connected": False},
            "net0": {"kind": "net", "type": "shared", "adapter_type": "virtio"},
        },
    }
    if "--no-hdd" not in opts:
        _add_hdd(vm, 65536, None)
    data["vms"].append(vm)
    out.append("The VM has been successfully created.")


def _flags(args: list[str], takes_value: set[str], flags: set[str]) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in flags:
            opts[arg] = True
        elif arg in takes_value and i + 1 < len(args):
            opts[arg] = args[i + 1]
            i += 1
        else:
            raise Failure(f"Unrecognized option: {arg}", 1)  # wording unconfirmed
        i += 1
    return opts


def _add_hdd(vm: dict[str, Any], size_mb: int, image: str | None) -> str:
    index = sum(1 for d in vm["devices"] if d.startswith("hdd"))
    device = f"hdd{index}"
    path = Path(image) if image else Path(vm["home"]) / (f"harddisk{index}.hdd" if index else "harddisk.hdd")
    path.mkdir(parents=True, exist_ok=True)  # a Parallels disk image is a bundle folder
    (path / "DiskDescriptor.xml").write_text(f"<Parallels_disk_image size_mb='{size_mb}'/>\n")
    vm["devices"][device] = {"kind": "hdd", "image": str(path), "size": size_mb}
    return device


DEVICE_OPTIONS = {"--image", "--type", "--adapter-type", "--iface", "--size", "--output", "--position", "--socket", "--mac"}
DEVICE_FLAGS = {"--connect", "--disconnect", "--enable", "--disable"}


def set_vm(data: dict[str, Any], args: list[str], out: list[str]) -> None:
    if not args:
        raise Failure("Usage: prlctl set <vm_id|vm_name> [options]", 1)
    vm = _vm(data, args[0])
    rest = args[1:]
    out.append("Configure the VM...")
    i = 0
    while i < len(rest):
        option = rest[i]

        def value() -> str:
            nonlocal i
            if i + 1 >= len(rest):
                raise Failure(f"Missing value for {option}", 1)  # wording unconfirmed
            i += 1
            return rest[i]

        if option == "--cpus":
            vm["cpus"] = int(value())
        elif option == "--memsize":
            vm["memsize"] = int(value())
        elif option == "--startup-view":
            vm["startup_view"] = value()
        elif option == "--device-bootorder":
            vm["bootorder"] = value()
        elif option == "--nested-virt":
            vm["nested_virt"] = value()
        elif option == "--efi-boot":
            choice = value()
            if choice not in ("on", "off"):
                raise Failure(f"Invalid value for --efi-boot: {choice}", 1)  # wording unconfirmed
            vm["efi_boot"] = choice
        elif option in ("--device-set", "--device-add"):
            target = value()
            settings: dict[str, Any] = {}
            while i + 1 < len(rest) and (rest[i + 1] in DEVICE_OPTIONS or rest[i + 1] in DEVICE_FLAGS):
                i += 1
                key = rest[i]
                settings[key] = True if key in DEVICE_FLAGS else value()
            if option == "--device-set":
                _device_set(vm, target, settings, out)
            else:
                _device_add(vm, target, settings, out)
        else:
            raise Failure(f"Unrecognized option: {option}", 1)  # wording unconfirmed
        i += 1
    out.append("The VM has been successfully configured.")


def _check_image(path: str) -> None:
    if not Path(path).exists():
        raise Failure(f"Failed to configure the VM: The specified image file '{path}' does not exist.")  # wording unconfirmed


def _device_set(vm: dict[str, Any], device: str, settings: dict[str, Any], out: list[str]) -> None:
    if device not in vm["devices"]:
        raise Failure(f"Failed to configure the VM: The device {device} does not exist.")  # wording unconfirmed
    entry = vm["devices"][device]
    if "--image" in settings:
        _check_image(settings["--image"])
        entry["image"] = str(Path(settings["--image"]).absolute())
    if settings.get("--connect"):
        entry["connected"] = True
    if settings.get("--disconnect"):
        entry["connected"] = False
    if "--type" in settings:
        entry["type"] = settings["--type"]
    if "--adapter-type" in settings:
        entry["adapter_type"] = settings["--adapter-type"]
    out.append(f"Configure {device}")


def _device_add(vm: dict[str, Any], kind: str, settings: dict[str, Any], out: list[str]) -> None:
    if kind == "hdd":
        device = _add_hdd(vm, int(settings.get("--size", 65536)), settings.get("--image"))
    elif kind == "cdrom":
        device = f"cdrom{sum(1 for d in vm['devices'] if d.startswith('cdrom'))}"
        image = settings.get("--image", "")
        if image:
            _check_image(image)
        vm["devices"][device] = {"kind": "cdrom", "image": str(Path(image).absolute()) if image else "", "connected": bool(settings.get("--connect"))}
    elif kind == "serial":
        device = f"serial{sum(1 for d in vm['devices'] if d.startswith('serial'))}"
        vm["devices"][device] = {"kind": "serial", "output": settings.get("--output", ""), "socket": settings.get("--socket", "")}
    elif kind == "net":
        device = f"net{sum(1 for d in vm['devices'] if d.startswith('net'))}"
        vm["devices"][device] = {"kind": "net", "type": settings.get("--type", "shared"), "adapter_type": settings.get("--adapter-type", "virtio")}
    else:
        raise Failure(f"Unrecognized device type: {kind}", 1)  # wording unconfirmed
    out.append(f"Created {device} (+)")


def _serial(vm: dict[str, Any], line: str) -> None:
    for device in vm["devices"].values():
        if device["kind"] == "serial" and device.get("output"):
            with open(device["output"], "a") as handle:
                handle.write(line + "\n")


def _boots(vm: dict[str, Any]) -> bool:
    """True if a connected CD holds what the VM's firmware starts (bootmedia.py), CDs in
    the boot order first."""
    from bootmedia import boot_medium_kind  # here: only a start needs it, and each call is a new process

    if vm.get("cpu_type") == "arm":
        firmware = "efi-aa64"  # ARM VMs have EFI only ("BIOS type": "efi-arm64")
    else:
        firmware = "efi-x64" if vm.get("efi_boot") == "on" else "bios"
    order = vm.get("bootorder", "").split()
    cdroms = sorted((d for d in vm["devices"] if d.startswith("cdrom")), key=lambda d: (d not in order, order.index(d) if d in order else 0, d))
    return any(
        vm["devices"][d].get("connected") and vm["devices"][d].get("image") and boot_medium_kind(vm["devices"][d]["image"], firmware)
        for d in cdroms
    )


def start(data: dict[str, Any], args: list[str], out: list[str]) -> None:
    vm = _vm(data, args[0] if args else "")
    out.append("Starting the VM...")
    if vm["status"] in PROCESS_STATES:
        raise Failure("Failed to start the VM: The VM is already running.")  # wording unconfirmed
    host = data.get("host_arch", "x86")
    if vm.get("cpu_type", host) != host:
        raise Failure((NOT_RUNNABLE_ON_ARM if host == "arm" else NOT_RUNNABLE_ON_INTEL).format(name=vm["name"]))
    vm["status"] = "running"
    if not _boots(vm):
        _serial(vm, NO_BOOT_EFI if vm.get("cpu_type") == "arm" or vm.get("efi_boot") == "on" else NO_BOOT_BIOS)
        vm["booted"] = False
        out.append("The VM has been successfully started.")
        return
    vm["booted"] = True
    _serial(vm, f"Linux version 6.1.0 (fake Parallels guest {vm['name']})")
    # What the pymachine boot image prints on its console once SSH is up.
    _serial(vm, f"pymachine: ready hostname={vm['name']} ip=10.211.55.5 ssh=22 data=/dev/sda")
    out.append("The VM has been successfully started.")


def stop(data: dict[str, Any], args: list[str], out: list[str]) -> float:
    vm = _vm(data, args[0] if args else "")
    kill = "--kill" in args[1:]
    out.append("Stopping the VM...")
    if vm["status"] not in PROCESS_STATES:
        raise Failure("Failed to stop the VM: The VM is not running.")  # wording unconfirmed
    if not kill and data["faults"]["stop"] == "ignore":
        return float(data["faults"]["stop_hang"])
    if not kill:
        _serial(vm, "reboot: Power down")
    vm["status"] = "stopped"
    vm["booted"] = False
    out.append("The VM has been successfully stopped.")
    return 0.0


def delete(data: dict[str, Any], args: list[str], out: list[str]) -> None:
    vm = _vm(data, args[0] if args else "")
    out.append("Removing the VM...")
    if vm["status"] in PROCESS_STATES:
        raise Failure("Failed to remove the VM: The VM is running.")  # wording unconfirmed
    shutil.rmtree(vm["home"], ignore_errors=True)
    data["vms"].remove(vm)
    out.append("The VM has been successfully removed.")


def list_vms(data: dict[str, Any], args: list[str], out: list[str]) -> None:
    show_all = json_out = no_header = info = False
    fields = ["uuid", "status", "ip_configured", "name"]
    target = None
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in ("-a", "--all"):
            show_all = True
        elif arg in ("-j", "--json"):
            json_out = True
        elif arg in ("-H", "--no-header"):
            no_header = True
        elif arg in ("-i", "--info"):
            info = True
        elif arg in ("-o", "--output") and i + 1 < len(args):
            fields = args[i + 1].split(",")
            i += 1
        elif arg.startswith("-"):
            raise Failure(f"Unrecognized option: {arg}", 1)  # wording unconfirmed
        else:
            target = arg
        i += 1
    if target is not None:
        vms = [_vm(data, target)]
    else:
        vms = [vm for vm in data["vms"] if show_all or vm["status"] != "stopped"]
    if info:
        details = [_info(vm) for vm in vms]
        if json_out:
            out.append(_dump(details))
        else:  # the plain form is not modelled beyond a few lines
            for detail in details:
                out += [f"ID: {detail['ID']}", f"Name: {detail['Name']}", f"State: {detail['State']}"]
        return
    rows = [{f: _field(vm, f) for f in fields} for vm in vms]
    if json_out:
        out.append(_dump(rows))
        return
    headers = {"uuid": "UUID", "status": "STATUS", "ip_configured": "IP_ADDR", "name": "NAME"}
    widths = {"uuid": 39, "status": 13, "ip_configured": 16, "name": 0}
    if not no_header:
        out.append(" ".join(headers.get(f, f.upper()).ljust(widths.get(f, 12)) for f in fields).rstrip())
    for row in rows:
        out.append(" ".join(str(row[f]).ljust(widths.get(f, 12)) for f in fields).rstrip())


def _info(vm: dict[str, Any]) -> dict[str, Any]:
    """`prlctl list -i -j`'s object for one VM, in the shape Parallels' own tools read
    (Parallels/parallels-vscode-extension shows one of an Apple Silicon VM): the parts
    pymachine could ever look at."""
    info: dict[str, Any] = {
        "ID": vm["uuid"].strip("{}"),
        "Name": vm["name"],
        "Description": "",
        "Type": "VM",
        "State": vm["status"],
        "OS": vm.get("distribution", "other"),
        "Template": "no",
        "Home path": str(Path(vm["home"]) / "config.pvs"),
        "Home": vm["home"] + "/",
        "Boot order": vm.get("bootorder", "") + " ",
    }
    if vm.get("cpu_type") == "arm":
        info["BIOS type"] = "efi-arm64"
    else:
        info["EFI boot"] = vm.get("efi_boot", "off")
    hardware: dict[str, Any] = {
        "cpu": {"cpus": vm["cpus"], "auto": "off", "VT-x": True, "hotplug": False, "accl": "high", "mode": "64", "type": vm.get("cpu_type", "x86")},
        "memory": {"size": f"{vm['memsize']}Mb", "auto": "off", "hotplug": False},
    }
    for name, device in vm["devices"].items():
        if device["kind"] == "cdrom":
            hardware[name] = {"enabled": True, "image": device.get("image", ""), "state": "connected" if device.get("connected") else "disconnected"}
        elif device["kind"] == "hdd":
            hardware[name] = {"enabled": True, "image": device["image"], "type": "expanded", "size": f"{device['size']}Mb"}
        elif device["kind"] == "net":
            hardware[name] = {"enabled": True, "type": device["type"], "card": device["adapter_type"]}
        elif device["kind"] == "serial":
            hardware[name] = {"enabled": True, "output": device.get("output", "")}
    info["Hardware"] = hardware
    return info


def _field(vm: dict[str, Any], field: str) -> Any:
    if field == "ip_configured":
        return "-"
    if field not in vm:
        raise Failure(f"Unknown field: {field}", 1)  # wording unconfirmed
    return vm[field]


# -- prl_disk_tool ------------------------------------------------------------------------


def prl_disk_tool(data: dict[str, Any], args: list[str], out: list[str]) -> None:
    """`prl_disk_tool resize --hdd PATH --size N[K|M|G|T] [--resize_partition] [--force]` and
    `prl_disk_tool resize -i|--info --hdd PATH`: the parts of the tool pymachine uses."""
    if not args or args[0] != "resize":
        raise Failure(DISK_INVALID_ARGS, 1)
    opts: dict[str, Any] = {}
    i = 1
    while i < len(args):
        arg = args[i]
        if arg in ("--hdd", "--size", "--units"):
            if i + 1 >= len(args):
                raise Failure(DISK_INVALID_ARGS, 1)
            opts[arg] = args[i + 1]
            i += 2
            continue
        if arg in ("--resize_partition", "--force", "-i", "--info"):
            opts[arg] = True
        else:
            raise Failure(DISK_INVALID_OPTION.format(arg), 1)
        i += 1
    if "--hdd" not in opts:
        raise Failure(DISK_INVALID_ARGS, 1)
    path = str(Path(opts["--hdd"]).absolute()).rstrip("/")
    owner, device = _disk_owner(data, path)
    if device is None:
        raise Failure(DISK_NOT_FOUND.format(opts["--hdd"]))
    if "-i" in opts or "--info" in opts:
        out += ["Disk information:", f"\tSize:\t\t\t\t\t\t{device['size']}M"]
        return
    if "--size" not in opts:
        raise Failure(DISK_INVALID_ARGS, 1)
    size = _size_mb(opts["--size"])
    if owner is not None and owner["status"] in PROCESS_STATES:
        raise Failure(DISK_IN_USE)
    if size < device["size"] and "--resize_partition" not in opts:
        raise Failure(DISK_SHRINK.format(device["size"]))
    device["size"] = size
    (Path(path) / "DiskDescriptor.xml").write_text(f"<Parallels_disk_image size_mb='{size}'/>\n")
    out.append("Operation progress 100 %")  # UNVERIFIED wording; nothing reads it


def _disk_owner(data: dict[str, Any], path: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    for vm in data["vms"]:
        for device in vm["devices"].values():
            if device["kind"] == "hdd" and device["image"].rstrip("/") == path:
                return vm, device
    return None, None


def _size_mb(text: str) -> int:
    units = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}
    number, unit = (text[:-1], text[-1].upper()) if text and text[-1].upper() in units else (text, "M")
    if not number.isdigit():
        raise Failure(DISK_INVALID_ARGS, 1)
    return int(int(number) * units[unit])


# -- prlsrvctl ----------------------------------------------------------------------------


def prlsrvctl(data: dict[str, Any], args: list[str], out: list[str]) -> None:
    if not args:
        raise Failure("Usage: prlsrvctl <command> [options]", 1)
    if args[0] == "info":
        if "--license" in args:
            _license(data, out)
        else:
            out.append(f"Version: Desktop {data['version'].replace(' (', '-').rstrip(')')}")
        return
    if args[0] == "net" and len(args) >= 3 and args[1] == "info":
        _net_info(data, args[2], "--json" in args or "-j" in args, out)
        return
    if args[0] == "net" and len(args) >= 3 and args[1] == "set":
        _net_set(data, args[2], args[3:])
        return
    raise Failure(f"Unknown command: {' '.join(args[:2])}", 1)  # wording unconfirmed


def _license(data: dict[str, Any], out: list[str]) -> None:
    out += [
        '\tstatus="ACTIVE"',
        '\tserial="XXXXXX-XXXXXX-XXXXXX-XXXXXX-XXXXXX"',
        '\texpiration="12/31/2030 00:00:00"',
        "\tcpu_total=32",
        "\tmax_memory=131072",
        f'\tedition="{data["edition"]}"',
        '\tis_trial="no"',
        '\tis_volume="no"',
    ]


def _network(data: dict[str, Any], name: str) -> dict[str, Any]:
    if name not in data["networks"]:
        raise Failure(f"Failed to get the virtual network info: The virtual network {name} does not exist.")  # wording unconfirmed
    return data["networks"][name]


def _net_info(data: dict[str, Any], name: str, as_json: bool, out: list[str]) -> None:
    net = _network(data, name)
    if as_json:
        info: dict[str, Any] = {
            "Network ID": name,
            "Type": net["type"],
            "Bound To": net["bound_to"],
            "Parallels adapter": {"IPv4 address": net["ip"], "IPv4 subnet mask": "255.255.255.0"},
            "DHCPv4 server": {"Server address": net["ip"][:-1] + "1", "IP scope start address": net["ip"][:-1] + "1", "IP scope end address": net["ip"][:-1] + "254"},
        }
        if net["type"] == "shared":
            info["NAT server"] = {"TCP rules": net["tcp"], "UDP rules": net["udp"]}
        out.append(_dump(info))
        return
    out += [f"Network ID: {name}", f"Type: {net['type']}", f"Bound To: {net['bound_to']}"]
    if net["type"] == "shared":
        out.append("NAT server:")
        for group, rules in (("TCP rules", net["tcp"]), ("UDP rules", net["udp"])):
            out.append(f"\t{group}:")
            for rule_name, rule in rules.items():
                out.append(f"\t\t{rule_name} source port={rule['source port']} destination IP/VM id={rule['destination IP/VM id']} destination port={rule['destination port']}")


def _net_set(data: dict[str, Any], name: str, args: list[str]) -> None:
    net = _network(data, name)
    tcp, udp = dict(net["tcp"]), dict(net["udp"])  # all or nothing
    i = 0
    while i < len(args):
        option = args[i]
        if i + 1 >= len(args) or not option.startswith("--nat-"):
            raise Failure(f"Unrecognized option: {option}", 1)  # wording unconfirmed
        value = args[i + 1]
        i += 2
        rules = {"tcp": tcp, "udp": udp}.get(option[6:9])
        if rules is None or option[9:] not in ("-add", "-del"):
            raise Failure(f"Unrecognized option: {option}", 1)  # wording unconfirmed
        if option.endswith("-del"):
            if value not in rules:
                raise Failure(f"The rule with '{value}' name does not exist!")  # wording unconfirmed
            del rules[value]
            continue
        parts = value.split(",")
        if len(parts) != 4 or not parts[1].isdigit() or not parts[3].isdigit():
            raise Failure(f"Invalid NAT rule '{value}'")  # wording unconfirmed
        rule_name, src, dest, dest_port = parts
        if rule_name in rules:
            raise Failure(f"The rule with '{rule_name}' name already exists!")
        rules[rule_name] = {"source port": int(src), "destination IP/VM id": dest, "destination port": int(dest_port)}
    added = [(proto, rule) for proto, rules in (("tcp", tcp), ("udp", udp)) for rule in rules if rule not in net[proto]]
    removed = [f"{proto}/{rule}" for proto, rules in (("tcp", tcp), ("udp", udp)) for rule in net[proto] if rule not in rules]
    net["tcp"], net["udp"] = tcp, udp
    for key in removed:
        net.get("listening", {}).pop(key, None)
    for proto, rule in added:
        listen(net, proto, rule)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
