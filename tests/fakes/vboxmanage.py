"""A fake `VBoxManage`: the subcommands pymachine uses, with VBoxManage's output shapes.

Run as `python vboxmanage.py VBoxManage ARGS...` by a wrapper named VBoxManage (see
tools.py). The host's state is in $PYMACHINE_FAKE_VBOX; every argv is logged beside it.
Errors print as VBoxManage prints them:

    VBoxManage: error: TEXT
    VBoxManage: error: Details: code NAME (0x...), component C, interface I, callee nsISupports
    VBoxManage: error: Context: "CALL" at line N of file FILE.cpp

with exit status 1 (2 for a syntax error). Options are taken as `--opt value` or
`--opt=value`, as VBoxManage's RTGetOpt takes them.

The ARM platform (VirtualBox 7.1+): `createvm --platform-architecture=arm|x86` (the
default is the --ostype's platform, else the host's), and modifyvm's x86-only options
(--hwvirtex, --nestedpaging, --pae, --longmode, --x2apic ...) refused on an ARM VM the
way VirtualBox 7.2's modifyvm refuses them: its x86 handler is not consulted for an ARM
VM, the ARM handler does not know the option, and errorGetOpt prints
"Invalid option case N" (VBoxManageModifyVM.cpp, VBoxManageHelp.cpp). The number N is
the option's MODIFYVM_* enum value, which depends on the build's #ifdefs: UNVERIFIED.
"""

from __future__ import annotations

import copy
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from vbox_model import (  # noqa: E402
    CODE_DESCRIPTIONS,
    CODE_NAMES,
    VBOX_E_NOT_SUPPORTED,
    VBOX_E_PLATFORM_ARCH_NOT_SUPPORTED,
    FakeVirtualBox,
    Host,
    VBoxFault,
)

PROGRESS = "0%...10%...20%...30%...40%...50%...60%...70%...80%...90%...100%"


class Syntax(Exception):
    """A command line VBoxManage would reject before talking to VBoxSVC."""


class Failed(Exception):
    """A VBoxFault together with the C++ call VBoxManage names in its Context line."""

    def __init__(self, fault: VBoxFault, context: str, source: str, line: int) -> None:
        super().__init__(fault.text)
        self.fault = fault
        self.context = context
        self.source = source
        self.line = line


class Plain(Exception):
    """An error VBoxManage prints as a bare `VBoxManage: error: TEXT` line."""


def main(argv: list[str]) -> int:
    program, args = argv[0], argv[1:]
    fake = FakeVirtualBox.from_environment()
    fake.log([program, *args])
    out: list[str] = []
    err: list[str] = []
    status = 0
    try:
        with fake.transaction() as host:
            status = dispatch(host, args, out, err)
    except Syntax as exc:
        err.append(f"VBoxManage: error: {exc}")
        status = 2
    except Plain as exc:
        err.append(f"VBoxManage: error: {exc}")
        status = _failing_status(fake)
    except Failed as exc:
        err.extend(_format(exc))
        status = _failing_status(fake)
    if out:
        sys.stdout.write("\n".join(out) + "\n")
    if err:
        sys.stderr.write("\n".join(err) + "\n")
    return status


def _failing_status(fake: FakeVirtualBox) -> int:
    # Some VBoxManage paths print their error and still exit 0.
    with fake.transaction() as host:
        if host.take("exit_zero"):
            return 0
    return 1


def _format(exc: Failed) -> list[str]:
    fault = exc.fault
    name = CODE_NAMES.get(fault.code, f"{fault.code:#x}")
    lines = []
    if fault.extended and fault.text:
        lines += [f"VBoxManage: error: {line}" for line in fault.text.splitlines()]
        lines.append(f"VBoxManage: error: Details: code {name} ({fault.code:#x}), component {fault.component}, interface {fault.interface}, callee nsISupports")
    else:
        description = CODE_DESCRIPTIONS.get(fault.code, "Unspecified error")
        lines.append(f"VBoxManage: error: Code {name} ({fault.code:#x}) - {description} (extended info not available)")
    lines.append(f'VBoxManage: error: Context: "{exc.context}" at line {exc.line} of file {exc.source}')
    return lines


def _call(context: str, source: str, line: int, action: Any) -> Any:
    try:
        return action()
    except VBoxFault as fault:
        raise Failed(fault, context, source, line) from None


def _find(host: Host, name: str, source: str, line: int) -> dict[str, Any]:
    return _call("FindMachine(Bstr(a->argv[0]).raw(), machine.asOutParam())", source, line, lambda: host.find(name))


def _split_equals(args: list[str]) -> list[str]:
    """`--opt=value` as `--opt value`: RTGetOpt accepts both spellings."""
    split: list[str] = []
    for arg in args:
        if arg.startswith("--") and "=" in arg:
            split += arg.split("=", 1)
        else:
            split.append(arg)
    return split


