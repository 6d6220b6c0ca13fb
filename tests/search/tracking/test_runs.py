"""A study's MLflow runs keep their artifacts beside the tracking store, not in the working folder.

MLflow's own default for a SQLite store is `./mlruns` in whatever folder the process runs in;
the study runs from one folder with its store and its output in two others, and nothing may
land in the first.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from search.runner.coordinator import run_study
from tests.search.scripted_worker import ScriptedWorker
from tests.search.tiny_study import settings, tiny_spec


def test_a_study_run_from_another_folder_keeps_its_artifacts_beside_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work, store, output = tmp_path / "work", tmp_path / "store", tmp_path / "out"
    work.mkdir()
    store.mkdir()
    monkeypatch.chdir(work)
    tracking_uri = f"sqlite:///{store / 'mlflow.db'}"
    lines: list[str] = []
    summary = run_study(
        tiny_spec("artifacts"),
        settings(store, 2, tracking_uri=tracking_uri, output_dir=output),
        log=lines.append,
        worker=ScriptedWorker(),
    )
    assert summary.finished == 2
    assert list(work.iterdir()) == []  # no mlruns/, nothing else either

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("artifacts")
    assert experiment is not None
    beside = store / "mlartifacts" / "artifacts"
    assert experiment.artifact_location == str(beside)
    runs = client.search_runs([experiment.experiment_id])
    roles = sorted(run.data.tags["finetune_search.role"] for run in runs)
    assert roles == ["study", "trial", "trial"]
    for run in runs:
        assert run.info.artifact_uri == str(beside / run.info.run_id / "artifacts")
        listed = {item.path for item in client.list_artifacts(run.info.run_id)}
        on_disk = {path.name for path in (beside / run.info.run_id / "artifacts").iterdir()}
        assert listed and listed == on_disk
        if run.data.tags["finetune_search.role"] == "trial":
            assert {"config.yaml", "history.csv", "worker.log"} <= listed
