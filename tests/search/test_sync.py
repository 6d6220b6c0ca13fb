"""`python -m search.sync`: a spool goes into the store that holds its runs, or nowhere.

The spools are those of a real outage (tests/search/tracking/test_spool.py writes them against
a server that does not answer); the stores are real SQLite MLflow stores.
"""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow import MlflowClient

from search.sync import main as sync_main
from tests.search.tracking.test_spool import spool_of_an_outage


@dataclass(frozen=True)
class StudyStore:
    """A study's SQLite MLflow store: its experiment, and a run created before the outage."""

    path: Path
    experiment_id: str
    run_id: str

    def copy(self, folder: Path) -> tuple[str, MlflowClient]:
        """A copy in `folder` (a store takes seconds to create, a copy none): URI, client."""
        folder.mkdir()
        shutil.copy(self.path, folder / "mlflow.db")
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        return uri, MlflowClient(uri)


@pytest.fixture(scope="module")
def study_store(tmp_path_factory: pytest.TempPathFactory) -> StudyStore:
    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    client = MlflowClient(f"sqlite:///{path}")
    experiment_id = client.create_experiment("outage")
    run = client.create_run(experiment_id, run_name="trial-0000")
    return StudyStore(path, experiment_id, run.info.run_id)


@pytest.fixture(autouse=True)
def _no_waiting_for_a_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def test_the_study_store_takes_the_spool(tmp_path: Path, study_store: StudyStore) -> None:
    uri, client = study_store.copy(tmp_path / "study")
    experiment_id, run_id = study_store.experiment_id, study_store.run_id
    spool = spool_of_an_outage(tmp_path, experiment_id, run_id)
    assert sync_main(["--output", str(tmp_path), "--tracking-uri", uri]) == 0
    assert not spool.exists()
    history = client.get_metric_history(run_id, "val_accuracy")
    assert [(m.step, m.value, m.timestamp) for m in history] == [(2, 0.75, 1_000)]
    runs = {run.info.run_name: run for run in client.search_runs([experiment_id])}
    assert sorted(runs) == ["trial-0000", "trial-0001"]
    assert all(run.info.status == "FINISHED" for run in runs.values())


def test_a_store_without_the_spools_runs_is_one_error_line_and_writes_nothing(
    tmp_path: Path, study_store: StudyStore, capsys: pytest.CaptureFixture[str]
) -> None:
    # Another study's store, whose experiment happens to have the same id as the spool's.
    other_uri, other = study_store.copy(tmp_path / "other")
    run_id = uuid.uuid4().hex  # the spool's run, in its own study's store
    spool = spool_of_an_outage(tmp_path, study_store.experiment_id, run_id)
    kept = spool.read_bytes()
    capsys.readouterr()
    assert sync_main(["--output", str(tmp_path), "--tracking-uri", other_uri]) == 2
    printed = capsys.readouterr()
    assert printed.out == ""
    assert printed.err.splitlines() == [
        f"error: the MLflow store at {other_uri} has no run {run_id}, which {spool} writes to; "
        "pass the study's --tracking-uri (the spools are kept)"
    ]
    assert spool.read_bytes() == kept
    runs = other.search_runs([study_store.experiment_id])
    assert [run.info.run_name for run in runs] == ["trial-0000"]


def test_no_store_where_the_uri_points_is_one_error_line_and_creates_none(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # As printed before the study's URI was part of the command: the default, ./mlflow.db.
    output = tmp_path / "runs"
    output.mkdir()
    spool = spool_of_an_outage(output, "1", uuid.uuid4().hex)
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert sync_main(["--output", "runs"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: no MLflow store at sqlite:///mlflow.db (mlflow.db does not exist); pass the "
        "study's --tracking-uri (the spools are kept)"
    ]
    assert not (tmp_path / "mlflow.db").exists() and spool.is_file()