def dispatch(host: Host, args: list[str], out: list[str], err: list[str]) -> int:
    if not args:
        raise Syntax("Not enough parameters")
    command, rest = args[0], _split_equals(args[1:])
    if command in ("--version", "-v", "-version", "-V"):
        if host.faults.get("version_hang"):
            time.sleep(float(host.faults["version_hang"]))
        if host.faults.get("version_warning"):
            out.append(host.faults["version_warning"])
        out.append(f"{host.version}r{host.data['revision']}")
        return 0
    handlers = {
        "createvm": createvm,
        "modifyvm": modifyvm,
        "storagectl": storagectl,
        "storageattach": storageattach,
        "createmedium": createmedium,
        "createhd": createmedium,
        "closemedium": closemedium,
        "modifymedium": modifymedium,
        "modifyhd": modifymedium,
        "showmediuminfo": showmediuminfo,
        "showhdinfo": showmediuminfo,
        "startvm": startvm,
        "controlvm": controlvm,
        "showvminfo": showvminfo,
        "unregistervm": unregistervm,
        "discardstate": discardstate,
        "sharedfolder": sharedfolder,
        "list": list_command,
    }
    handler = handlers.get(command)
    if handler is None:
        raise Syntax(f"Invalid command '{command}'")
    return handler(host, rest, out, err)


def _options(args: list[str], takes_value: set[str], flags: set[str]) -> tuple[list[str], dict[str, list[str]]]:
    """(positional arguments, option -> values) with --opt=value and --opt value both accepted."""
    positional: list[str] = []
    options: dict[str, list[str]] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--") and "=" in arg:
            key, value = arg.split("=", 1)
            if key not in takes_value:
                raise Syntax(f"Unknown option: {key}")
            options.setdefault(key, []).append(value)
        elif arg.startswith("-") and len(arg) > 1:
            if arg in flags:
                options.setdefault(arg, []).append("")
            elif arg in takes_value:
                if i + 1 >= len(args):
                    raise Syntax(f"Missing value for option {arg}")
                options.setdefault(arg, []).append(args[i + 1])
                i += 1
            else:
                raise Syntax(f"Unknown option: {arg}")
        else:
            positional.append(arg)
        i += 1
    return positional, options


# -- createvm ------------------------------------------------------------------------------


def _version_at_least(host: Host, major: int, minor: int) -> bool:
    numbers = host.version.split(".")
    return (int(numbers[0]), int(numbers[1])) >= (major, minor)


def createvm(host: Host, args: list[str], out: list[str], err: list[str]) -> int:
    takes = {"--name", "--basefolder", "--ostype", "--groups", "--uuid", "--default"}
    if _version_at_least(host, 7, 1):  # the ARM platform came with VirtualBox 7.1
        takes |= {"--platform-architecture", "--platform-arch"}
    _, opts = _options(args, takes, {"--register"})
    if "--name" not in opts:
        raise Syntax("Parameter --name is required")
    name = opts["--name"][-1]
    base = opts.get("--basefolder", [str(Path.home() / "VirtualBox VMs")])[-1]
    ostype = opts.get("--ostype", [""])[-1]
    asked = (opts.get("--platform-architecture") or opts.get("--platform-arch") or [""])[-1]
    if asked:
        if asked.lower() not in ("x86", "arm"):
            raise Plain(f"Invalid --platform-architecture argument '{asked}'")
        platform = asked.lower()
    elif ostype:
        # The guest OS type names its platform; "_arm64" types are the ARM ones (Global.cpp).
        platform = "arm" if ostype.endswith("_arm64") else "x86"
    else:
        platform = host.arch  # "use the host's platform type as the VM platform type"
    context = (
        "CreateMachine(bstrSettingsFile.raw(), bstrName.raw(), platformArch, ComSafeArrayAsInParam(groups), bstrOsTypeId.raw(), "
        "createFlags.raw(), bstrCipher.raw(), bstrPasswordId.raw(), Bstr(strPassword).raw(), machine.asOutParam())"
    )
    machine = _call(context, "VBoxManageMisc.cpp", 421, lambda: host.new_machine(name, base, ostype, platform))
    _call("SaveSettings()", "VBoxManageMisc.cpp", 430, lambda: host.check_platform(platform, "create"))
    if "--register" in opts:
        _call("RegisterMachine(machine)", "VBoxManageMisc.cpp", 436, lambda: host.register(machine))
        out.append(f"Virtual machine '{name}' is created and registered.")
    else:
        out.append(f"Virtual machine '{name}' is created.")
    out.append(f"UUID: {machine['uuid']}")
    out.append(f"Settings file: '{machine['settings_file']}'")
    return 0


# -- modifyvm ------------------------------------------------------------------------------

