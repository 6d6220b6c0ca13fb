"""End to end: a few tiny trials in worker processes, SQLite storage, MLflow store, export."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from search.export import best_config, write_export
from search.pruning.collapse import CollapseRules
from search.runner.coordinator import StudySummary, run_study
from search.runner.slots import worker_environments
from search.vocabulary import TrialAttr
from tests.search.tiny_study import enqueued, settings, tiny_spec
from trainers.config.schema import TrainConfig, load_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    folder = tmp_path_factory.mktemp("study")
    previous = Path.cwd()
    os.chdir(folder)  # MLflow puts artifacts under ./mlruns
    try:
        spec = replace(
            tiny_spec(
                "tiny",
                enqueued("complete", "pretrained", 1),
                enqueued("at_chance", "random", 0),
                enqueued("bad_weights_file", "missing", 0),
            ),
            # About 10 validation images: no accuracy is measurably near chance on so few, so
            # the noise test is off here and the rules judge point values; the noise test is
            # tested on realistic counts in test_pruning.py and test_coordinator.py.
            rules=CollapseRules(noise_z=0.0),
        )
        # Two CPU workers: much of a tiny trial is its worker's start, which overlaps.
        workers = {"workers": 2, "worker_environments": worker_environments(2, [])}
        summary = run_study(spec, settings(folder, n_trials=3, **workers), log=lambda _: None)
        study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{folder / 'optuna.db'}")
        yield {"folder": folder, "summary": summary, "study": study}
    finally:
        os.chdir(previous)


def _trial(study: optuna.Study, number: int) -> optuna.trial.FrozenTrial:
    return next(trial for trial in study.get_trials() if trial.number == number)


def test_trial_states_and_reasons(finished_study: dict[str, Any]) -> None:
    study: optuna.Study = finished_study["study"]
    summary: StudySummary = finished_study["summary"]
    # Three trials used the budget (a crashed worker and its re-run: test_coordinator).
    assert summary.finished == 3 and len(study.trials) == 3
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
    assert at_chance.user_attrs[TrialAttr.PRUNE_EVIDENCE].endswith("noise ±0.0 pts)")
    assert at_chance.value is not None and at_chance.value == at_chance.value  # never NaN

    bad_file = _trial(study, 2)
    assert bad_file.state == TrialState.FAIL
    assert bad_file.user_attrs[TrialAttr.FAIL_REASON] == "input"
    assert "no such weights file" in bad_file.user_attrs[TrialAttr.FAIL_DETAIL]


def test_mlflow_has_a_parent_run_and_one_child_run_per_trial(
    finished_study: dict[str, Any],
) -> None:
    folder: Path = finished_study["folder"]
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id])
    parents = [run for run in runs if run.data.tags.get("finetune_search.role") == "study"]
    children = [run for run in runs if run.data.tags.get("finetune_search.role") == "trial"]
    assert len(parents) == 1 and len(children) == 3
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    plots = {artifact.path for artifact in client.list_artifacts(parent.info.run_id)}
    # One completed trial: no importances yet (test_coordinator has them), but the rest.
    assert {"optimization_history.png", "trial_outcomes.png"} <= plots
    by_trial = {int(run.data.tags["optuna.trial_number"]): run for run in children}
    assert all(run.data.tags["mlflow.parentRunId"] == parent.info.run_id for run in children)
    # Pruned and failed trials have runs too, closed with their state and reason.
    assert (
        by_trial[0].info.status == "FINISHED"
        and by_trial[0].data.tags["optuna.state"] == "COMPLETE"
    )
    assert by_trial[1].data.tags["prune_reason"] == "chance"
    assert by_trial[2].info.status == "FAILED" and by_trial[2].data.tags["fail_reason"] == "input"
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
