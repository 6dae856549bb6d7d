"""Imports run one way (DESIGN.md, "Layout"): every module of trl_t3d sits on a floor and imports only from its own
floor or the floors below. The library never imports the toy code (trl_t3d.toy) nor the test helpers
(trl_t3d.testing). Read from the source with `ast`, so an import inside a function counts as much as one at the top."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "trl_t3d"

# Bottom to top. A module belongs to the floor of the longest prefix naming it. `hub` (cards, uploads) sits below the
# trainer, not above evaluation as DESIGN.md's list reads: the trainer's `push_to_hub` / model card are built by hub.py
# (TRL's shape), and hub imports nothing above `trajectories`.
FLOORS: tuple[tuple[str, ...], ...] = (
    ("trl_t3d.version", "trl_t3d.models", "trl_t3d.adapters", "trl_t3d.blocks", "trl_t3d.losses"),
    ("trl_t3d.generation",),
    ("trl_t3d.resolved", "trl_t3d.trajectories"),
    ("trl_t3d.collect",),
    ("trl_t3d.objectives",),
    ("trl_t3d.hub",),
    ("trl_t3d.trainer",),
    ("trl_t3d.evaluation", "trl_t3d.lm_eval"),
    ("trl_t3d", "trl_t3d.cli", "trl_t3d.scripts", "trl_t3d.toy"),  # the package's public API, the command line, toys
)
TEST_HELPERS = "trl_t3d.testing"  # tests (and the toy teacher) only
TOY = "trl_t3d.toy"
# The one place the command line reaches the toy code: `trl-t3d eval --task arithmetic` offers the toy tasks by name.
TOY_IMPORTS_ALLOWED = {("trl_t3d.scripts.evaluate", "trl_t3d.toy.tasks")}


def module_name(path: Path, package_dir: Path = PACKAGE_DIR) -> str:
    parts = [package_dir.name, *path.relative_to(package_dir).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules(package_dir: Path = PACKAGE_DIR) -> dict[str, Path]:
    return {module_name(path, package_dir): path for path in sorted(package_dir.rglob("*.py"))}


def imported_modules(source: str, name: str, is_package: bool, known: set[str]) -> list[tuple[str, int]]:
    """(module of trl_t3d, line) for every import of `source` (module `name`), relative ones resolved; `from X import
    y` counts as importing X.y when that is a module, else X."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in known else module for a in node.names]
        else:
            continue
        for target in targets:
            if target == "trl_t3d" or target.startswith("trl_t3d."):
                while target not in known and "." in target:  # `import trl_t3d.x.Name` -> the module trl_t3d.x
                    target = target.rsplit(".", 1)[0]
                found.append((target, node.lineno))
    return found


def floor_of(module: str) -> int | None:
    best, best_length = None, -1
    for index, prefixes in enumerate(FLOORS):
        for prefix in prefixes:
            inside = (
                module.startswith(prefix + ".") and prefix != "trl_t3d"
            )  # the package __init__ alone, not its modules
            if (module == prefix or inside) and len(prefix) > best_length:
                best, best_length = index, len(prefix)
    return best


def layering_violations(modules: dict[str, Path]) -> list[str]:
    known, problems = set(modules), []
    for name, path in modules.items():
        if name == TEST_HELPERS:
            continue  # the test helpers may build anything (they sit beside the tests, outside the floors)
        floor = floor_of(name)
        if floor is None:
            problems.append(f"{name} is on no floor: add it to FLOORS in tests/test_layering.py")
            continue
        in_toy = name == TOY or name.startswith(TOY + ".")
        for target, line in imported_modules(path.read_text(), name, path.name == "__init__.py", known):
            where = f"{name} (line {line}) imports {target}"
            if target == TEST_HELPERS:
                if not in_toy:
                    problems.append(f"{where}: the test helpers are for tests and the toy code only")
                continue
            if (target == TOY or target.startswith(TOY + ".")) and not in_toy:
                if (name, target) not in TOY_IMPORTS_ALLOWED:
                    problems.append(f"{where}: the library never imports the toy code")
                continue
            target_floor = floor_of(target)
            if target_floor is not None and target_floor > floor:
                problems.append(f"{where}: floor {target_floor} is above {name}'s floor {floor}")
    return problems


def test_no_import_runs_up_a_floor():
    modules = all_modules()
    assert {"trl_t3d.resolved", "trl_t3d.trainer.ddo_trainer", "trl_t3d.toy.demo"} <= set(modules)
    problems = layering_violations(modules)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    "module, source, message",
    [
        ("collect.py", "from . import __version__\n", "imports trl_t3d: floor 8 is above trl_t3d.collect's floor 3"),
        ("evaluation/evaluate.py", "def f():\n    from ..scripts.utils import x\n", "floor 8 is above"),
        ("generation/decode.py", "import trl_t3d.trainer.collator\n", "imports trl_t3d.trainer.collator: floor 6"),
        ("hub.py", "from .toy.tasks import get_task\n", "the library never imports the toy code"),
        ("trainer/rounds.py", "from .. import testing\n", "the test helpers are for tests and the toy code only"),
        ("newthing.py", "x = 1\n", "trl_t3d.newthing is on no floor"),
    ],
)
def test_the_check_catches_an_upward_import(tmp_path, module, source, message):
    """The check itself: a module written here that imports up a floor (or the toys, or the test helpers) is named."""
    package = tmp_path / "trl_t3d"
    for name in ("__init__.py", "collect.py", "hub.py", "testing.py", "evaluation/__init__.py",
                 "evaluation/evaluate.py", "scripts/__init__.py", "scripts/utils.py", "generation/__init__.py",
                 "generation/decode.py", "trainer/__init__.py", "trainer/collator.py", "trainer/rounds.py",
                 "toy/__init__.py", "toy/tasks.py"):  # fmt: skip
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text("")
    (package / module).write_text(source)
    problems = layering_violations(all_modules(package))
    assert len(problems) == 1 and message in problems[0], problems