_ON_OFF = {"on", "off"}
_BOOT = {"none", "floppy", "dvd", "disk", "net"}
_NIC_TYPES = {"Am79C970A", "Am79C973", "Am79C960", "82540EM", "82543GC", "82545EM", "virtio"}
#: VBoxManage's older and newer spellings of the options pymachine may pass (OPT2 pairs).
_ALIASES = {
    "--os-type": "--ostype",
    "--nic-type1": "--nictype1",
    "--cable-connected1": "--cableconnected1",
    "--nat-dns-proxy1": "--natdnsproxy1",
    "--nat-pf1": "--natpf1",
    "--rtc-use-utc": "--rtcuseutc",
    "--usbxhci": "--usb-xhci",
    "--natlocalhostreachable1": "--nat-localhostreachable1",
    "--uart-mode1": "--uartmode1",
    "--nested-paging": "--nestedpaging",
    "--x86-nested-paging": "--nestedpaging",
    "--x86-hwvirtex": "--hwvirtex",
    "--bios-boot-menu": "--biosbootmenu",
    "--firmware-boot-menu": "--biosbootmenu",
}
#: modifyvm's x86-only options, in the order of their MODIFYVM_X86_* values
#: (VBoxManageModifyVM.cpp); each takes on/off. An ARM VM refuses every one of them.
_X86_ONLY = [
    "--apic", "--cpuid-remove", "--cpuidremove", "--cpuid-remove-all", "--hpet", "--hwvirtex",
    "--ibpb-on-vm-entry", "--ibpb-on-vm-exit", "--l1d-flush-on-sched", "--l1d-flush-on-vm-entry",
    "--largepages", "--longmode", "--mds-clear-on-sched", "--mds-clear-on-vm-entry", "--nestedpaging",
    "--pae", "--cpuid-set", "--spec-ctrl", "--triplefaultreset", "--virt-vmsave-vmload", "--vtxux",
    "--vtxvpid", "--x2apic",
]  # fmt: skip
#: MODIFYVM_X86_APIC's value in a VirtualBox 7.2 macOS build. UNVERIFIED: it moves with
#: the build's #ifdefs; the driver never depends on it.
_X86_CASE_BASE = 1187
_GRAPHICS = {
    "none": "none", "disabled": "none", "vboxvga": "vboxvga", "vbox": "vboxvga", "vga": "vboxvga", "vesa": "vboxvga",
    "vmsvga": "vmsvga", "vmware": "vmsvga", "vboxsvga": "vboxsvga", "svga": "vboxsvga", "qemuramfb": "qemuramfb",
}  # fmt: skip
_MOUSE = {"ps2": "ps2mouse", "usb": "usbmouse", "usbtablet": "usbtablet", "usbmultitouch": "usbmultitouch", "none": "none"}
_KEYBOARD = {"ps2": "ps2kbd", "usb": "usbkbd", "none": "none"}


def _platform_refusal(option: str, value: str) -> VBoxFault:
    """UNVERIFIED: VirtualBox's words when an ARM-only setting meets an x86 VM, or the
    reverse (Platform::setChipsetType shows no check in the 7.1 sources; a later
    release or the VM's start may be where it is refused)."""
    return VBoxFault(VBOX_E_PLATFORM_ARCH_NOT_SUPPORTED, f"The value '{value}' of {option} is not supported by this VM's platform", "PlatformWrap", "IPlatform")


