"""Several CPU workers under one coordinator, on the default SQLite storage."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.search.harness import (
    CoordinatorProcess,
    check_final_invariants,
    is_finished_line,
    snapshot,
)

pytestmark = pytest.mark.slow


def test_two_cpu_workers_share_one_sqlite_study(tmp_path: Path) -> None:
    (tmp_path / "weights").symlink_to(REPO / "weights")
    coordinator = CoordinatorProcess(
        ["--study", "smoke", "--n-trials", "3", "--workers", "2"], tmp_path
    )
    assert coordinator.finish() == 0, coordinator.output[-3000:]
    lines = coordinator.lines
    started = [i for i, line in enumerate(lines) if " started (slot " in line]
    first_finished = next(i for i, line in enumerate(lines) if is_finished_line(line))
    # Two trials ran at once, one per slot.
    assert len([i for i in started if i < first_finished]) == 2
    assert {line.split("(slot ")[1][0] for line in lines if " started (slot " in line} == {"0", "1"}
    assert "database is locked" not in coordinator.output
    final = snapshot(
        "smoke",
        "sqlite:///" + str(tmp_path / "optuna.db"),
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        3,
    )
    check_final_invariants(final, 3)
    assert len(final.states) == 3
