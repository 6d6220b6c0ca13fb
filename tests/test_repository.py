"""Repository-level promises: CI runs the README's test command, and the dependency rule."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import REPO


def _readme_commands() -> list[str]:
    return re.findall(r"```bash\n(.*?)\n```", (REPO / "README.md").read_text(), re.S)


def test_ci_runs_exactly_the_readme_test_command() -> None:
    test_commands = [command for command in _readme_commands() if "pytest" in command]
    assert len(test_commands) == 1
    assert test_commands[0] in (REPO / ".ci" / "run").read_text().splitlines()


def test_trainers_never_import_the_search_machinery() -> None:
    # docs/architecture.md's dependency rule: production training runs without Optuna or search.
    offenders = [
        path.name
        for path in (REPO / "trainers").glob("*.py")
        if re.search(r"^\s*(import|from)\s+(optuna|search)\b", path.read_text(), re.M)
    ]
    assert offenders == []


def test_the_search_coordinator_never_loads_tensorflow() -> None:
    # The coordinator must hold no GPU memory and start fast: everything it imports, including
    # the worker module it spawns from, leaves TensorFlow and Keras to the workers.
    code = (
        "import sys; import search.run, search.export, search.runner.coordinator, "
        "search.runner.worker;"
        "loaded = [m for m in ('tensorflow', 'keras') if m in sys.modules]; print(loaded)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]", done.stdout
