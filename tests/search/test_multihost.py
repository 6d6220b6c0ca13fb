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

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy
from sqlalchemy.engine import make_url

from tests.conftest import REPO
from tests.search.harness import CoordinatorProcess, check_final_invariants, snapshot

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

ADMIN_URL = os.environ.get(
    "FINETUNE_SEARCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
TARGET = 12


def _admin() -> sqlalchemy.Engine:
    engine = sqlalchemy.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect():
            pass
    except sqlalchemy.exc.OperationalError as error:
        pytest.fail(f"PostgreSQL at {ADMIN_URL} is not reachable ({error.orig}); start it first")
    return engine


@pytest.fixture
def databases() -> Iterator[tuple[str, str]]:
    """A fresh database for Optuna and one for MLflow, dropped afterwards."""
    admin = _admin()
    names = [f"fts_{uuid.uuid4().hex[:10]}", f"fts_{uuid.uuid4().hex[:10]}_mlflow"]
    with admin.connect() as connection:
        for name in names:
            connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    base = make_url(ADMIN_URL)
    urls = [base.set(database=name).render_as_string(hide_password=False) for name in names]
    try:
        yield urls[0], urls[1]
    finally:
        with admin.connect() as connection:
            for name in names:
                connection.execute(
                    sqlalchemy.text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"
                    ),
                    {"n": name},
                )
                # FORCE: a coordinator's connection that comes back late cannot block it.
                connection.execute(
                    sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                )
        admin.dispose()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def mlflow_server(databases: tuple[str, str], tmp_path: Path) -> Iterator[str]:
    """A real MLflow tracking server on the PostgreSQL database, as in the README."""
    port = _free_port()
    log = (tmp_path / "mlflow-server.log").open("w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            databases[1],
            "--artifacts-destination",
            str(tmp_path / "mlflow-artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        # Its own process group: the server starts uvicorn workers that must go with it.
        start_new_session=True,
        # MLflow 3's background job runner is not needed here and costs CPU.
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            time.sleep(1)
    else:
        os.killpg(server.pid, signal.SIGTERM)
        pytest.fail(
            f"MLflow server did not start: {(tmp_path / 'mlflow-server.log').read_text()[-2000:]}"
        )
    try:
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()


def test_three_coordinators_share_one_postgresql_study(
    databases: tuple[str, str], mlflow_server: str, tmp_path: Path
) -> None:
    storage = databases[0]
    (tmp_path / "weights").symlink_to(REPO / "weights")
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