def modifyvm(host: Host, args: list[str], out: list[str], err: list[str]) -> int:
    if not args:
        raise Syntax("Not enough parameters")
    name, rest = args[0], args[1:]
    machine = _find(host, name, "VBoxManageModifyVM.cpp", 627)
    _call("LockMachine(a->session, LockType_Write)", "VBoxManageModifyVM.cpp", 640, lambda: host.write_lock(machine))
    # VBoxManage changes the session's copy and saves it only if every option worked.
    draft = copy.deepcopy(machine)
    i = 0

    def value() -> str:
        nonlocal i
        if i + 1 >= len(rest):
            raise Syntax(f"Missing argument to '{rest[i]}'")
        i += 1
        return rest[i]

    while i < len(rest):
        option = _ALIASES.get(rest[i], rest[i])
        bare = "--" + option[2:].removeprefix("x86-")
        if bare in _X86_ONLY and draft.get("platform") == "arm":
            # Parsed (it is a valid option), then neither handler takes it.
            raise Plain(f"Invalid option case {_X86_CASE_BASE + _X86_ONLY.index(bare)}")
        if option == "--cpus":
            draft["cpus"] = _number(value(), option)
        elif option == "--memory":
            draft["memory"] = _number(value(), option)
        elif option == "--firmware":
            draft["firmware"] = {"bios": "BIOS", "efi": "EFI", "efi32": "EFI32", "efi64": "EFI64"}.get(value(), None) or _bad(option, rest[i])
        elif option == "--ostype":
            draft["ostype"] = value()
        elif option in ("--acpi", "--ioapic", "--rtcuseutc", "--hwvirtex", "--nestedpaging"):
            draft[option[2:]] = _on_off(value(), option)
        elif option in ("--pae", "--longmode", "--x2apic", "--apic", "--hpet", "--largepages", "--vtxvpid", "--vtxux", "--triplefaultreset"):
            _on_off(value(), option)
        elif option == "--chipset":
            chipset = value().lower()
            chipset = {"armv8": "armv8virtual"}.get(chipset, chipset)
            if chipset not in ("piix3", "ich9", "armv8virtual"):
                raise Plain(f"Invalid --chipset argument '{rest[i]}' (valid: piix3,ich9,armv8virtual)")
            if (chipset == "armv8virtual") != (draft.get("platform") == "arm"):
                raise Failed(_platform_refusal(option, rest[i]), "COMSETTER(ChipsetType)(ChipsetType_ARMv8Virtual)", "VBoxManageModifyVM.cpp", 3089)
            draft["chipset"] = chipset
        elif option == "--graphicscontroller":
            kind = _GRAPHICS.get(value().lower())
            if kind is None:
                raise Plain(f"Invalid --graphicscontroller argument '{rest[i]}'")
            if kind == "qemuramfb" and draft.get("platform") != "arm":
                raise Failed(_platform_refusal(option, rest[i]), "COMSETTER(GraphicsControllerType)(GraphicsControllerType_QemuRamFB)", "VBoxManageModifyVM.cpp", 1203)
            draft["graphics"] = kind
        elif option in ("--usb-xhci", "--usb-ehci", "--usb-ohci", "--usb"):
            kind = {"--usb": "ohci"}.get(option, option[6:])
            draft.setdefault("usb", {"ohci": "off", "ehci": "off", "xhci": "off"})[kind] = _on_off(value(), option)
        elif option in ("--mouse", "--keyboard"):
            table = _MOUSE if option == "--mouse" else _KEYBOARD
            kind = table.get(value().lower())
            if kind is None:
                raise Plain(f"Invalid type '{rest[i]}' specfied for {'pointing device' if option == '--mouse' else 'keyboard'}")
            draft[option[2:]] = kind
            usb = draft.setdefault("usb", {"ohci": "off", "ehci": "off", "xhci": "off"})
            if kind.startswith("usb") and usb["ohci"] == "off" and usb["xhci"] == "off":
                usb["ohci"] = "on"  # "If there's nothing, enable OHCI (always available)."
        elif option == "--nat-localhostreachable1":
            draft["nics"]["1"]["localhostreachable"] = _on_off(value(), option)
        elif option == "--biosbootmenu":
            choice = value()
            if choice not in ("disabled", "menuonly", "messageandmenu"):
                _bad(option, choice)
            draft["biosbootmenu"] = choice
        elif option.startswith("--boot") and option[6:] in ("1", "2", "3", "4"):
            device = value()
            if device not in _BOOT:
                _bad(option, device)
            draft["boot"][int(option[6:]) - 1] = device
        elif option == "--nic1":
            draft["nics"]["1"]["attachment"] = value()
        elif option == "--nictype1":
            kind = value()
            if kind not in _NIC_TYPES:
                _bad(option, kind)
            draft["nics"]["1"]["type"] = kind
        elif option == "--cableconnected1":
            draft["nics"]["1"]["cable"] = _on_off(value(), option)
        elif option == "--natdnsproxy1":
            draft["nics"]["1"]["dnsproxy"] = _on_off(value(), option)
        elif option == "--uart1":
            first = value()
            uart = draft["uarts"].setdefault("1", {"enabled": False, "io": 0x3F8, "irq": 4, "mode": "disconnected", "path": ""})
            if first == "off":
                uart["enabled"] = False
            else:
                io = int(first, 0) if first.lower().startswith("0x") else int(first, 16)
                irq = _number(value(), option)
                if io > 0xFFFF:
                    # SerialPortImpl.cpp: "@todo BUGBUG Check with ARM", so ARM VMs too.
                    raise Failed(
                        VBoxFault(0x80070057, f"Invalid I/O port base address of the serial port 0: {io} (must be in range [0, 0xFFFF])", "SerialPortWrap", "ISerialPort"),
                        "COMSETTER(IOAddress)(uVal)", "VBoxManageModifyVM.cpp", 2330,
                    )  # fmt: skip
                uart.update({"enabled": True, "io": io, "irq": irq})
        elif option == "--uartmode1":
            mode = value()
            uart = draft["uarts"].setdefault("1", {"enabled": False, "io": 0x3F8, "irq": 4, "mode": "disconnected", "path": ""})
            if mode == "disconnected":
                uart.update({"mode": mode, "path": ""})
            elif mode in ("file", "server", "client", "tcpserver", "tcpclient"):
                uart.update({"mode": mode, "path": value()})
            else:
                uart.update({"mode": "device", "path": mode})
        elif option == "--natpf1":
            spec = value()
            if spec == "delete":
                rule_name = value()
                context = "RemoveRedirect(Bstr(ValueUnion.psz).raw())"
                _call(context, "VBoxManageModifyVM.cpp", 1888, lambda: host.remove_rule(draft, "1", rule_name))
            else:
                rule = _parse_rule(spec, option)
                context = "AddRedirect(Bstr(strName).raw(), proto, Bstr(strHostIp).raw(), RTStrToUInt16(strHostPort), Bstr(strGuestIp).raw(), RTStrToUInt16(strGuestPort))"
                _call(context, "VBoxManageModifyVM.cpp", 1864, lambda: host.add_rule(draft, "1", rule))
        else:
            raise Syntax(f"Unknown option: {option}")
        i += 1
    machine.clear()
    machine.update(draft)
    host.save_settings(machine)
    return 0


def _number(text: str, option: str) -> int:
    if not text.isdigit():
        raise Syntax(f"Invalid value '{text}' for option {option}")
    return int(text)


def _on_off(text: str, option: str) -> str:
    if text not in _ON_OFF:
        raise Syntax(f"Invalid {option[2:]} argument '{text}'")
    return text


def _bad(option: str, text: str) -> str:
    raise Syntax(f"Invalid {option[2:]} argument '{text}'")


