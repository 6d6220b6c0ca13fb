"""Spools written while the MLflow server is away, and what the study says about them.

The server here is a port nothing listens on: every write is refused at once, as by a server
that went away, so each test takes a second, not an outage's minutes. The whole outage, with a
live server killed and restarted, is tests/search/tracking/test_tracking_outage.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from search.tracking.spool import SpooledWriter, read_spool, spool_path
from tests.search.servers import free_port
from trainers.tracking import make_client


def spool_of_an_outage(output: Path, experiment_id: str, run_id: str) -> Path:
    """The spool a study leaves when its server went away while run `run_id` trained (its
    epoch 2 and its end unwritten) and before the next trial started (a run to create)."""
    server = f"http://127.0.0.1:{free_port()}"
    writer = SpooledWriter(make_client(server), spool_path(output), tracking_uri=server, warn=print)
    writer.log_batch(run_id, metrics=[("val_accuracy", 0.75, 1_000, 2)])
    writer.set_terminated(run_id, status="FINISHED")
    created = writer.create_run(experiment_id, run_name="trial-0001", tags={"optuna.state": "X"})
    writer.log_batch(created, metrics=[("val_accuracy", 0.5, 2_000, 1)])
    writer.set_terminated(created, status="FINISHED")
    assert [item["op"] for item in read_spool(writer.path)] == [
        "log_batch",
        "set_terminated",
        "create_run",
        "log_batch",
        "set_terminated",
    ]
    return writer.path


@pytest.fixture(autouse=True)
def _no_waiting_for_a_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


def test_a_server_that_never_came_back_gets_the_whole_sync_command_printed(
    tmp_path: Path,
) -> None:
    port = free_port()
    uri = f"http://tester:S3cret@127.0.0.1:{port}"
    lines: list[str] = []
    writer = SpooledWriter(
        make_client(uri), spool_path(tmp_path), tracking_uri=uri, warn=lines.append
    )
    writer.log_batch("0" * 32, metrics=[("val_accuracy", 0.5, 1_000, 1)])
    writer.close()
    assert writer.path.is_file()
    # The study's tracking URI, quoted for the shell (its stars), without the password.
    assert lines[-1].endswith(
        f"1 MLflow writes are kept in {writer.path}. Nothing is lost: replay them with "
        f"python -m search.sync --output {tmp_path} "
        f"--tracking-uri 'http://tester:***@127.0.0.1:{port}'"
    )
    assert not any("S3cret" in line for line in lines)
