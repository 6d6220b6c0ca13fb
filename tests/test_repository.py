"""Repository-level promises: CI runs the README's test command, the layering rules
(docs/architecture.md), no import circle, no module past 400 lines, and which modules load no
TensorFlow (this file is the one place that checks it)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import REPO

PACKAGES = ("search", "trainers", "spaces", "bench")


def _readme_commands() -> list[str]:
    return re.findall(r"```bash\n(.*?)\n```", (REPO / "README.md").read_text(), re.S)


def _modules(package: str) -> Iterator[tuple[str, Path]]:
    """(dotted name, path) of every module of `package`, subpackages included."""
    for path in sorted((REPO / package).rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        yield ".".join(parts), path


def _imports(path: Path, module: str) -> set[str]:
    """Every module `path` imports, at the top or inside a function, absolute names."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def test_ci_runs_exactly_the_readme_test_command() -> None:
    test_commands = [command for command in _readme_commands() if "pytest" in command]
    assert len(test_commands) == 1
    assert test_commands[0] in (REPO / ".ci" / "run").read_text().splitlines()


def test_the_layers_import_only_downwards() -> None:
    # Production training runs without Optuna or the search loaded; spaces are pure functions
    # of a trial, with no Keras.
    # Nothing the product needs lives in bench/.
    forbidden = {
        "trainers": ("optuna", "search", "bench"),
        "spaces": ("keras", "tensorflow", "search", "bench"),
        "search": ("bench",),
    }
    offenders = [
        f"{module} imports {name}"
        for package, banned in forbidden.items()
        for module, path in _modules(package)
        for name in _imports(path, module)
        if name.split(".")[0] in banned
    ]
    assert offenders == []


def test_there_is_no_import_circle() -> None:
    modules = {name: path for package in PACKAGES for name, path in _modules(package)}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for imported in _imports(path, name):
            while imported and imported not in modules:
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                targets.add(imported)
        graph[name] = targets
    # Depth-first search for a back edge; the path to it is the circle.
    state: dict[str, int] = {}
    circles: list[str] = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                circles.append(" -> ".join([*trail[trail.index(target) :], target]))
            elif target not in state:
                visit(target, [*trail, target])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert circles == []


def test_subpackage_inits_are_empty_and_no_module_is_past_400_lines() -> None:
    # An __init__ that imported its modules would load them (and maybe TensorFlow) for every
    # user of one of them.
    too_long, not_empty = [], []
    for package in PACKAGES:
        for module, path in _modules(package):
            lines = path.read_text().count("\n")
            if lines > 400:
                too_long.append(f"{module} ({lines} lines)")
            tree = ast.parse(path.read_text())
            body = [node for node in tree.body if not isinstance(node, ast.Expr)]
            if path.name == "__init__.py" and body:
                not_empty.append(module)
    assert too_long == [] and not_empty == []


def test_the_search_side_never_loads_tensorflow() -> None:
    # The coordinator must hold no GPU memory and start fast: every module of search/ and
    # spaces/ (the worker module it spawns from included) and the trainers modules they use
    # leave TensorFlow and Keras to the workers; listing a study's space, study files
    # included, and sampling a space load neither either. So does `trainers.train`'s own
    # module: its input checks come before it imports TensorFlow (test_train_cli.py checks
    # that a bad input's run stops there).
    modules = [name for package in ("search", "spaces") for name, _ in _modules(package)]
    modules += [
        "trainers.train",
        "trainers.outputs",
        "trainers.config.schema",
        "trainers.fit.history",
        "trainers.fit.window",
        "trainers.tracking",
        "trainers.data.image_folder",
        "trainers.model.backbones",
    ]
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "from optuna.trial import FixedTrial\n"
        "from search.studies import main\n"
        "from search.study.registry import EFFNET_B4_RECIPE\n"
        "import spaces.effnet_b4\n"
        "assert main(['effnet_b4']) == 0\n"
        "assert main(['studies/image_folder_local_weights.yaml', '--backbone', 'ResNet50']) == 0\n"
        "spaces.effnet_b4.space(FixedTrial(dict(EFFNET_B4_RECIPE.params)))\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras'))\n"
        "print('LOADED', loaded)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "LOADED []"