def _parse_rule(spec: str, option: str) -> dict[str, Any]:
    parts = spec.split(",")
    if len(parts) < 6:
        raise Syntax(f"Missing or invalid argument to '{option}'")
    name, proto, host_ip, host_port, guest_ip = (p.strip() for p in parts[:5])
    guest_port = ",".join(parts[5:]).strip()
    if proto.lower() not in ("tcp", "udp"):
        raise Syntax(f"Wrong rule proto '{proto}' specified -- only 'udp' and 'tcp' are allowed.")
    return {
        "name": name,
        "proto": proto.lower(),
        "host_ip": host_ip,
        "host_port": _port(host_port),
        "guest_ip": guest_ip,
        "guest_port": _port(guest_port),
    }


def _port(text: str) -> int:
    # RTStrToUInt16: the leading digits, 0 when there are none.
    digits = ""
    for char in text:
        if not char.isdigit():
            break
        digits += char
    return int(digits or 0) & 0xFFFF


# -- storage -------------------------------------------------------------------------------


def storagectl(host: Host, args: list[str], out: list[str], err: list[str]) -> int:
    positional, opts = _options(args, {"--name", "--add", "--controller", "--hostiocache", "--portcount", "--bootable"}, {"--remove"})
    if not positional or "--name" not in opts:
        raise Syntax("Storage controller name not specified")
    machine = _find(host, positional[0], "VBoxManageStorageController.cpp", 1060)
    _call("LockMachine(a->session, LockType_Write)", "VBoxManageStorageController.cpp", 1068, lambda: host.write_lock(machine))
    name = opts["--name"][-1]
    if "--add" in opts:
        bus = opts["--add"][-1].lower()
        if bus not in ("ide", "sata", "scsi", "floppy", "sas", "usb", "pcie", "virtio-scsi", "virtio"):
            raise Plain(f"Invalid --add argument '{opts['--add'][-1]}'")
        context = "AddStorageController(Bstr(pszCtl).raw(), StorageBus_SATA, ctl.asOutParam())"
        controller = _call(context, "VBoxManageStorageController.cpp", 1133, lambda: host.add_controller(machine, name, bus))
    else:
        controller = machine["controllers"].get(name)
        if controller is None:
            raise Failed(VBoxFault(0x80BB0001, f"Could not find a storage controller named '{name}'", "MachineWrap", "IMachine"), "GetStorageControllerByName(Bstr(pszCtl).raw(), ctl.asOutParam())", "VBoxManageStorageController.cpp", 1160)
    if "--hostiocache" in opts:
        controller["hostiocache"] = _on_off(opts["--hostiocache"][-1], "--hostiocache")
    host.save_settings(machine)
    return 0


def storageattach(host: Host, args: list[str], out: list[str], err: list[str]) -> int:
    positional, opts = _options(args, {"--storagectl", "--port", "--device", "--type", "--medium", "--mtype", "--nonrotational", "--discard"}, set())
    if not positional or "--storagectl" not in opts:
        raise Syntax("Storage controller name not specified")
    machine = _find(host, positional[0], "VBoxManageStorageController.cpp", 210)
    _call("LockMachine(a->session, LockType_Write)", "VBoxManageStorageController.cpp", 225, lambda: host.write_lock(machine))
    kind = opts.get("--type", ["hdd"])[-1]
    if kind not in ("dvddrive", "hdd", "fdd"):
        raise Syntax(f"Invalid --type argument '{kind}'")
    medium = opts.get("--medium", [""])[-1]
    if not medium:
        raise Syntax("Missing --medium argument")
    port = int(opts.get("--port", ["0"])[-1])
    device = int(opts.get("--device", ["0"])[-1])
    controller = opts["--storagectl"][-1]
    context = "AttachDevice(Bstr(pszCtl).raw(), port, device, DeviceType_HardDisk, pMedium2Mount)"
    _call(context, "VBoxManageStorageController.cpp", 975, lambda: host.attach(machine, controller, port, device, kind, medium))
    host.save_settings(machine)
    return 0


def createmedium(host: Host, args: list[str], out: list[str], err: list[str]) -> int:
    positional, opts = _options(args, {"--filename", "--size", "--sizebyte", "--format", "--variant", "--diffparent"}, set())
    if positional and positional[0] not in ("disk", "dvd", "floppy"):
        raise Syntax(f"Invalid parameter '{positional[0]}'")
    if "--filename" not in opts:
        raise Syntax("Parameters --filename is required")
    size = int(opts.get("--size", ["0"])[-1])
    fmt = opts.get("--format", ["VDI"])[-1]
    path = opts["--filename"][-1]
    context = "CreateBaseStorage(size, ComSafeArrayAsInParam(l_variants), progress.asOutParam())"
    medium = _call(context, "VBoxManageDisk.cpp", 443, lambda: host.create_disk(path, size, fmt))
    err.append(PROGRESS)
    out.append(f"Medium created. UUID: {medium['uuid']}")
    return 0


def closemedium(host: Host, args: list[str], out: list[str], err: list[str]) -> int:
    positional, opts = _options(args, set(), {"--delete"})
    if positional and positional[0] in ("disk", "dvd", "floppy"):
        positional = positional[1:]
    if not positional:
        raise Syntax("Disk name or UUID required")
    _call("Close()", "VBoxManageDisk.cpp", 1789, lambda: host.close_disk(positional[0], "--delete" in opts))
    if "--delete" in opts:
        err.append(PROGRESS)
    return 0


