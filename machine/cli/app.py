"""The typer commands. Each parses its arguments, calls the core, and prints the result.

stdout carries only results (for scripts and `eval`); progress and notes go to stderr.
What one run works with (the storage path, the Home built from it) is a Session, handed
to every command as click's context object; there is no module-level state.
"""

from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer

from pymachine import __version__
from pymachine.cli.output import TerminalProgress, setup_logging
from pymachine.errors import MachineError
from pymachine.store import DEFAULT_ROOT, default_root

if TYPE_CHECKING:
    from pymachine.home import Home
    from pymachine.machine import Machine
    from pymachine.machines import Machines

app = typer.Typer(
    name="pymachine",
    help="Docker hosts in lightweight VMs, with container ports forwarded to this host automatically.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
image_app = typer.Typer(help="Build and inspect the boot image.", no_args_is_help=True)
app.add_typer(image_app, name="image")
disk_app = typer.Typer(help="The machine's data disk (/var/lib/docker).", no_args_is_help=True)
app.add_typer(disk_app, name="disk")


@dataclass
class Session:
    """One run of the CLI: the storage path the root options chose, and its Home."""

    storage: str | None = None
    #: the command being run, for the lock it takes (`stop` waits "for `create` to finish")
    command: str = ""
    _home: Home | None = None

    @property
    def home(self) -> Home:
        if self._home is None:
            from pymachine.home import Home

            self._home = Home.from_environment(self.storage, progress=TerminalProgress(), command=self.command)
        return self._home

    @property
    def machines(self) -> Machines:
        from pymachine.machines import Machines

        return Machines(self.home)

    def machine(self, name: str) -> Machine:
        """The machine called `name`, or the usual one-line error."""
        return self.machines.get(name)

    @property
    def debug_log(self) -> Path:
        return default_root(self.storage) / "debug.log"


def _session(ctx: typer.Context) -> Session:
    if not isinstance(ctx.obj, Session):
        ctx.obj = Session()
    return ctx.obj


def _version_callback(value: bool) -> None:
    if value:
        print(f"pymachine {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    storage_path: Optional[str] = typer.Option(None, "--storage-path", "-s", envvar="PYMACHINE_STORAGE_PATH", help=f"pymachine's folder (default {DEFAULT_ROOT})."),
    debug: bool = typer.Option(False, "--debug", "-D", help="Also print the debug log on stderr."),
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."),
) -> None:
    session = _session(ctx)
    session.storage = storage_path
    session.command = ctx.invoked_subcommand or ""
    session._home = None
    setup_logging(session.debug_log, debug)


def _size_mb(value: str, what: str) -> int:
    """"2048", "2048M", "2G", "20GB" -> megabytes."""
    match = re.fullmatch(r"\s*(\d+)\s*([mMgGtT]?)[bB]?\s*", value)
    if not match:
        raise MachineError(f"{what} '{value}' is not a size like 2048, 2048M or 2G", "Run `pymachine create --help`")
    number, unit = int(match.group(1)), match.group(2).upper()
    return number * {"": 1, "M": 1, "G": 1024, "T": 1024 * 1024}[unit]


def _pairs(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise MachineError(f"{what} '{item}' is not KEY=VALUE", "Run `pymachine create --help`")
        out[key] = value
    return out


def _check_format(fmt: str, command: str, plain: tuple[str, ...], templates: bool = False) -> None:
    """Refuse an unknown --format before anything is asked (it would be printed literally)."""
    if fmt in plain or (templates and "{{" in fmt):
        return
    kinds = " or ".join(plain) + (", or a template like '{{.Name}}'" if templates else "")
    raise MachineError(f"Unknown --format '{fmt}' (use {kinds})", f"Run `pymachine {command} --help`")


def _check_not_negative(value: float, option: str, command: str) -> None:
    if value < 0:
        raise MachineError(f"{option} cannot be negative ({value:g})", f"Run `pymachine {command} --help`")


# -- create and lifecycle --------------------------------------------------------------


@app.command()
def create(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Machine name: letters, digits, '.' and '-'."),
    driver: str = typer.Option("qemu", "--driver", "-d", help="qemu, virtualbox or parallels (see `pymachine drivers`)."),
    cpus: int = typer.Option(2, "--cpus", help="Virtual CPUs."),
    memory: str = typer.Option("2048", "--memory", "-m", help="Memory in MB, or with a unit: 4G."),
    disk_size: str = typer.Option("20G", "--disk-size", help="Data disk size (grows as used): MB, or 40G."),
    iso: Optional[str] = typer.Option(None, "--iso", help="Boot ISO path or URL (default: the image in the cache)."),
    engine_opt: list[str] = typer.Option([], "--engine-opt", help="dockerd flag as KEY=VALUE, e.g. dns=1.1.1.1 (repeatable)."),
    engine_label: list[str] = typer.Option([], "--engine-label", help="Daemon label KEY=VALUE (repeatable)."),
    engine_insecure_registry: list[str] = typer.Option([], "--engine-insecure-registry", help="Registry to reach without TLS (repeatable)."),
    engine_registry_mirror: list[str] = typer.Option([], "--engine-registry-mirror", help="Registry mirror URL (repeatable)."),
    opt: list[str] = typer.Option([], "--opt", "-o", help="Driver option KEY=VALUE (repeatable; `pymachine drivers` lists them)."),
    forward_bind: str = typer.Option("127.0.0.1", "--forward-bind", help="Host address for a bare `-p H:C`: 127.0.0.1 (default) or 0.0.0.0."),
    no_listener_forwarding: bool = typer.Option(False, "--no-listener-forwarding", help="Forward only ports Docker publishes, not ports processes in the guest listen on."),
    ignore_port: list[str] = typer.Option([], "--ignore-port", help="Never forward this guest listener: PORT, PORT/tcp or PORT/udp (repeatable)."),
    mount: list[str] = typer.Option([], "--mount", help="Share a host folder: HOST[:GUEST][:ro] (repeatable; default: your home folder, at the same path)."),
    no_mounts: bool = typer.Option(False, "--no-mounts", help="Share no host folder, not even your home folder."),
    force: bool = typer.Option(False, "--force", help="Start even while another hypervisor runs VMs."),
    arch: Optional[str] = typer.Option(None, "--arch", help="The guest's architecture, amd64 or arm64 (default: this host's; another one runs emulated)."),
    allow_http: bool = typer.Option(False, "--allow-http", help="Let --iso be a plain http:// URL (otherwise releases are fetched over https:// only)."),
) -> None:
    """Create a machine: a VM with Docker installed, secured with TLS, ready to use.

    Host folders are shared so that `docker run -v HOST-PATH:...` finds them: your home
    folder by default (qemu and virtualbox drivers; Parallels and VirtualBox's arm64 guests share
    none), or the folders given with --mount."""
    from pymachine.machines import CreateOptions

    if mount and no_mounts:
        raise MachineError("--mount and --no-mounts contradict each other", "Run `pymachine create` with one of them")
    machines = _session(ctx).machines
    options = CreateOptions(
        driver=driver,
        cpus=cpus,
        memory_mb=_size_mb(memory, "--memory"),
        disk_mb=_size_mb(disk_size, "--disk-size"),
        iso=iso,
        engine_options=engine_opt,
        engine_labels=engine_label,
        insecure_registries=engine_insecure_registry,
        registry_mirrors=engine_registry_mirror,
        driver_options=_pairs(opt, "--opt"),
        forward_bind=forward_bind,
        listener_forwarding=not no_listener_forwarding,
        ignore_ports=ignore_port,
        mounts=[] if no_mounts else (mount or None),
        force=force,
        arch=arch,
        allow_http=allow_http,
    )
    started = time.monotonic()
    machines.create(name, options)
    print(f"Machine '{name}' is ready ({time.monotonic() - started:.0f}s). Point docker at it with: eval $(pymachine env {name})", file=sys.stderr)


@app.command()
def start(ctx: typer.Context, names: list[str] = typer.Argument(..., help="Machines to start."), force: bool = typer.Option(False, "--force", help="Start even while another hypervisor runs VMs.")) -> None:
    """Start machines and wait until Docker answers."""
    session = _session(ctx)
    for name in names:
        session.machine(name).start(force=force)
        print(f"Machine '{name}' is running.", file=sys.stderr)


@app.command()
def stop(ctx: typer.Context, names: list[str] = typer.Argument(..., help="Machines to stop."), timeout: float = typer.Option(30.0, "--timeout", "-t", help="Seconds to wait for a clean shutdown before forcing it.")) -> None:
    """Shut machines down cleanly (forced after --timeout)."""
    _check_not_negative(timeout, "--timeout", "stop")
    session = _session(ctx)
    for name in names:
        if not session.machine(name).stop(timeout=timeout):
            print(f"Machine '{name}' is already stopped.", file=sys.stderr)


@app.command()
def restart(ctx: typer.Context, names: list[str] = typer.Argument(...), force: bool = typer.Option(False, "--force", help="Start even while another hypervisor runs VMs.")) -> None:
    """Stop, then start machines."""
    session = _session(ctx)
    for name in names:
        session.machine(name).restart(force=force)
        print(f"Machine '{name}' is running.", file=sys.stderr)


@app.command()
def kill(ctx: typer.Context, names: list[str] = typer.Argument(...)) -> None:
    """Power machines off at once."""
    session = _session(ctx)
    for name in names:
        if not session.machine(name).kill():
            print(f"Machine '{name}' is already stopped.", file=sys.stderr)


@app.command("rm")
def remove(
    ctx: typer.Context,
    names: list[str] = typer.Argument(..., help="Machines to remove."),
    force: bool = typer.Option(False, "--force", "-f", help="Remove even if the VM or its files are damaged."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Remove machines: their VMs, disks, files and docker contexts."""
    session = _session(ctx)
    doomed = [session.machine(name) for name in names]  # the usual one-line error for a bad or unknown name
    if not yes:
        if not sys.stdin.isatty():
            raise MachineError("rm needs confirmation", f"Run `pymachine rm -y {' '.join(names)}`")
        typer.confirm(f"Remove {', '.join(names)} and everything in {'them' if len(names) > 1 else 'it'}?", abort=True, err=True)
    for machine in doomed:
        machine.remove(force=force)
        print(f"Removed machine '{machine.name}'.", file=sys.stderr)


@disk_app.command("grow")
def disk_grow(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="The machine."),
    size: str = typer.Argument(..., help="The disk's new size, larger than now: MB, or with a unit: 40G."),
    restart: bool = typer.Option(False, "--restart", help="Stop and start a running machine whose driver grows disks only while it is stopped."),
) -> None:
    """Grow a machine's data disk, and the filesystem on it (it never shrinks)."""
    try:
        size_mb = _size_mb(size, "SIZE")
    except MachineError as exc:
        raise MachineError(exc.message, "Run `pymachine disk grow --help`") from None
    machine = _session(ctx).machine(name)
    before, after = machine.grow_disk(size_mb, restart=restart)
    if after != before:
        print(f"The data disk of machine '{name}' is now {after} MB (was {before} MB).", file=sys.stderr)


@app.command()
def provision(ctx: typer.Context, name: str, reinstall: bool = typer.Option(False, "--reinstall", help="Install the engine bundle even if the guest has it.")) -> None:
    """Run provisioning again: engine, certificates, daemon config."""
    _session(ctx).machine(name).provision(reinstall=reinstall)


@app.command("regenerate-certs")
def regenerate_certs(
    ctx: typer.Context,
    name: str,
    client_certs: bool = typer.Option(False, "--client-certs", help="Also make a new CA (every machine then needs regenerate-certs)."),
    force: bool = typer.Option(False, "--force", "-f", help="Do not ask for confirmation."),
) -> None:
    """Make new TLS certificates for a machine and install them."""
    if not force and sys.stdin.isatty():
        typer.confirm(f"Regenerate the TLS certificates of '{name}'?", abort=True, err=True)
    _session(ctx).machine(name).regenerate_certs(include_ca=client_certs)


@app.command()
def upgrade(ctx: typer.Context, name: str) -> None:
    """Move a machine to the current boot image and Docker engine (restarts it)."""
    machine = _session(ctx).machine(name)
    machine.upgrade()
    print(f"Machine '{name}' is running, with Docker {machine.config.engine_version}.", file=sys.stderr)


# -- queries ---------------------------------------------------------------------------


@app.command()
def env(
    ctx: typer.Context,
    name: Optional[str] = typer.Argument(None),
    shell: Optional[str] = typer.Option(None, "--shell", help="bash, zsh, sh, fish, powershell, cmd, tcsh or emacs (default: from $SHELL)."),
    unset: bool = typer.Option(False, "--unset", "-u", help="Print code that unsets the variables."),
    no_proxy: bool = typer.Option(False, "--no-proxy", help="Add the machine's address to NO_PROXY."),
) -> None:
    """Print the shell code that points docker at a machine: eval $(pymachine env NAME)."""
    from pymachine.cli.fastpath import render_env

    if name is None and not unset:
        raise MachineError("env needs a machine name", "Run `pymachine env NAME`, or `pymachine ls` to list machines")
    out, hint = render_env(_session(ctx).storage, name, shell, unset, no_proxy)
    sys.stdout.write(out)
    if sys.stdout.isatty():
        print(hint, file=sys.stderr)


@app.command("ls")
def list_machines(
    ctx: typer.Context,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Names only."),
    filters: list[str] = typer.Option([], "--filter", help="name=, driver= or state= (repeatable)."),
    fmt: str = typer.Option("table", "--format", "-f", help="table, json, or a template like '{{.Name}} {{.State}}'."),
    timeout: float = typer.Option(10.0, "--timeout", "-t", help="Seconds to wait for each machine's state."),
) -> None:
    """List machines and their states (asked of the hypervisors in parallel)."""
    from pymachine.machines import MachineInfo

    # Every argument is checked before any hypervisor is asked.
    if timeout <= 0:
        raise MachineError(f"--timeout must be more than 0 seconds, not {timeout:g}", "Run `pymachine ls --help`")
    _check_format(fmt, "ls", ("table", "json"), templates=True)
    if fmt not in ("table", "json"):
        _template(fmt, MachineInfo("", False, "", "", "", "", "", "").as_dict())  # unknown fields
    # As docker-machine: values of one key are alternatives, different keys must all match.
    wanted: dict[str, list[str]] = {}
    for item in filters:
        key, sep, value = item.partition("=")
        if key.lower() not in ("name", "driver", "state") or not sep:
            raise MachineError(f"Unknown filter '{item}' (use name=, driver= or state=, such as state=Running)", "Run `pymachine ls --help`")
        wanted.setdefault(key.lower(), []).append(value)
    rows = _session(ctx).machines.list(timeout=timeout)
    for key, values in wanted.items():
        rows = [r for r in rows if any(_matches(getattr(r, key), v) for v in values)]
    if quiet:
        for row in rows:
            print(row.name)
        return
    if fmt == "json":
        print(json.dumps([r.as_dict() for r in rows], indent=2))
        return
    if fmt != "table":
        for row in rows:
            print(_template(fmt, row.as_dict()))
        return
    table = [("NAME", "ACTIVE", "DRIVER", "ARCH", "STATE", "URL", "DOCKER", "ERRORS")]
    for r in rows:
        table.append((r.name, "*" if r.active else "-", r.driver, r.arch, r.state, r.url, r.docker, r.error))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("   ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())


def _matches(value: str, pattern: str) -> bool:
    if "*" in pattern:
        import fnmatch

        return fnmatch.fnmatchcase(value.lower(), pattern.lower())
    return value.lower() == pattern.lower()


def _template(fmt: str, data: dict[str, Any], command: str = "ls") -> str:
    """A Go-template subset: {{.Field}} and {{json .Field}}."""

    def field(match: re.Match[str]) -> str:
        as_json, key = match.group(1), match.group(2)
        value: Any = data
        for part in key.split("."):
            if isinstance(value, dict) and part in value:
                value = value[part]
            else:
                raise MachineError(f"Unknown field '{key}' in --format (fields: {', '.join(sorted(data))})", f"Run `pymachine {command} --help`")
        if as_json:
            return json.dumps(value)
        return str(value).lower() if isinstance(value, bool) else str(value)

    text = re.sub(r"\{\{\s*(json\s+)?\.([\w.]+)\s*\}\}", field, fmt)
    return text.replace("\\t", "\t").replace("\\n", "\n")


@app.command()
def status(ctx: typer.Context, name: str) -> None:
    """Print a machine's state."""
    print(_session(ctx).machine(name).status())


@app.command()
def url(ctx: typer.Context, name: str) -> None:
    """Print the Docker URL of a machine."""
    print(_session(ctx).machine(name).url)


@app.command()
def ip(ctx: typer.Context, name: str) -> None:
    """Print the host address where the machine's forwarded ports answer."""
    print(_session(ctx).machine(name).ip())


@app.command()
def inspect(ctx: typer.Context, name: str, fmt: str = typer.Option("json", "--format", "-f", help="json, or a template like '{{.driver}}'.")) -> None:
    """Print everything pymachine knows about a machine."""
    _check_format(fmt, "inspect", ("json",), templates=True)
    data = _session(ctx).machine(name).inspect()
    if fmt == "json":
        print(json.dumps(data, indent=2, sort_keys=True, default=str))
    else:
        print(_template(fmt, data, "inspect"))


@app.command()
def config(ctx: typer.Context, name: str) -> None:
    """Print docker CLI flags that reach a machine."""
    print(_session(ctx).machine(name).docker_flags())


@app.command()
def active(ctx: typer.Context) -> None:
    """Print the machine the docker CLI points at."""
    found = _session(ctx).machines.active()
    if found is None:
        raise MachineError("No machine is active", "Run `eval $(pymachine env NAME)` or `pymachine use NAME`")
    print(found)


@app.command()
def use(ctx: typer.Context, name: str) -> None:
    """Switch the docker CLI to a machine's context (pymachine-NAME)."""
    _session(ctx).machine(name).use()
    print(f"docker now uses machine '{name}' (context pymachine-{name}).", file=sys.stderr)


@app.command()
def version(ctx: typer.Context, name: Optional[str] = typer.Argument(None, help="A machine: print its Docker daemon's version.")) -> None:
    """Print pymachine's version, or a machine's Docker version."""
    if name is None:
        print(f"pymachine {__version__}")
        return
    info = _session(ctx).machine(name).docker_version()
    # Debian's engine says 26.1.5+dfsg1 (its repacked source); ls and the docs say 26.1.5.
    print(re.split(r"[+~]", str(info.get("Version") or "unknown"))[0])


@app.command()
def completion(ctx: typer.Context, shell: str = typer.Argument(..., help="bash, zsh or fish.")) -> None:
    """Print a shell completion script: commands, flags and machine names.

    bash: add `eval "$(pymachine completion bash)"` to ~/.bashrc (bash 4.4 or newer).
    zsh: add `eval "$(pymachine completion zsh)"` to ~/.zshrc, after `compinit`.
    fish: add `pymachine completion fish | source` to ~/.config/fish/config.fish.
    """
    from pymachine.cli.completion import SHELLS, script

    if shell not in SHELLS:
        raise MachineError(f"No completion script for '{shell}' (use bash, zsh or fish)", "Run `pymachine completion --help`")
    print(script(ctx.find_root().command, shell))


@app.command()
def logs(
    ctx: typer.Context,
    name: str,
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new lines."),
    lines: int = typer.Option(0, "--lines", "-n", help="Only the last N lines."),
) -> None:
    """Print the guest's serial console."""
    _check_not_negative(lines, "--lines", "logs")
    path = _session(ctx).machine(name).serial_log()
    if not path.exists():
        raise MachineError(f"Machine '{name}' has no console log yet", f"Run `pymachine start {name}`")
    with open(path, "rb") as handle:
        data = handle.read().decode(errors="replace")
        if lines:
            data = "\n".join(data.splitlines()[-lines:]) + "\n"
        sys.stdout.write(data)
        sys.stdout.flush()
        while follow:
            chunk = handle.read()
            if chunk:
                sys.stdout.write(chunk.decode(errors="replace"))
                sys.stdout.flush()
            else:
                time.sleep(0.3)


# -- ssh and scp -----------------------------------------------------------------------


@app.command(context_settings={"allow_interspersed_args": False, "ignore_unknown_options": True})
def ssh(ctx: typer.Context, name: str, command: list[str] = typer.Argument(None, help="A command to run instead of a shell.")) -> None:
    """Log into a machine, or run a command in it."""
    from pymachine.cli.sshcommand import interactive_ssh, run_remote

    machine = _session(ctx).machine(name)
    if command and command[0] == "--":
        command = command[1:]
    if command:
        raise typer.Exit(run_remote(machine, command))
    interactive_ssh(machine)


@app.command()
def scp(
    ctx: typer.Context,
    source: str = typer.Argument(..., help="[MACHINE:]PATH"),
    destination: str = typer.Argument(..., help="[MACHINE:]PATH"),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Copy folders."),
) -> None:
    """Copy files between this host and a machine: pymachine scp ./f dev:/tmp/f."""
    from pymachine.cli.sshcommand import copy

    copy(_session(ctx), source, destination, recursive)


# -- ports, doctor, drivers, image -----------------------------------------------------


@app.command()
def ports(
    ctx: typer.Context,
    name: str,
    fmt: str = typer.Option("table", "--format", "-f", help="table or json."),
    listeners: Optional[str] = typer.Option(None, "--listeners", help="on or off: forward ports processes in the guest listen on (kept in the machine's config)."),
    ignore: list[str] = typer.Option([], "--ignore", help="Never forward this guest listener: PORT, PORT/tcp or PORT/udp (repeatable; kept)."),
    unignore: list[str] = typer.Option([], "--unignore", help="Forward this guest listener again (repeatable)."),
) -> None:
    """List a machine's port forwards, where each came from, and the watcher's health.

    A forward comes from a port a container published, or from a process listening in
    the guest (`docker run --network host`, a server started over `pymachine ssh`)."""
    _check_format(fmt, "ports", ("table", "json"))
    if listeners not in (None, "on", "off"):
        raise MachineError(f"--listeners takes on or off, not '{listeners}'", "Run `pymachine ports --help`")
    machine = _session(ctx).machine(name)
    if listeners is not None or ignore or unignore:
        machine.set_listener_forwarding(None if listeners is None else listeners == "on", ignore, unignore)
    driver = None
    try:
        driver = machine.driver()
        machine.revive_watcher(driver.state())
    except MachineError:
        pass
    # As of this call: a forward is active only while the VM runs and its port is held;
    # a watcher this call (or its keeper) just started gets a moment to say how it is.
    report = machine.watcher.report(driver)
    deadline = time.monotonic() + 3.0
    while report["watcher"]["state"] == "starting" and time.monotonic() < deadline:
        time.sleep(0.2)
        report = machine.watcher.report(driver)
    if fmt == "json":
        print(json.dumps(report, indent=2, sort_keys=True))
        return
    watcher = report["watcher"]
    print(f"watcher: {watcher['state']}" + (f" (pid {watcher['pid']})" if watcher.get("pid") else "") + (f": {watcher['detail']}" if watcher.get("detail") else ""), file=sys.stderr)
    table = [("HOST", "GUEST", "PROTO", "FROM", "STATE")]
    for f in report["forwards"]:
        state = f["state"] + (f" ({f['reason']})" if f.get("reason") else "")
        host_ip = f"[{f['host_ip']}]" if ":" in f["host_ip"] else f["host_ip"]
        origin = f"listener {f['container']}" if f.get("source") == "listener" else f"container {f['container']}"
        table.append((f"{host_ip}:{f['host_port']}", str(f["guest_port"]), f["protocol"], origin, state))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("   ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())


@app.command()
def doctor(ctx: typer.Context, fmt: str = typer.Option("text", "--format", "-f", help="text or json.")) -> None:
    """Check each driver on this host, other hypervisors' VMs, and wanted ports."""
    from pymachine.cli.doctor import run_doctor

    _check_format(fmt, "doctor", ("text", "json"))
    report = run_doctor(_session(ctx).machines)
    if fmt == "json":
        print(json.dumps(report, indent=2, sort_keys=True))
        return
    for row in report["drivers"]:
        version = f" {row['version']}" if row.get("version") else ""
        state = "installed" + version if row["installed"] else "not installed"
        print(f"{row['name']:<11} {state}; accelerator: {row['accelerator']}" + (f" - {row['detail']}" if row.get("detail") else ""))
        for note in row.get("notes", []):
            print(f"{'':<11} {note}")
    vms = report["running_vms"]
    print("other VMs:  " + ("; ".join(vms) if vms else "none running"))
    if report["own_vms"]:
        print("machines:   " + "; ".join(report["own_vms"]) + " (pymachine's own, running)")
    blocked = report["blocked_ports"]
    print("ports:      " + ("; ".join(blocked) if blocked else "every forward has its host port"))


@app.command()
def drivers() -> None:
    """List the drivers and their options (for `create -o KEY=VALUE`)."""
    from pymachine.driver import driver_names, load_driver
    from pymachine.forwarding.relay import describe

    for name in driver_names():
        cls = load_driver(name)
        print(f"{name}: {(cls.__doc__ or '').strip().splitlines()[0]}")
        print(f"  forwards: {describe(cls)}")
        for option_name, default, help_text in cls.options_class.describe():
            # A help text that explains its own default is not followed by a second one.
            said = "(default:" in help_text
            print(f"  -o {option_name}=...  {help_text}" + ("" if said else f" (default: {default or 'none'})"))


def _image_arches(arch: str | None) -> list[str]:
    from pymachine.arch import ARCHES, host_arch, normalize

    if arch == "all":
        return list(ARCHES)
    return [normalize(arch) if arch else host_arch()]


@image_app.command("build")
def image_build(
    ctx: typer.Context,
    force: bool = typer.Option(False, "--force", help="Build even if the cache is up to date."),
    arch: Optional[str] = typer.Option(None, "--arch", help="amd64, arm64 or all (default: this host's architecture)."),
) -> None:
    """Build the boot ISO, kernel, initrd and engine bundle into the cache (on a Debian host)."""
    try:
        import zstandard  # noqa: F401

        from pymachine.iso.build import ImageBuilder
    except ImportError:
        raise MachineError("Building the boot image needs pymachine's image extra", "Run `pip install 'pymachine-vm[image]'`") from None
    home = _session(ctx).home
    assert home.cache is not None
    for target in _image_arches(arch):
        artifacts = ImageBuilder(home.cache, home.image_work_dir, home.runner, home.progress, arch=target).build(force=force)
        for kind in sorted(artifacts.manifest["artifacts"]):
            print(f"{kind}: {artifacts.path(kind)}")


@image_app.command("ls")
def image_ls(
    ctx: typer.Context,
    arch: Optional[str] = typer.Option("all", "--arch", help="amd64, arm64 or all."),
    fmt: str = typer.Option("table", "--format", "-f", help="table or json."),
) -> None:
    """List the boot images `create` can use, and which one it would use, per architecture."""
    from pymachine.errors import ImageError
    from pymachine.image import candidates, choose

    _check_format(fmt, "image ls", ("table", "json"))
    home = _session(ctx).home
    assert home.cache is not None
    rows = []
    for target in _image_arches(arch):
        found = candidates(home.cache, target)
        try:
            chosen = choose(found, target)
        except ImageError:
            chosen = None
        rows += [c.as_dict(chosen=c.image is not None and c.image == chosen) for c in found]
        if not found:
            rows.append({"Source": "none", "Arch": target, "Version": "", "Chosen": False, "ISO": "", "Engine": "", "Manifest": "", "Problem": f"no {target} image: `pymachine image build --arch {target}` or `pip install pymachine-vm-image-{target}`"})
    if fmt == "json":
        print(json.dumps(rows, indent=2))
        return
    table = [("ARCH", "SOURCE", "VERSION", "ENGINE", "USED", "WHERE")]
    for r in rows:
        table.append((r["Arch"], r["Source"], r["Version"], r["Engine"], "*" if r["Chosen"] else "-", r["Problem"] or r["ISO"]))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("   ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())


@image_app.command("dist", hidden=True)
def image_dist(
    ctx: typer.Context,
    out: Path = typer.Option(Path("dist"), "--out", help="The folder to write the wheels into."),
    arch: Optional[str] = typer.Option("all", "--arch", help="amd64, arm64 or all."),
) -> None:
    """Write the image distributions (pymachine-vm-image-ARCH wheels) from the built images, for releases."""
    from pymachine.iso.dist import write_image_wheel

    home = _session(ctx).home
    assert home.cache is not None
    for target in _image_arches(arch):
        print(write_image_wheel(home.cache, target, out))


@image_app.command("path")
def image_path(ctx: typer.Context, arch: Optional[str] = typer.Option(None, "--arch", help="amd64 or arm64 (default: this host's architecture).")) -> None:
    """Print where the boot image's manifest is (or would be) in the cache."""
    from pymachine.image import manifest_name

    home = _session(ctx).home
    assert home.cache is not None
    (target,) = _image_arches(arch)
    print(home.cache / manifest_name(target))


@image_app.command("lock", hidden=True)
def image_lock(ctx: typer.Context, arch: Optional[str] = typer.Option("all", "--arch", help="amd64, arm64 or all.")) -> None:
    """Pin the recipe's Debian packages (name, version, sha256) in iso/packages-ARCH.lock, for developers."""
    from pymachine.arch import ARCHES
    from pymachine.iso.apt import DebianArchive
    from pymachine.iso.build import lock_path, make_lock

    home = _session(ctx).home
    archive = DebianArchive(home.image_work_dir / "apt", home.runner, ARCHES)
    for target in _image_arches(arch):
        text = make_lock(archive, target)
        print(f"pinned {len(text.splitlines()) - 2} packages in {lock_path(target)}", file=sys.stderr)
