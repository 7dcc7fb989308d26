"""The typer commands. Each parses its arguments, calls the core, and prints the result.

stdout carries only results (for scripts and `eval`); progress and notes go to stderr.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any, Optional

import typer

from . import __version__
from .errors import MachineError
from .progress import Progress

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

_state: dict[str, Any] = {}


class TerminalProgress(Progress):
    """Step lines with durations on stderr; a bar for transfers when stderr is a terminal."""

    def __init__(self) -> None:
        self._console: Any = None
        self._bar: Any = None
        self._task: Any = None

    @property
    def console(self) -> Any:
        # rich is imported on first output only: `ls` and friends never pay for it.
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=True, highlight=False)
        return self._console

    def on_step_start(self, title: str) -> None:
        if not self.console.is_terminal:
            self.console.print(f"  {title} ...")

    def on_step_end(self, title: str, seconds: float, ok: bool) -> None:
        self._close_bar()
        mark = "[green]✔[/green]" if ok else "[red]✘[/red]"
        self.console.print(f"{mark} {title} [dim]({seconds:.1f}s)[/dim]")

    def on_transfer_start(self, title: str, total: int) -> None:
        if not self.console.is_terminal:
            return
        from rich.progress import BarColumn, DownloadColumn, Progress as Bar, TransferSpeedColumn

        self._bar = Bar("  {task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(), console=self.console, transient=True)
        self._bar.start()
        self._task = self._bar.add_task(title, total=total or None)

    def on_transfer(self, done: int, total: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=done)

    def on_note(self, message: str) -> None:
        self.console.print(f"[yellow]![/yellow] {message}")

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def home_from_context() -> Path | None:
    home = _state.get("home")
    return home.root if home is not None else None


def _machines():
    from .home import Home
    from .machines import Machines

    home = _state.get("home")
    if home is None:
        home = Home.from_environment(_state.get("storage"), progress=TerminalProgress())
        _state["home"] = home
    return Machines(home)


def _version_callback(value: bool) -> None:
    if value:
        print(f"pymachine {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    storage_path: Optional[str] = typer.Option(None, "--storage-path", "-s", envvar="PYMACHINE_STORAGE_PATH", help="pymachine's folder (default ~/.pymachine)."),
    debug: bool = typer.Option(False, "--debug", "-D", help="Also print the debug log on stderr."),
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."),
) -> None:
    from .cli import setup_logging

    _state["storage"] = storage_path
    _state.pop("home", None)
    root_dir = Path(storage_path or "~/.pymachine").expanduser()
    setup_logging(root_dir, debug)


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


# -- create and lifecycle --------------------------------------------------------------


@app.command()
def create(
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
    mount: list[str] = typer.Option([], "--mount", help="Share a host folder: HOST[:GUEST][:ro] (repeatable; default: your home folder, at the same path)."),
    no_mounts: bool = typer.Option(False, "--no-mounts", help="Share no host folder, not even your home folder."),
    force: bool = typer.Option(False, "--force", help="Start even while another hypervisor runs VMs."),
) -> None:
    """Create a machine: a VM with Docker installed, secured with TLS, ready to use.

    Host folders are shared so that `docker run -v HOST-PATH:...` finds them: your home
    folder by default (qemu driver), or the folders given with --mount."""
    from .machines import CreateOptions

    if mount and no_mounts:
        raise MachineError("--mount and --no-mounts contradict each other", "Run `pymachine create` with one of them")
    machines = _machines()
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
        mounts=[] if no_mounts else (mount or None),
        force=force,
    )
    started = time.monotonic()
    machines.create(name, options)
    print(f"Machine '{name}' is ready ({time.monotonic() - started:.0f}s). Point docker at it with: eval $(pymachine env {name})", file=sys.stderr)


@app.command()
def start(names: list[str] = typer.Argument(..., help="Machines to start."), force: bool = typer.Option(False, "--force", help="Start even while another hypervisor runs VMs.")) -> None:
    """Start machines and wait until Docker answers."""
    machines = _machines()
    for name in names:
        machines.start(name, force=force)
        print(f"Machine '{name}' is running.", file=sys.stderr)


@app.command()
def stop(names: list[str] = typer.Argument(..., help="Machines to stop."), timeout: float = typer.Option(30.0, "--timeout", "-t", help="Seconds to wait for a clean shutdown before forcing it.")) -> None:
    """Shut machines down cleanly (forced after --timeout)."""
    machines = _machines()
    for name in names:
        if not machines.stop(name, timeout=timeout):
            print(f"Machine '{name}' is already stopped.", file=sys.stderr)


@app.command()
def restart(names: list[str] = typer.Argument(...), force: bool = typer.Option(False, "--force", help="Start even while another hypervisor runs VMs.")) -> None:
    """Stop, then start machines."""
    machines = _machines()
    for name in names:
        machines.restart(name, force=force)


@app.command()
def kill(names: list[str] = typer.Argument(...)) -> None:
    """Power machines off at once."""
    machines = _machines()
    for name in names:
        if not machines.kill(name):
            print(f"Machine '{name}' is already stopped.", file=sys.stderr)


@app.command("rm")
def remove(
    names: list[str] = typer.Argument(..., help="Machines to remove."),
    force: bool = typer.Option(False, "--force", "-f", help="Remove even if the VM or its files are damaged."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Remove machines: their VMs, disks, files and docker contexts."""
    machines = _machines()
    for name in names:
        if not machines.store.exists(name):
            machines.load(name)  # the usual one-line error for a bad or unknown name
    if not yes:
        if not sys.stdin.isatty():
            raise MachineError("rm needs confirmation", f"Run `pymachine rm -y {' '.join(names)}`")
        typer.confirm(f"Remove {', '.join(names)} and everything in {'them' if len(names) > 1 else 'it'}?", abort=True, err=True)
    for name in names:
        machines.remove(name, force=force)
        print(f"Removed machine '{name}'.", file=sys.stderr)