def modifymedium(host: Host, args: list[str], out: list[str], err: list[str]) -> int:
    """`modifymedium [disk] FILE|UUID --resize MB` (VBoxManageDisk.cpp's handleModifyMedium);
    only --resize and --resizebyte are modelled."""
    positional, opts = _options(args, {"--resize", "--resizebyte", "--type", "--autoreset", "--property", "--move", "--setlocation", "--description"}, {"--compact"})
    if positional and positional[0] in ("disk", "dvd", "floppy"):
        positional = positional[1:]
    if not positional:
        raise Syntax("Medium name or UUID required")
    if len(positional) > 1:
        raise Syntax(f"Invalid parameter '{positional[1]}'")
    if "--resize" not in opts and "--resizebyte" not in opts:
        raise Syntax("No operation specified")
    path = positional[0]
    medium = _call("OpenMedium(Bstr(pszFilenameOrUuid).raw(), enmDevType, enmAccessMode, fForceNewUuidOnOpen, pMedium.asOutParam())", "VBoxManageDisk.cpp", 216, lambda: host.hard_disk(path))
    if "--resize" in opts:
        size_mb = _number(opts["--resize"][-1], "--resize")
        current = medium.get("size_mb", 0)
        if size_mb * 1024 * 1024 > current * 1024 * 1024 * 1000:
            raise Plain(f"Error: Attempt to resize the medium from {current}.0 MB to {size_mb}.0 MB. Use --resizebyte if this is intended!")
    else:
        size_mb = _number(opts["--resizebyte"][-1], "--resizebyte") // (1024 * 1024)
    err.append("0%...")
    try:
        host.resize_disk(path, size_mb)
    except VBoxFault as fault:
        if fault.code == VBOX_E_NOT_SUPPORTED:
            # A failure of the resize task comes through the progress object.
            err.append(f"Progress state: {CODE_NAMES[fault.code]}")
            fault.text = f"Failed to resize medium\n{fault.text}"
            raise Failed(fault, "RTEXITCODE handleModifyMedium(HandlerArg *)", "VBoxManageDisk.cpp", 806) from None
        raise Failed(fault, "Resize(cbResize, pProgress.asOutParam())", "VBoxManageDisk.cpp", 797) from None
    err[-1] = PROGRESS
    return 0


def showmediuminfo(host: Host, args: list[str], out: list[str], err: list[str]) -> int:
    """`showmediuminfo [disk] FILE|UUID`: the lines of a hard disk image pymachine reads."""
    positional, _ = _options(args, set(), set())
    if positional and positional[0] in ("disk", "dvd", "floppy"):
        positional = positional[1:]
    if not positional:
        raise Syntax("Medium name or UUID required")
    location = str(Path(positional[0]).absolute())
    medium = _call("OpenMedium(Bstr(pszFilenameOrUuid).raw(), enmDevType, enmAccessMode, fForceNewUuidOnOpen, pMedium.asOutParam())", "VBoxManageDisk.cpp", 216, lambda: host.hard_disk(location))
    users = host.users_of(location)
    out += [
        f"UUID:           {medium['uuid']}",
        "Parent UUID:    base",
        "State:          created",
        "Type:           normal (base)",
        f"Location:       {location}",
        f"Storage format: {medium.get('format', 'VDI')}",
        "Format variant: dynamic default",
        f"Capacity:       {medium.get('size_mb', 0)} MBytes",
        f"Size on disk:   {max(1, Path(location).stat().st_size // (1024 * 1024))} MBytes",
        "Encryption:     disabled",
        "Property:       AllocationBlockSize=1048576",
    ]
    if users:
        out.append("In use by VMs:  " + ", ".join(f"{m['name']} (UUID: {m['uuid']})" for m in users))
    return 0


# -- lifecycle ------------------------------------------------------------------------------


def sharedfolder(host: Host, args: list[str], out: list[str], err: list[str]) -> int:
    """`sharedfolder add VM --name N --hostpath P [--readonly] [--automount] [--auto-mount-point P]`."""
    if not args or args[0] not in ("add", "remove"):
        raise Syntax("Invalid parameter '%s'" % (args[0] if args else ""))
    if args[0] == "remove":
        raise Syntax("sharedfolder remove is not modelled by this fake")
    positional, opts = _options(args[1:], {"--name", "-name", "--hostpath", "-hostpath", "--auto-mount-point"}, {"--readonly", "-readonly", "--automount", "-automount", "--transient", "-transient"})
    name = (opts.get("--name") or opts.get("-name") or [""])[-1]
    path = (opts.get("--hostpath") or opts.get("-hostpath") or [""])[-1]
    if not positional or not name or not path:
        raise Syntax("Not all required parameters were specified")
    if "--transient" in opts or "-transient" in opts:
        raise Syntax("--transient is not modelled by this fake")
    machine = _find(host, positional[0], "VBoxManageMisc.cpp", 1150)
    _call("LockMachine(a->session, LockType_Write)", "VBoxManageMisc.cpp", 1161, lambda: host.write_lock(machine))
    writable = "--readonly" not in opts and "-readonly" not in opts
    context = "CreateSharedFolder(Bstr(name).raw(), Bstr(hostpath).raw(), fWritable, fAutoMount, Bstr(strAutoMountPoint).raw())"
    _call(context, "VBoxManageMisc.cpp", 1164, lambda: host.add_shared_folder(machine, name, path, writable))
    host.save_settings(machine)
    return 0


