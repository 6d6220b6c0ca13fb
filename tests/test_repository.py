"""Repository-level promises: CI runs the README's test command, and the dependency rule."""

from __future__ import annotations

import re

from tests.conftest import REPO


def _readme_commands() -> list[str]:
    return re.findall(r"```bash\n(.*?)\n```", (REPO / "README.md").read_text(), re.S)


def test_ci_runs_exactly_the_readme_test_command() -> None:
    test_commands = [command for command in _readme_commands() if "pytest" in command]
    assert len(test_commands) == 1
    assert test_commands[0] in (REPO / ".ci" / "run").read_text().splitlines()


def test_trainers_never_import_the_search_machinery() -> None:
    # DESIGN.md's dependency rule: production training runs without Optuna or search loaded.
    offenders = [
        path.name
        for path in (REPO / "trainers").glob("*.py")
        if re.search(r"^\s*(import|from)\s+(optuna|search)\b", path.read_text(), re.M)
    ]
    assert offenders == []
