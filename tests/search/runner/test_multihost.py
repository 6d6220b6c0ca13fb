"""Three coordinators x two workers share one study on PostgreSQL and one MLflow server.

Each coordinator stands for a host: its own process, output folder and worker pool, meeting
the others only through the Optuna storage and the MLflow tracking server. The coordinators
are the real command; their workers play scripted epochs (tests/search/scripted_run.py), since
what is tested is how coordinators share a study, not training (test_faults and
test_study_run train for real). The test creates
and drops its own databases on the server at FINETUNE_SEARCH_POSTGRES_URL (default
postgresql://postgres@127.0.0.1:5432/test).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.search.harness import CoordinatorProcess, check_final_invariants, snapshot
from tests.search.servers import free_port, mlflow_server_command, started, wait_until_ready

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

TARGET = 12


@pytest.fixture
def mlflow_server(databases: tuple[str, str], tmp_path: Path) -> Iterator[str]:
    """A real MLflow tracking server on the PostgreSQL database, as in the README."""
    port = free_port()
    command = mlflow_server_command(tmp_path, port)
    command[command.index("--backend-store-uri") + 1] = databases[1]
    log = tmp_path / "mlflow-server.log"
    with started(command, log) as server:
        url = f"http://127.0.0.1:{port}"
        wait_until_ready(server, f"{url}/health", log)
        yield url


def test_three_coordinators_share_one_postgresql_study(
    databases: tuple[str, str], mlflow_server: str, tmp_path: Path
) -> None:
    storage = databases[0]
    coordinators = [
        CoordinatorProcess(
            [
                "--study",
                "smoke",
                "--n-trials",
                str(TARGET),
                "--workers",
                "2",
                "--storage",
                storage,
                "--tracking-uri",
                mlflow_server,
                "--output",
                f"host{index}",
                "--heartbeat-interval",
                "2",
                "--grace-period",
                "30",
            ],
            tmp_path,
            module="tests.search.scripted_run",
        )
        for index in range(3)
    ]
    codes = [coordinator.finish() for coordinator in coordinators]
    for index, coordinator in enumerate(coordinators):
        (tmp_path / f"coordinator{index}.log").write_text(coordinator.output)
    failed = [c.output[-4000:] for c, code in zip(coordinators, codes, strict=True) if code]
    assert codes == [0, 0, 0], "\n\n".join(failed)
    final = snapshot("smoke", storage, mlflow_server, TARGET)
    check_final_invariants(final, TARGET)
    # Exactly the target, no more: the coordinators never over-asked between them. (A trial
    # lost to the machine, e.g. an OOM kill, is re-run under a new number and not counted.)
    assert len(final.states) == TARGET + len(final.retried())
    # Every coordinator did part of the work, and each trial ran once.
    started = [sum(" started (slot " in line for line in c.lines) for c in coordinators]
    assert all(count >= 1 for count in started) and sum(started) == len(final.states)
    assert not any("database is locked" in c.output for c in coordinators)