@app.command()
def provision(name: str, reinstall: bool = typer.Option(False, "--reinstall", help="Install the engine bundle even if the guest has it.")) -> None:
    """Run provisioning again: engine, certificates, daemon config."""
    _machines().provision(name, reinstall=reinstall)


@app.command("regenerate-certs")
def regenerate_certs(
    name: str,
    client_certs: bool = typer.Option(False, "--client-certs", help="Also make a new CA (every machine then needs regenerate-certs)."),
    force: bool = typer.Option(False, "--force", "-f", help="Do not ask for confirmation."),
) -> None:
    """Make new TLS certificates for a machine and install them."""
    if not force and sys.stdin.isatty():
        typer.confirm(f"Regenerate the TLS certificates of '{name}'?", abort=True, err=True)
    _machines().regenerate_certs(name, include_ca=client_certs)


@app.command()
def upgrade(name: str) -> None:
    """Move a machine to the current boot image and Docker engine (restarts it)."""
    _machines().upgrade(name)


# -- queries ---------------------------------------------------------------------------


@app.command()
def env(
    name: Optional[str] = typer.Argument(None),
    shell: Optional[str] = typer.Option(None, "--shell", help="bash, zsh, sh, fish, powershell, cmd, tcsh or emacs (default: from $SHELL)."),
    unset: bool = typer.Option(False, "--unset", "-u", help="Print code that unsets the variables."),
    no_proxy: bool = typer.Option(False, "--no-proxy", help="Add the machine's address to NO_PROXY."),
) -> None:
    """Print the shell code that points docker at a machine: eval $(pymachine env NAME)."""
    from .fastpath import render_env

    if name is None and not unset:
        raise MachineError("env needs a machine name", "Run `pymachine env NAME`, or `pymachine ls` to list machines")
    out, hint = render_env(_state.get("storage"), name, shell, unset, no_proxy)
    sys.stdout.write(out)
    if sys.stdout.isatty():
        print(hint, file=sys.stderr)