def startvm(host: Host, args: list[str], out: list[str], err: list[str]) -> int:
    positional, opts = _options(args, {"--type", "-E", "--putenv"}, set())
    if not positional:
        raise Syntax("Not enough parameters")
    kind = opts.get("--type", ["gui"])[-1]
    if kind not in ("gui", "headless", "sdl", "separate"):
        raise Syntax(f"Invalid session type '{kind}'")
    for name in positional:
        machine = _find(host, name, "VBoxManageMisc.cpp", 794)
        out.append(f'Waiting for VM "{name}" to power on...')
        context = "LaunchVMProcess(a->session, sessionType.raw(), ComSafeArrayAsInParam(aBstrEnv), progress.asOutParam())"
        _call(context, "VBoxManageMisc.cpp", 846, lambda: host.start(machine))
        out.append(f'VM "{name}" has been successfully started.')
    return 0


def controlvm(host: Host, args: list[str], out: list[str], err: list[str]) -> int:
    if len(args) < 2:
        raise Syntax("Not enough parameters")
    name, action, rest = args[0], args[1], args[2:]
    machine = _find(host, name, "VBoxManageControlVM.cpp", 225)
    if not host.has_console(machine):
        raise Plain(f"Machine '{name}' is not currently running.")
    if action == "acpipowerbutton":
        host.press_power_button(machine)
    elif action == "poweroff":
        host.power_off(machine)
        err.append(PROGRESS)
    elif action == "natpf1":
        if not rest:
            raise Syntax(f"Missing argument to '{action}'.")
        if rest[0] == "delete":
            rule_name = rest[1] if len(rest) > 1 else ""
            context = "RemoveRedirect(Bstr(a->argv[3]).raw())"
            _call(context, "VBoxManageControlVM.cpp", 1179, lambda: host.remove_rule(machine, "1", rule_name))
        else:
            rule = _parse_rule(rest[0], action)
            context = "AddRedirect(Bstr(strName).raw(), proto, Bstr(strHostIp).raw(), RTStrToUInt16(strHostPort), Bstr(strGuestIp).raw(), RTStrToUInt16(strGuestPort))"
            _call(context, "VBoxManageControlVM.cpp", 1228, lambda: host.add_rule(machine, "1", rule))
        host.save_settings(machine)
    else:
        raise Syntax(f"Invalid parameter '{action}'.")
    return 0


def unregistervm(host: Host, args: list[str], out: list[str], err: list[str]) -> int:
    positional, opts = _options(args, set(), {"--delete", "--delete-all"})
    if not positional:
        raise Syntax("VM name required")
    machine = _find(host, positional[0], "VBoxManageMisc.cpp", 211)
    context = "Unregister(CleanupMode_DetachAllReturnHardDisksOnly, ComSafeArrayAsOutParam(aMedia))"
    disks = _call(context, "VBoxManageMisc.cpp", 223, lambda: host.unregister(machine))
    if "--delete" in opts or "--delete-all" in opts:
        host.delete_config(machine, disks)
        err.append(PROGRESS)
    return 0


def discardstate(host: Host, args: list[str], out: list[str], err: list[str]) -> int:
    if not args:
        raise Syntax("Not enough parameters")
    machine = _find(host, args[0], "VBoxManageMisc.cpp", 1021)
    _call("DiscardSavedState(true /* fDeleteFile */)", "VBoxManageMisc.cpp", 1040, lambda: host.discard_state(machine))
    return 0


def list_command(host: Host, args: list[str], out: list[str], err: list[str]) -> int:
    if not args or args[0] not in ("vms", "runningvms"):
        raise Syntax("Invalid parameter")
    for machine in host.machines():
        if args[0] == "vms" or machine["state"] == "running":
            out.append(f'"{machine["name"]}" {{{machine["uuid"]}}}')
    return 0


# -- showvminfo --------------------------------------------------------------------------


def showvminfo(host: Host, args: list[str], out: list[str], err: list[str]) -> int:
    positional, opts = _options(args, {"--log"}, {"--machinereadable", "--details"})
    if not positional:
        raise Syntax("VM name or UUID required")
    machine = _find(host, positional[0], "VBoxManageInfo.cpp", 3170)
    if "--machinereadable" not in opts:
        out.append(f"Name:                        {machine['name']}")
        out.append(f"State:                       {machine['state']}")
        return 0
    out.extend(machinereadable(machine))
    return 0


