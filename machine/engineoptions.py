"""The --engine-* options of `create`, checked before anything is made.

dockerd refuses a bad label, mirror or flag only when it starts, a minute or two into
`create`, and leaves an Error machine behind. So `create` checks them first:

- a label is KEY=VALUE, and not one of the labels pymachine sets itself;
- a registry mirror is an http(s) URL with nothing after the host but "/";
- an insecure registry is a host[:port] or CIDR, not a URL;
- an --engine-opt names a flag of the image's own dockerd (its list is in the image
  manifest, recorded at build from `dockerd --help`; images without one use the list of
  Docker 26.1 below), and not one pymachine writes into daemon.json itself.

What a flag's value means is left to dockerd: provisioning runs `dockerd --validate` on
the whole configuration in the guest before it replaces the one there (see
pymachine.guest.provision).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from pymachine.errors import MachineError

HELP = "Run `pymachine create --help`"

#: dockerd flags that pymachine sets in daemon.json (a flag that repeats a daemon.json
#: key makes dockerd refuse to start), or that would stop dockerd from serving at all:
#: flag -> what to do instead.
RESERVED_FLAGS = {
    "host": "Run `pymachine create` without it: pymachine gives dockerd a TLS socket forwarded to this host",
    "tls": "Run `pymachine create` without it: pymachine sets up dockerd's TLS",
    "tlsverify": "Run `pymachine create` without it: pymachine sets up dockerd's TLS",
    "tlscacert": "Run `pymachine create` without it: pymachine sets up dockerd's TLS",
    "tlscert": "Run `pymachine create` without it: pymachine sets up dockerd's TLS",
    "tlskey": "Run `pymachine create` without it: pymachine sets up dockerd's TLS",
    "label": "Run `pymachine create` with --engine-label KEY=VALUE instead",
    "insecure-registry": "Run `pymachine create` with --engine-insecure-registry instead",
    "registry-mirror": "Run `pymachine create` with --engine-registry-mirror instead",
    "storage-driver": "Run `pymachine create` without it: pymachine runs overlay2 on the data disk",
    "log-opt": "Run `pymachine create` without it: pymachine sets the log rotation (max-size 10m, max-file 3)",
    "config-file": "Run `pymachine create` without it: pymachine writes dockerd's daemon.json",
    "validate": "Run `pymachine create` without it: dockerd would check its configuration and exit",
    "help": "Run `pymachine create` without it: dockerd would print its usage and exit",
    "version": "Run `pymachine create` without it: dockerd would print its version and exit",
}

#: Labels pymachine gives every daemon (pymachine.guest.provision.daemon_config).
OWN_LABELS = ("provider", "pymachine.name")

_FLAG_LINE = re.compile(r"^ {2,6}(?:-(\w), )?--([a-z0-9][a-z0-9-]*)(?: ([\w-]+))?(?: {2,}|$)")


@dataclass(frozen=True)
class DockerdFlags:
    """The command-line flags of one dockerd: long name -> value type ("" for a switch),
    and shorthand letter -> long name."""

    flags: Mapping[str, str]
    shorthands: Mapping[str, str] = field(default_factory=dict)
    #: where the list comes from, for messages: "the image's dockerd 27.0" ...
    source: str = ""

    def as_manifest(self) -> dict:
        return {"flags": dict(sorted(self.flags.items())), "shorthands": dict(sorted(self.shorthands.items()))}

    @classmethod
    def from_manifest(cls, data: object, source: str) -> DockerdFlags | None:
        """The list an image manifest records, or None when it has none (or a damaged one)."""
        if not isinstance(data, dict) or not isinstance(data.get("flags"), dict) or not data["flags"]:
            return None
        flags = {str(k): str(v) for k, v in data["flags"].items()}
        shorthands = data.get("shorthands") if isinstance(data.get("shorthands"), dict) else {}
        return cls(flags, {str(k): str(v) for k, v in shorthands.items()}, source)


def parse_dockerd_help(text: str) -> DockerdFlags:
    """The flags in the output of `dockerd --help`."""
    flags: dict[str, str] = {}
    shorthands: dict[str, str] = {}
    for line in text.splitlines():
        match = _FLAG_LINE.match(line)
        if not match:
            continue
        short, name, kind = match.groups()
        flags[name] = kind or ""
        if short:
            shorthands[short] = name
    return DockerdFlags(flags, shorthands)


def check_engine_settings(options: list[str], labels: list[str], mirrors: list[str], insecure: list[str]) -> None:
    """What can be checked without the image: the form of each value, and the flags
    pymachine reserves."""
    keys: dict[str, str] = {}
    for label in labels:
        key, sep, value = label.partition("=")
        if not sep or not key.strip():
            raise MachineError(f"--engine-label '{label}' is not KEY=VALUE", "Run `pymachine create` with --engine-label KEY=VALUE, such as --engine-label env=test")
        if key in OWN_LABELS:
            raise MachineError(f"--engine-label '{label}': pymachine sets the label '{key}' itself", "Run `pymachine create` with another label key")
        if key in keys and keys[key] != value:
            raise MachineError(f"--engine-label gives '{key}' two values ('{keys[key]}' and '{value}'), which dockerd refuses", "Run `pymachine create` with one --engine-label per key")
        keys[key] = value
    for mirror in mirrors:
        problem = _mirror_problem(mirror)
        if problem:
            raise MachineError(f"--engine-registry-mirror '{mirror}' {problem}", "Run `pymachine create` with a mirror URL such as --engine-registry-mirror https://mirror.example.com")
    for registry in insecure:
        if "://" in registry or not registry.strip() or any(c.isspace() for c in registry):
            raise MachineError(
                f"--engine-insecure-registry '{registry}' is not a registry host[:port] or a CIDR (no http://)",
                "Run `pymachine create` with, for example, --engine-insecure-registry registry.local:5000",
            )
    for item in options:
        name = _flag_name(item)
        if not name:
            raise MachineError(f"--engine-opt '{item}' names no dockerd flag", "Run `pymachine create` with --engine-opt FLAG=VALUE, such as --engine-opt dns=1.1.1.1")
        if name in RESERVED_FLAGS:
            raise MachineError(f"--engine-opt '{item}': pymachine sets dockerd's --{name} itself", RESERVED_FLAGS[name])


def check_engine_flags(options: list[str], known: DockerdFlags) -> None:
    """Each --engine-opt against the flags of the dockerd the machine will run."""
    for item in options:
        name = _flag_name(item)
        _, sep, value = item.partition("=")
        long = known.shorthands.get(name, "") if len(name) == 1 else ""
        if (long or name) in RESERVED_FLAGS:
            raise MachineError(f"--engine-opt '{item}': pymachine sets dockerd's --{long or name} itself", RESERVED_FLAGS[long or name])
        if long:
            raise MachineError(f"--engine-opt '{item}' uses dockerd's short flag -{name}", f"Run `pymachine create` with its long name, --engine-opt {long}{'=' + value if sep else ''}")
        if name not in known.flags:
            close = _close(name, known.flags)
            raise MachineError(
                f"--engine-opt '{item}': {known.source or 'dockerd'} has no flag --{name}" + (f" (did you mean {close}?)" if close else ""),
                "Run `pymachine create` with a flag from `dockerd --help`" + (f", such as --engine-opt {close}" if close else ""),
            )
        if known.flags[name] and not sep:
            raise MachineError(f"--engine-opt '{item}': dockerd's --{name} needs a value ({known.flags[name]})", f"Run `pymachine create` with --engine-opt {name}=VALUE")


def _flag_name(item: str) -> str:
    """'dns=1.1.1.1' and '--dns=1.1.1.1' -> 'dns' (as pymachine.guest.provision.engine_flags)."""
    return item.partition("=")[0].strip().lstrip("-")


def _close(name: str, flags: Mapping[str, str]) -> str:
    import difflib

    found = difflib.get_close_matches(name, list(flags), n=1)
    return found[0] if found else ""


def _mirror_problem(mirror: str) -> str:
    """Why dockerd would refuse `mirror` ("" when it would not): its rules for
    registry-mirrors, which it checks only when it starts."""
    try:
        parts = urlsplit(mirror)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        return "is not a URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "is not an http:// or https:// URL"
    if parts.username or parts.password:
        return "carries a user name or password, which dockerd refuses"
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return "has a path, query or fragment after the host, which dockerd refuses"
    return ""


#: `dockerd --help` of Docker 26.1 (Debian's docker.io 26.1.5), for images whose
#: manifest records no list of their own (built before pymachine recorded it).
DOCKERD_26_1 = DockerdFlags(
    flags={
        "add-runtime": "runtime",
        "allow-nondistributable-artifacts": "list",
        "api-cors-header": "string",
        "authorization-plugin": "list",
        "bip": "string",
        "bridge": "string",
        "cdi-spec-dir": "list",
        "cgroup-parent": "string",
        "config-file": "string",
        "containerd": "string",
        "containerd-namespace": "string",
        "containerd-plugins-namespace": "string",
        "cpu-rt-period": "int",
        "cpu-rt-runtime": "int",
        "cri-containerd": "",
        "data-root": "string",
        "debug": "",
        "default-address-pool": "pool-options",
        "default-cgroupns-mode": "string",
        "default-gateway": "ip",
        "default-gateway-v6": "ip",
        "default-ipc-mode": "string",
        "default-network-opt": "mapmap",
        "default-runtime": "string",
        "default-shm-size": "bytes",
        "default-ulimit": "ulimit",
        "dns": "ipSlice",
        "dns-opt": "list",
        "dns-search": "list",
        "exec-opt": "list",
        "exec-root": "string",
        "experimental": "",
        "fixed-cidr": "string",
        "fixed-cidr-v6": "string",
        "group": "string",
        "help": "",
        "host": "list",
        "host-gateway-ip": "ip",
        "http-proxy": "string",
        "https-proxy": "string",
        "icc": "",
        "init": "",
        "init-path": "string",
        "insecure-registry": "list",
        "ip": "ip",
        "ip-forward": "",
        "ip-masq": "",
        "ip6tables": "",
        "iptables": "",
        "ipv6": "",
        "label": "list",
        "live-restore": "",
        "log-driver": "string",
        "log-format": "string",
        "log-level": "string",
        "log-opt": "map",
        "max-concurrent-downloads": "int",
        "max-concurrent-uploads": "int",
        "max-download-attempts": "int",
        "metrics-addr": "string",
        "mtu": "int",
        "network-control-plane-mtu": "int",
        "no-new-privileges": "",
        "no-proxy": "string",
        "node-generic-resource": "list",
        "pidfile": "string",
        "raw-logs": "",
        "registry-mirror": "list",
        "rootless": "",
        "seccomp-profile": "string",
        "selinux-enabled": "",
        "shutdown-timeout": "int",
        "storage-driver": "string",
        "storage-opt": "list",
        "swarm-default-advertise-addr": "string",
        "tls": "",
        "tlscacert": "string",
        "tlscert": "string",
        "tlskey": "string",
        "tlsverify": "",
        "userland-proxy": "",
        "userland-proxy-path": "string",
        "userns-remap": "string",
        "validate": "",
        "version": "",
    },
    shorthands={"D": "debug", "G": "group", "H": "host", "b": "bridge", "l": "log-level", "p": "pidfile", "s": "storage-driver", "v": "version"},
    source="Docker 26.1's dockerd",
)