@app.command("ls")
def list_machines(
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Names only."),
    filters: list[str] = typer.Option([], "--filter", help="name=, driver= or state= (repeatable)."),
    fmt: str = typer.Option("table", "--format", "-f", help="table, json, or a template like '{{.Name}} {{.State}}'."),
    timeout: float = typer.Option(10.0, "--timeout", "-t", help="Seconds to wait for each machine's state."),
) -> None:
    """List machines and their states (asked of the hypervisors in parallel)."""
    rows = _machines().list(timeout=timeout)
    # As docker-machine: values of one key are alternatives, different keys must all match.
    wanted: dict[str, list[str]] = {}
    for item in filters:
        key, _, value = item.partition("=")
        if key.lower() not in ("name", "driver", "state"):
            raise MachineError(f"Unknown filter '{key}' (use name=, driver= or state=)", "Run `pymachine ls --help`")
        wanted.setdefault(key.lower(), []).append(value)
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
    table = [("NAME", "ACTIVE", "DRIVER", "STATE", "URL", "DOCKER", "ERRORS")]
    for r in rows:
        table.append((r.name, "*" if r.active else "-", r.driver, r.state, r.url, r.docker, r.error))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("   ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())


def _matches(value: str, pattern: str) -> bool:
    if "*" in pattern:
        import fnmatch

        return fnmatch.fnmatchcase(value.lower(), pattern.lower())
    return value.lower() == pattern.lower()


def _template(fmt: str, data: dict[str, Any]) -> str:
    """A Go-template subset: {{.Field}} and {{json .Field}}."""

    def field(match: re.Match[str]) -> str:
        as_json, key = match.group(1), match.group(2)
        value: Any = data
        for part in key.split("."):
            if isinstance(value, dict) and part in value:
                value = value[part]
            else:
                raise MachineError(f"Unknown field '{key}' in --format", f"Fields: {', '.join(sorted(data))}")
        if as_json:
            return json.dumps(value)
        return str(value).lower() if isinstance(value, bool) else str(value)

    text = re.sub(r"\{\{\s*(json\s+)?\.([\w.]+)\s*\}\}", field, fmt)
    return text.replace("\\t", "\t").replace("\\n", "\n")


@app.command()
def status(name: str) -> None:
    """Print a machine's state."""
    print(_machines().status(name))


@app.command()
def url(name: str) -> None:
    """Print the Docker URL of a machine."""
    print(_machines().url(name))


@app.command()
def ip(name: str) -> None:
    """Print the host address where the machine's forwarded ports answer."""
    print(_machines().ip(name))


@app.command()
def inspect(name: str, fmt: str = typer.Option("json", "--format", "-f", help="json, or a template like '{{.driver}}'.")) -> None:
    """Print everything pymachine knows about a machine."""
    data = _machines().inspect(name)
    if fmt == "json":
        print(json.dumps(data, indent=2, sort_keys=True, default=str))
    else:
        print(_template(fmt, data))


@app.command()
def config(name: str) -> None:
    """Print docker CLI flags that reach a machine."""
    print(_machines().docker_flags(name))


@app.command()
def active() -> None:
    """Print the machine the docker CLI points at."""
    found = _machines().active()
    if found is None:
        raise MachineError("No machine is active", "Run `eval $(pymachine env NAME)` or `pymachine use NAME`")
    print(found)


@app.command()
def use(name: str) -> None:
    """Switch the docker CLI to a machine's context (pymachine-NAME)."""
    _machines().use(name)
    print(f"docker now uses machine '{name}' (context pymachine-{name}).", file=sys.stderr)


@app.command()
def version(name: Optional[str] = typer.Argument(None, help="A machine: print its Docker daemon's version.")) -> None:
    """Print pymachine's version, or a machine's Docker version."""
    if name is None:
        print(f"pymachine {__version__}")
        return
    info = _machines().docker_version(name)
    print(info.get("Version", "unknown"))


@app.command()
def logs(
    name: str,
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new lines."),
    lines: int = typer.Option(0, "--lines", "-n", help="Only the last N lines."),
) -> None:
    """Print the guest's serial console."""
    path = _machines().serial_log(name)
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
def ssh(name: str, command: list[str] = typer.Argument(None, help="A command to run instead of a shell.")) -> None:
    """Log into a machine, or run a command in it."""
    from .sshcommand import interactive_ssh, run_remote

    machines = _machines()
    if command and command[0] == "--":
        command = command[1:]
    if command:
        raise typer.Exit(run_remote(machines, name, command))
    interactive_ssh(machines, name)


@app.command()
def scp(
    source: str = typer.Argument(..., help="[MACHINE:]PATH"),
    destination: str = typer.Argument(..., help="[MACHINE:]PATH"),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Copy folders."),
) -> None:
    """Copy files between this host and a machine: pymachine scp ./f dev:/tmp/f."""
    from .sshcommand import copy

    copy(_machines(), source, destination, recursive)


# -- ports, doctor, drivers, image -----------------------------------------------------


@app.command()
def ports(name: str, fmt: str = typer.Option("table", "--format", "-f", help="table or json.")) -> None:
    """List a machine's port forwards and the watcher's health."""
    from .watcherproc import WatcherProcess, forward_report

    machines = _machines()
    machines.load(name)
    report = forward_report(machines.home, name)
    WatcherProcess(machines.home, name).ensure_running_if_machine_runs(machines)
    if fmt == "json":
        print(json.dumps(report, indent=2, sort_keys=True))
        return
    watcher = report["watcher"]
    print(f"watcher: {watcher['state']}" + (f" (pid {watcher['pid']})" if watcher.get("pid") else "") + (f": {watcher['detail']}" if watcher.get("detail") else ""), file=sys.stderr)
    table = [("HOST", "GUEST", "PROTO", "CONTAINER", "STATE")]
    for f in report["forwards"]:
        state = f["state"] + (f" ({f['reason']})" if f.get("reason") else "")
        table.append((f"{f['host_ip']}:{f['host_port']}", str(f["guest_port"]), f["protocol"], f["container"], state))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("   ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())


@app.command()
def doctor(fmt: str = typer.Option("text", "--format", "-f", help="text or json.")) -> None:
    """Check each driver on this host, other hypervisors' VMs, and wanted ports."""
    from .doctor import run_doctor

    report = run_doctor(_machines())
    if fmt == "json":
        print(json.dumps(report, indent=2, sort_keys=True))
        return
    for row in report["drivers"]:
        version = f" {row['version']}" if row.get("version") else ""
        state = "installed" + version if row["installed"] else "not installed"
        print(f"{row['name']:<11} {state}; accelerator: {row['accelerator']}" + (f" - {row['detail']}" if row.get("detail") else ""))
    vms = report["running_vms"]
    print("other VMs:  " + ("; ".join(vms) if vms else "none running"))
    blocked = report["blocked_ports"]
    print("ports:      " + ("; ".join(blocked) if blocked else "every forward has its host port"))


@app.command()
def drivers() -> None:
    """List the drivers and their options (for `create -o KEY=VALUE`)."""
    from .driver import driver_names, load_driver

    for name in driver_names():
        cls = load_driver(name)
        print(f"{name}: {(cls.__doc__ or '').strip().splitlines()[0]}")
        for option_name, default, help_text in cls.options_class.describe():
            print(f"  -o {option_name}=...  {help_text} (default: {default or 'none'})")


@image_app.command("build")
def image_build(force: bool = typer.Option(False, "--force", help="Build even if the cache is up to date.")) -> None:
    """Build the boot ISO, kernel, initrd and engine bundle into the cache (Debian/Ubuntu)."""
    from .image import build_image

    home = _machines().home
    artifacts = build_image(home, force=force)
    for kind in sorted(artifacts.manifest["artifacts"]):
        print(f"{kind}: {artifacts.path(kind)}")


@image_app.command("path")
def image_path() -> None:
    """Print where the boot image is (or would be) in the cache."""
    from .image import MANIFEST_NAME

    home = _machines().home
    print(Path(home.cache) / MANIFEST_NAME)
