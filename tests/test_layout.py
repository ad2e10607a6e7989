"""The layout's arrows: imports only go down. ``routing_env`` (the env) imports neither the agent nor the run
harness; ``agents`` (the agent library) imports nothing of the run harness; inside ``training_run`` each
module imports only the floors below its own. Checked twice: on the source (every import, also those
inside functions) and in fresh processes (what importing a module really loads)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# training_run's floors, lowest first; a module may import only modules of lower floors.
FLOORS = [
    "training_run.settings",
    "training_run.machine",
    "training_run.mps",
    "training_run.guards",
    "training_run.folder",
    "training_run.report.describe",
    "training_run.report.plots",
    "training_run.resume",
    "training_run.loop",
    "training_run.evaluate",
    "training_run.cli",
    "training_run.sweep",
    "training_run.report.tables",
    "training_run.report.mechanisms",
    "training_run.report.speed",
    "training_run.report.pages",
]
PACKAGES = ("routing_env", "agents", "training_run")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> set[str]:
    """Every module of this repository that ``path`` imports, anywhere in the file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)  # `from pkg import module`
    return {n for n in names if n.split(".")[0] in PACKAGES}


def sources(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


@pytest.mark.parametrize(
    "package, forbidden",
    [("routing_env", ("agents", "training_run")), ("agents", ("training_run",))],
)
def test_lower_packages_never_import_higher_ones(package: str, forbidden: tuple[str, ...]) -> None:
    for path in sources(package):
        upward = sorted(n for n in imported(path) if n.split(".")[0] in forbidden)
        assert not upward, f"{module_name(path)} imports {upward}"


def floor(name: str) -> int | None:
    """The floor of a training_run module (a package's ``__init__`` sits below everything), or None."""
    matches = [i for i, f in enumerate(FLOORS) if name == f or name.startswith(f + ".")]
    return matches[0] if matches else None


def test_every_training_run_module_has_a_floor() -> None:
    modules = {module_name(p) for p in sources("training_run")} - {"training_run", "training_run.report"}
    assert modules == set(FLOORS)


def test_training_run_imports_only_go_down() -> None:
    for path in sources("training_run"):
        name = module_name(path)
        own = floor(name)
        for target in imported(path):
            below = floor(target)
            if below is None or own is None:
                continue  # agents, routing_env, or a package's docstring-only __init__
            assert below < own, f"{name} (floor {own}) imports {target} (floor {below}): an upward import"


def loaded_by(modules: list[str]) -> set[str]:
    """The modules a fresh interpreter holds after importing ``modules``."""
    code = f"import importlib, json, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
    code += "print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout))


def repo_modules(package: str) -> list[str]:
    return [module_name(p) for p in sources(package) if p.name != "__main__.py"]


@pytest.mark.parametrize(
    "modules, absent",
    [
        # the env alone: no agent, no harness
        (repo_modules("routing_env"), ("agents", "training_run")),
        # the agent library: nothing of the harness
        (repo_modules("agents"), ("training_run",)),
        # what train.py checks before torch loads: no torch, no plotting, no flag tables
        (
            ["training_run.settings", "training_run.folder", "training_run.resume", "agents.algorithms"],
            ("torch", "matplotlib", "training_run.cli", "training_run.loop"),
        ),
        # the loop: matplotlib loads when the first epoch is plotted, not on import
        (["training_run.loop"], ("matplotlib", "training_run.cli", "training_run.sweep", "ray")),
    ],
    ids=["routing_env", "agents", "storage", "loop"],
)
def test_importing_a_floor_loads_nothing_above_it(modules: list[str], absent: tuple[str, ...]) -> None:
    loaded = loaded_by(modules)
    pulled = sorted(m for m in loaded if any(m == a or m.startswith(a + ".") for a in absent))
    assert not pulled, f"importing {modules} loads {pulled}"
