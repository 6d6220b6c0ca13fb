"""End to end: a few tiny trials in worker processes, SQLite storage, MLflow store, export."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from search.coordinator import StudySummary, run_study
from search.export import best_config, write_export
from search.vocabulary import TrialAttr
from tests.search.tiny_study import enqueued, settings, tiny_spec
from trainers.config import TrainConfig, load_config

pytestmark = pytest.mark.slow


class KillWorkerAtFirstEpoch:
    """Log hook: when trial `number` reports epoch 1, SIGKILL its worker (a real crash)."""

    def __init__(self, folder: Path, number: int) -> None:
        self.log_file = folder / "runs" / f"trial-{number:04d}" / "worker.log"
        self.marker = f"  trial {number:>3} epoch   1/"
        self.lines: list[str] = []
        self.killed_pid: int | None = None

    def __call__(self, line: str) -> None:
        self.lines.append(line)
        if line.startswith(self.marker) and self.killed_pid is None:
            first_line = self.log_file.read_text().splitlines()[0]
            self.killed_pid = int(first_line.rsplit(" ", 1)[1])
            os.kill(self.killed_pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    folder = tmp_path_factory.mktemp("study")
    previous = Path.cwd()
    os.chdir(folder)  # MLflow puts artifacts under ./mlruns
    try:
        spec = tiny_spec(
            "tiny",
            enqueued("complete", "pretrained", 1),
            enqueued("at_chance", "random", 0),
            enqueued("bad_weights_file", "missing", 0),
            enqueued("crashes", "pretrained", 0),
        )
        hook = KillWorkerAtFirstEpoch(folder, 3)
        summary = run_study(spec, settings(folder, n_trials=5), log=hook)
        study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{folder / 'optuna.db'}")
        yield {"folder": folder, "summary": summary, "study": study, "hook": hook}
    finally:
        os.chdir(previous)


def _trial(study: optuna.Study, number: int) -> optuna.trial.FrozenTrial:
    return next(trial for trial in study.get_trials() if trial.number == number)


def test_trial_states_and_reasons(finished_study: dict[str, Any]) -> None:
    study: optuna.Study = finished_study["study"]
    summary: StudySummary = finished_study["summary"]
    # Five trials used the budget; the crashed one was re-run, so six exist.
    assert summary.finished == 5 and len(study.trials) == 6
    # No trial is left RUNNING.
    assert all(trial.state.is_finished() for trial in study.trials)

    complete = _trial(study, 0)
    assert complete.state == TrialState.COMPLETE
    # The objective is the best validation accuracy over all epochs, not the last.
    assert complete.value == max(complete.intermediate_values.values())
    assert sorted(complete.intermediate_values) == [1, 2, 3]
    assert complete.user_attrs[TrialAttr.BEST_EPOCH] in (1, 2, 3)

    at_chance = _trial(study, 1)
    assert at_chance.state == TrialState.PRUNED
    assert at_chance.user_attrs[TrialAttr.PRUNE_REASON] == "chance"
    assert at_chance.value is not None and at_chance.value == at_chance.value  # never NaN

    bad_file = _trial(study, 2)
    assert bad_file.state == TrialState.FAIL
    assert bad_file.user_attrs[TrialAttr.FAIL_REASON] == "input"
    assert "no such weights file" in bad_file.user_attrs[TrialAttr.FAIL_DETAIL]


def test_a_crashed_worker_fails_its_trial_and_the_study_goes_on(
    finished_study: dict[str, Any],
) -> None:
    study: optuna.Study = finished_study["study"]
    assert finished_study["hook"].killed_pid is not None
    crashed = _trial(study, 3)
    assert crashed.state == TrialState.FAIL
    assert crashed.user_attrs[TrialAttr.FAIL_REASON] == "worker_died"
    assert "killed by SIGKILL" in crashed.user_attrs[TrialAttr.FAIL_DETAIL]
    # An infrastructure failure: re-run once with the same parameters, then the study went on.
    retry = _trial(study, 4)
    assert retry.user_attrs["retry_of"] == 3 and retry.params == crashed.params
    assert retry.state == TrialState.COMPLETE
    assert _trial(study, 5).state.is_finished()
    lines = finished_study["hook"].lines
    assert any(line.startswith("trial   3 FAIL") for line in lines)
    assert any("re-running trial 3 with the same params" in line for line in lines)


def test_mlflow_has_a_parent_run_and_one_child_run_per_trial(
    finished_study: dict[str, Any],
) -> None:
    folder: Path = finished_study["folder"]
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id])
    parents = [run for run in runs if run.data.tags.get("finetune_search.role") == "study"]
    children = [run for run in runs if run.data.tags.get("finetune_search.role") == "trial"]
    assert len(parents) == 1 and len(children) == 6
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    plots = {artifact.path for artifact in client.list_artifacts(parent.info.run_id)}
    # Two completed trials that differ in unfreeze_level: enough to attribute importance.
    assert {"optimization_history.png", "param_importances.png", "trial_outcomes.png"} <= plots
    by_trial = {int(run.data.tags["optuna.trial_number"]): run for run in children}
    assert all(run.data.tags["mlflow.parentRunId"] == parent.info.run_id for run in children)
    # Pruned and failed trials have runs too, closed with their state and reason.
    assert (
        by_trial[0].info.status == "FINISHED"
        and by_trial[0].data.tags["optuna.state"] == "COMPLETE"
    )
    assert by_trial[1].data.tags["prune_reason"] == "chance"
    assert by_trial[2].info.status == "FAILED" and by_trial[2].data.tags["fail_reason"] == "input"
    assert (
        by_trial[3].info.status == "FAILED"
        and by_trial[3].data.tags["fail_reason"] == "worker_died"
    )
    assert not any(run.info.status == "RUNNING" for run in runs)
    # Sampled parameters and the resolved config are params; epochs are metric steps.
    params = by_trial[0].data.params
    assert params["weights"] == "pretrained" and params["phase2.unfreeze_blocks"] == "1"
    assert params["unfreeze_level"] == "1" and params["unfrozen_units"] == "1"
    steps = [m.step for m in client.get_metric_history(by_trial[0].info.run_id, "val_accuracy")]
    assert steps == [1, 2, 3]
    artifacts = {artifact.path for artifact in client.list_artifacts(by_trial[0].info.run_id)}
    assert artifacts == {"config.yaml", "history.csv", "learning_curves.png", "worker.log"}


def test_export_equals_the_config_the_trial_trained_with(finished_study: dict[str, Any]) -> None:
    folder: Path = finished_study["folder"]
    storage = f"sqlite:///{folder / 'optuna.db'}"
    exported = best_config("tiny", storage)
    best = finished_study["study"].best_trial
    # The worker sends back the config exactly as it trained it; MLflow keeps that file.
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    run_id = best.user_attrs["mlflow_run_id"]
    trained_file = client.download_artifacts(run_id, "config.yaml", str(folder))
    trained = TrainConfig.from_yaml(Path(trained_file).read_text())
    assert exported.without_provenance() == trained
    assert TrainConfig.from_yaml(best.user_attrs[TrialAttr.CONFIG_YAML]) == trained
    assert exported.provenance is not None
    assert exported.provenance.study == "tiny"
    assert exported.provenance.trial_number == best.number
    assert exported.provenance.value == best.value
    assert exported.provenance.best_epoch == best.user_attrs[TrialAttr.BEST_EPOCH]
    written = write_export(exported, folder / "exports" / "best.yaml")
    # The file loads as a trainer config, provenance and all.
    assert load_config(written) == exported


def test_resume_continues_a_half_done_study(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    spec = tiny_spec(
        "resumable", enqueued("fails_fast", "missing", 0), enqueued("chance", "random", 0)
    )
    first = run_study(spec, settings(tmp_path, n_trials=2), log=lambda _: None)
    assert first.finished == 2
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    before = {
        t.number: (t.state, t.value, t.datetime_complete)
        for t in optuna.load_study(study_name="resumable", storage=storage).trials
    }
    # The same command with a larger target continues: the finished trials are kept as they
    # were, and only the missing one runs.
    second = run_study(spec, settings(tmp_path, n_trials=3), log=lambda _: None)
    assert second.finished == 3
    study = optuna.load_study(study_name="resumable", storage=storage)
    assert len(study.trials) == 3
    assert {
        t.number: (t.state, t.value, t.datetime_complete) for t in study.trials if t.number < 2
    } == before
    # Running it again with the target reached starts nothing.
    third = run_study(spec, settings(tmp_path, n_trials=3), log=lambda _: None)
    assert (
        third.finished == 3
        and len(optuna.load_study(study_name="resumable", storage=storage).trials) == 3
    )
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("resumable").experiment_id])
    roles = [run.data.tags["finetune_search.role"] for run in runs]
    # One parent run across all three invocations, one child run per trial.
    assert roles.count("study") == 1 and roles.count("trial") == 3


def test_analysis_notebook_runs_on_a_finished_study(finished_study: dict[str, Any]) -> None:
    import json

    import matplotlib

    from tests.conftest import REPO

    matplotlib.use("Agg")
    folder: Path = finished_study["folder"]
    notebook = json.loads((REPO / "notebooks" / "analyze_study.ipynb").read_text())
    code = ["".join(cell["source"]) for cell in notebook["cells"] if cell["cell_type"] == "code"]
    # Point the first cell at the test study, then run every cell as the notebook would.
    namespace: dict[str, Any] = {}
    exec(f"STUDY = 'tiny'\nSTORAGE = 'sqlite:///{folder / 'optuna.db'}'", namespace)
    for cell in code[1:]:
        exec(cell, namespace)
    frame = namespace["frame"]
    assert len(frame) == 6 and frame.loc[1, "outcome"] == "PRUNED: chance"
    assert namespace["outcomes"]["FAIL: worker_died"] == 1
    table = namespace["strategy_table"](frame)
    assert table["count"].sum() == (frame["outcome"] == "COMPLETE").sum()