def machinereadable(machine: dict[str, Any]) -> list[str]:
    """The lines `showvminfo --machinereadable` prints, in VBoxManageInfo.cpp's order."""
    settings = Path(machine["settings_file"])
    lines = [
        f'name="{machine["name"]}"',
        'groups="/"',
        f'ostype="{machine["ostype"]}"',
        f'UUID="{machine["uuid"]}"',
        f'CfgFile="{settings}"',
        f'SnapFldr="{settings.parent / "Snapshots"}"',
        f'LogFldr="{settings.parent / "Logs"}"',
        f'hardwareuuid="{machine["uuid"]}"',
        f"memory={machine['memory']}",
        'pagefusion="off"',
        "vram=8",
        "cpuexecutioncap=100",
        'hpet="off"',
        'cpu-profile="host"',
        f'chipset="{machine.get("chipset", "piix3")}"',
        f'firmware="{machine["firmware"]}"',
        f"cpus={machine['cpus']}",
        'pae="on"',
        'longmode="on"',
        'triplefaultreset="off"',
        'apic="on"',
        'x2apic="on"',
        'nested-hw-virt="off"',
        f'bootmenu="{machine["biosbootmenu"]}"',
    ]
    lines += [f'boot{i + 1}="{device}"' for i, device in enumerate(machine["boot"])]
    lines += [
        f'acpi="{machine["acpi"]}"',
        f'ioapic="{machine["ioapic"]}"',
        'biosapic="apic"',
        "biossystemtimeoffset=0",
        f'rtcuseutc="{machine["rtcuseutc"]}"',
        f'hwvirtex="{machine["hwvirtex"]}"',
        f'nestedpaging="{machine["nestedpaging"]}"',
        'largepages="off"',
        'vtxvpid="on"',
        'vtxux="on"',
        f'VMState="{machine["state"]}"',
        f'VMStateChangeTime="{machine["state_changed"]}"',
        f'graphicscontroller="{machine.get("graphics", "vboxvga")}"',
        'monitorcount=1',
        'accelerate3d="off"',
    ]
    for index, (name, controller) in enumerate(machine["controllers"].items()):
        lines += [
            f'storagecontrollername{index}="{name}"',
            f'storagecontrollertype{index}="{controller["type"]}"',
            f'storagecontrollerinstance{index}="0"',
            f'storagecontrollermaxportcount{index}="30"',
            f'storagecontrollerportcount{index}="30"',
            f'storagecontrollerbootable{index}="on"',
        ]
    for name, controller in machine["controllers"].items():
        for slot, attachment in sorted(controller["attachments"].items()):
            lines.append(f'"{name}-{slot}"="{attachment["medium"]}"')
            lines.append(f'"{name}-ImageUUID-{slot}"="{attachment["uuid"]}"')
            if attachment["type"] == "dvddrive":
                lines.append(f'"{name}-tempeject-{slot}"="off"')
                lines.append(f'"{name}-IsEjected-{slot}"="off"')
    for slot in ("1", "2", "3", "4", "5", "6", "7", "8"):
        nic = machine["nics"].get(slot)
        if nic is None:
            lines.append(f'nic{slot}="none"')
            continue
        if nic["attachment"] == "nat":
            lines.append(f'natnet{slot}="nat"')
        lines += [
            f'macaddress{slot}="{nic["mac"]}"',
            f'cableconnected{slot}="{nic["cable"]}"',
            f'nic{slot}="{nic["attachment"]}"',
            f'nictype{slot}="{nic["type"]}"',
            f'nicspeed{slot}="0"',
        ]
        if nic["attachment"] == "nat":
            lines += ['mtu="0"', 'sockSnd="64"', 'sockRcv="64"', 'tcpWndSnd="64"', 'tcpWndRcv="64"']
            for index, rule in enumerate(nic["rules"]):
                lines.append(f'Forwarding({index})="{rule["name"]},{rule["proto"]},{rule["host_ip"]},{rule["host_port"]},{rule["guest_ip"]},{rule["guest_port"]}"')
    lines += [f'hidpointing="{machine.get("mouse", "ps2mouse")}"', f'hidkeyboard="{machine.get("keyboard", "ps2kbd")}"']
    for slot in ("1", "2", "3", "4"):
        uart = machine["uarts"].get(slot)
        if uart is None or not uart["enabled"]:
            lines.append(f'uart{slot}="off"')
            continue
        lines.append(f'uart{slot}="{uart["io"]:#06x},{uart["irq"]}"')
        if uart["mode"] == "disconnected":
            lines.append(f'uartmode{slot}="disconnected"')
        elif uart["mode"] == "file":
            lines.append(f'uartmode{slot}="file,{uart["path"]}"')
        else:
            lines.append(f'uartmode{slot}="{uart["mode"]},{uart["path"]}"')
        lines.append(f'uarttype{slot}="16550A"')
    usb = machine.get("usb", {"ohci": "off", "ehci": "off", "xhci": "off"})
    lines += ['lpt1="off"', 'lpt2="off"', 'audio="none"', 'clipboard="disabled"', 'draganddrop="disabled"', 'vrde="off"']
    lines += [f'usb="{usb["ohci"]}"', f'ehci="{usb["ehci"]}"', f'xhci="{usb["xhci"]}"']
    for index, share in enumerate(machine.get("shares", []), start=1):
        lines += [f'SharedFolderNameMachineMapping{index}="{share["name"]}"', f'SharedFolderPathMachineMapping{index}="{share["path"]}"']
    return lines


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
