"""The shape of the package: one import name, rooms by concern, arrows pointing down.

Read from the source with `ast`, so that a module added to the wrong room, a print in
the core, or an import that points up fails here rather than in a review.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pymachine.driver import ENTRY_POINT_GROUP, driver_names

ROOT = Path(__file__).resolve().parent.parent
#: Repository folder -> the import path it is installed as (pyproject.toml's package-dir).
FOLDERS = {"machine": "pymachine", "drivers": "pymachine.drivers", "iso": "pymachine.iso"}

#: The floors, lowest first. A module may import from a lower floor, or from its own room.
FOUNDATION = {"pymachine", "pymachine.arch", "pymachine.errors", "pymachine.runner", "pymachine.progress", "pymachine.locking", "pymachine.procs", "pymachine.store", "pymachine.driver"}
FLOORS = {"foundation": 0, "guest": 1, "drivers": 1, "forwarding": 2, "core": 3, "iso": 4, "cli": 5}


def modules() -> dict[str, Path]:
    """Every module of the package, by its import path."""
    found = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    # drivers/ and iso/ are rooms of their own, not modules of the core's top level.
    return found


def room(module: str) -> str:
    if module in FOUNDATION:
        return "foundation"
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in ("cli", "guest", "forwarding", "drivers", "iso"):
        return parts[1]
    return "core"


def imports(path: Path, module: str, *, typing_only: bool) -> set[str]:
    """The pymachine modules `module` imports, at any depth of its code."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    if not typing_only:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                skip.update(id(n) for n in ast.walk(node))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    known = modules()
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from pymachine.guest import certs` imports the module pymachine.guest.certs.
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def test_each_folder_is_installed_under_pymachine() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    for folder, package in FOLDERS.items():
        assert f'"{package}" = "{folder}"' in text


def test_the_wheel_claims_the_pymachine_import_name_alone(tmp_path: Path) -> None:
    # Built from a copy of the tracked files, so the checkout's own build/ is not touched.
    source = tmp_path / "source"
    tracked = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split("\n")
    for name in filter(None, tracked):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    tops = {name.split("/", 1)[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"pymachine"}
    names = zipfile.ZipFile(wheel).namelist()
    assert "pymachine/drivers/qemu.py" in names and "pymachine/iso/packages-arm64.lock" in names
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "pymachine = pymachine.cli.main:main" in entry_points
    assert f"[{ENTRY_POINT_GROUP}]" in entry_points


def test_the_driver_entry_points_find_the_three_drivers() -> None:
    from importlib.metadata import entry_points

    found = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    assert driver_names() == ["parallels", "qemu", "virtualbox"]
    assert all(value.startswith("pymachine.drivers.") for value in found.values())


def test_nothing_outside_the_cli_prints() -> None:
    offenders = []
    for module, path in modules().items():
        if room(module) == "cli":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                offenders.append(f"{module}:{node.lineno} print()")
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "sys" and node.attr in ("stdout", "stderr"):
                offenders.append(f"{module}:{node.lineno} sys.{node.attr}")
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                offenders += [f"{module}:{node.lineno} imports {n}" for n in names if n.split(".")[0] in ("typer", "rich", "click")]
    assert offenders == []


def test_imports_point_down_the_floors() -> None:
    upward = []
    for module, path in modules().items():
        mine = room(module)
        for target in imports(path, module, typing_only=True):
            theirs = room(target)
            if theirs != mine and FLOORS[theirs] >= FLOORS[mine]:
                upward.append(f"{module} ({mine}) imports {target} ({theirs})")
    assert upward == []


def test_no_import_cycles() -> None:
    graph = {module: imports(path, module, typing_only=False) for module, path in modules().items()}
    cycles = []

    def visit(node: str, trail: list[str], done: set[str]) -> None:
        if node in trail:
            cycles.append(" -> ".join(trail[trail.index(node) :] + [node]))
            return
        if node in done:
            return
        for target in sorted(graph.get(node, ())):
            if target != "pymachine":  # the package's own __init__ holds only the version
                visit(target, trail + [node], done)
        done.add(node)

    done: set[str] = set()
    for module in sorted(graph):
        visit(module, [], done)
    assert cycles == []


@pytest.mark.parametrize("room_name", ["cli", "guest", "forwarding"])
def test_each_room_has_its_package(room_name: str) -> None:
    assert (ROOT / "machine" / room_name / "__init__.py").is_file()
    assert any(room(m) == room_name for m in modules())


def test_the_distribution_and_the_package_have_one_version() -> None:
    import tomllib

    from pymachine import __version__

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == "pymachine-vm", "the PyPI name `pymachine` is another project's"
    assert project["version"] == __version__
    pins = [r for r in project["dependencies"] if r.startswith("pymachine-vm-image-")]
    assert len(pins) == 2 and all(f"=={__version__};" in r.replace(" ", "") for r in pins)
