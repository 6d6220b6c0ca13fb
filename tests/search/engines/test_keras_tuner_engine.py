"""End to end: `search.run --engine keras-tuner` with each oracle and MLflow.

The smoke study: Hyperband over it (max_epochs 3, factor 3) runs two brackets, six trials, one
of which continues an earlier round's trial from its saved weights. It runs on two workers, its
coordinator is killed with SIGKILL part-way and the same command completes it, as a user would;
every check but the oracles' and the budget's is of that resumed study. The workers play scripted
epochs (tests/search/scripted_run.py): what is tested is how KerasTuner's oracles drive the study.
That a real worker saves its best epoch's weights whole and a continuation trains from them is
tests/trainers/fit/test_epoch_window.py; a coordinator killed while real workers train is
tests/search/runner/test_faults_coordinator.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import FrozenTrial, TrialState

from search.export import main as export_main
from search.trial.files import BEST_WEIGHTS
from search.vocabulary import StudyAttr, TrialAttr
from tests.search.harness import (
    CoordinatorProcess,
    check_final_invariants,
    check_nothing_lost,
    is_epoch_line,
    is_finished_line,
    kill_all,
    snapshot,
)
from trainers.config.schema import TrainConfig, load_config

pytestmark = pytest.mark.slow

#: Hyperband over the smoke space: bracket 1 runs 3 trials of 1 epoch and continues the best
#: up to epoch 3; bracket 0 runs 2 trials of 3 epochs.
HYPERBAND_TRIALS = 6


def search_command(folder: Path, oracle: str, *extra: str) -> list[str]:
    return [
        "--study", "smoke", "--image-size", "32", "--engine", "keras-tuner", "--oracle", oracle,
        "--storage", f"sqlite:///{folder / 'optuna.db'}",
        "--tracking-uri", f"sqlite:///{folder / 'mlflow.db'}",
        "--output", str(folder / "runs"),
        "--heartbeat-interval", "1", "--grace-period", "4",
        *extra,
    ]  # fmt: skip


def scripted_search(
    folder: Path, oracle: str, *extra: str, seconds_per_epoch: float = 0.3
) -> CoordinatorProcess:
    """The `search.run` command, its workers scripted, started in `folder`."""
    command = search_command(folder, oracle, *extra)
    return CoordinatorProcess(
        command,
        folder,
        {"SCRIPTED_SECONDS_PER_EPOCH": str(seconds_per_epoch)},
        module="tests.search.scripted_run",
    )


def load(folder: Path) -> optuna.Study:
    return optuna.load_study(study_name="smoke", storage=f"sqlite:///{folder / 'optuna.db'}")


@pytest.fixture(scope="module")
def hyperband(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    folder = tmp_path_factory.mktemp("hyperband")
    stores = ("smoke", f"sqlite:///{folder / 'optuna.db'}", f"sqlite:///{folder / 'mlflow.db'}")
    try:
        first = scripted_search(folder, "hyperband", "--workers", "2")
        for _ in range(2):
            assert first.read_until(is_finished_line) is not None, first.output
        # A trial is training: the kill leaves it RUNNING, for the resume to find stale.
        assert first.read_until(is_epoch_line) is not None, first.output
        first.kill()
        before = snapshot(*stores, target=HYPERBAND_TRIALS)
        resumed = scripted_search(folder, "hyperband", "--workers", "2")
        assert resumed.finish() == 0, resumed.output
        final = snapshot(*stores, target=HYPERBAND_TRIALS)
        yield {
            "folder": folder,
            "output": resumed.output,
            "study": load(folder),
            "before": before,
            "final": final,
        }
    finally:
        kill_all()


def finished(study: optuna.Study) -> list[FrozenTrial]:
    return [t for t in study.get_trials() if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


def _continuation(study: optuna.Study) -> FrozenTrial:
    continuing = [t for t in finished(study) if TrialAttr.CONTINUES_TRIAL in t.user_attrs]
    # Exactly one trial of bracket 1's second round continues an earlier one.
    assert len(continuing) == 1, [t.user_attrs for t in study.get_trials()]
    return continuing[0]


def test_a_killed_coordinator_loses_and_duplicates_no_trial(hyperband: dict[str, Any]) -> None:
    study: optuna.Study = hyperband["study"]
    final = hyperband["final"]
    # Every trial finished before the kill keeps its value; the study is complete and
    # consistent: nothing RUNNING, one closed MLflow run per trial, re-runs keep their params.
    check_nothing_lost(hyperband["before"], final)
    check_final_invariants(final, target=HYPERBAND_TRIALS)
    # The trials the kill left running were failed as stale and run again, once each.
    stale = [t for t in study.get_trials() if t.state == TrialState.FAIL]
    reruns = {
        t.user_attrs[TrialAttr.RETRY_OF]: t.user_attrs[TrialAttr.RETRY_REASON]
        for t in study.get_trials()
        if TrialAttr.RETRY_OF in t.user_attrs
    }
    assert stale and {t.number: "stale_heartbeat" for t in stale} == reruns, reruns
    # Each KerasTuner trial has exactly one finished Optuna trial.
    ids = [t.user_attrs[TrialAttr.KERAS_TUNER_TRIAL] for t in finished(study)]
    assert sorted(set(ids)) == sorted(ids) and len(ids) == HYPERBAND_TRIALS
    assert "queued again" in hyperband["output"]


def test_hyperband_runs_its_brackets_as_epoch_windows(hyperband: dict[str, Any]) -> None:
    study: optuna.Study = hyperband["study"]
    trials = finished(study)
    # Hyperband's schedule ends the study: its six trials.
    assert len(trials) == HYPERBAND_TRIALS
    assert "the engine's search is complete" in hyperband["output"]
    # The study records its engine.
    assert study.user_attrs[StudyAttr.ENGINE] == "keras-tuner hyperband"
    # Each trial trains only its round's window of epochs: up to `tuner/epochs`, and a
    # continuation only after the epoch its earlier trial reached.
    for trial in trials:
        until = trial.user_attrs[TrialAttr.UNTIL_EPOCH]
        after = trial.user_attrs.get(TrialAttr.AFTER_EPOCH, 0)
        steps = sorted(trial.intermediate_values)
        assert steps and steps[0] == after + 1 and steps[-1] <= until, (trial.number, steps)
        assert trial.user_attrs[TrialAttr.EPOCHS_SPENT] == len(steps)
    # Bracket 1's first round trains one epoch per trial.
    first_round = [
        t
        for t in trials
        if t.user_attrs[TrialAttr.HYPERBAND_BRACKET] == 1
        and t.user_attrs[TrialAttr.HYPERBAND_ROUND] == 0
    ]
    assert len(first_round) == 3
    assert all(t.user_attrs[TrialAttr.UNTIL_EPOCH] == 1 for t in first_round)


def test_a_continuation_starts_from_the_best_of_its_round(hyperband: dict[str, Any]) -> None:
    study: optuna.Study = hyperband["study"]
    folder: Path = hyperband["folder"]
    continuation = _continuation(study)
    earlier = next(
        t for t in study.get_trials() if t.number == continuation.user_attrs["continues_trial"]
    )
    first_round = [
        t
        for t in finished(study)
        if t.user_attrs[TrialAttr.HYPERBAND_BRACKET] == 1
        and t.user_attrs[TrialAttr.HYPERBAND_ROUND] == 0
    ]
    # Hyperband promotes the best trial of the round, with the same parameters.
    assert earlier.number in {t.number for t in first_round}
    assert max(t.value or 0.0 for t in first_round) == earlier.value
    assert continuation.params == earlier.params
    # It starts after the earlier trial's epoch, from the best-epoch weights that trial's
    # worker was asked to save in its folder.
    assert continuation.user_attrs[TrialAttr.AFTER_EPOCH] == 1
    weights = folder / "runs" / f"trial-{earlier.number:04d}" / BEST_WEIGHTS
    log = (folder / "runs" / f"trial-{continuation.number:04d}" / "worker.log").read_text()
    assert f"initial weights: {weights}" in log
    # No other trial starts from saved weights.
    others = [t for t in finished(study) if t.number != continuation.number]
    for trial in others:
        other_log = folder / "runs" / f"trial-{trial.number:04d}" / "worker.log"
        assert "initial weights" not in other_log.read_text(), trial.number


def test_every_trial_has_one_mlflow_run(hyperband: dict[str, Any]) -> None:
    study: optuna.Study = hyperband["study"]
    client = MlflowClient(f"sqlite:///{hyperband['folder'] / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("smoke")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    roles = [run.data.tags.get("finetune_search.role") for run in runs]
    # One parent run, one closed child run per trial, as with the Optuna engine.
    assert roles.count("study") == 1
    trial_runs = {
        int(run.data.tags["optuna.trial_number"]): run
        for run in runs
        if run.data.tags.get("finetune_search.role") == "trial"
    }
    assert sorted(trial_runs) == [t.number for t in study.get_trials()]
    for trial in finished(study):
        run = trial_runs[trial.number]
        assert run.info.status == "FINISHED"
        history = client.get_metric_history(run.info.run_id, "val_accuracy")
        # Its epochs are logged at their global steps, the window's and no others.
        assert [m.step for m in history] == sorted(trial.intermediate_values)


def test_the_oracle_heard_every_result(hyperband: dict[str, Any]) -> None:
    study: optuna.Study = hyperband["study"]
    state = hyperband["folder"] / "runs" / "keras-tuner" / "smoke"
    told = {
        json.loads(path.read_text())["trial_id"]: json.loads(path.read_text())
        for path in state.glob("trial_*/trial.json")
    }
    # KerasTuner's own files hold every trial, completed with the value the study recorded.
    assert len(told) == HYPERBAND_TRIALS
    for trial in finished(study):
        kept = told[trial.user_attrs[TrialAttr.KERAS_TUNER_TRIAL]]
        assert kept["status"] == "COMPLETED"
        if trial.state == TrialState.COMPLETE:
            assert kept["score"] == pytest.approx(trial.value)


def test_export_round_trip(hyperband: dict[str, Any], tmp_path: Path) -> None:
    study: optuna.Study = hyperband["study"]
    folder: Path = hyperband["folder"]
    target = tmp_path / "best.yaml"
    storage = f"sqlite:///{folder / 'optuna.db'}"
    assert export_main(["--study", "smoke", "--storage", storage, "-o", str(target)]) == 0
    exported = load_config(target)
    best = study.best_trial
    # The exported config is the best trial's whole recipe, with its provenance and engine.
    assert exported.without_provenance().to_yaml() == best.user_attrs[TrialAttr.CONFIG_YAML]
    assert exported.provenance is not None
    assert exported.provenance.trial_number == best.number
    assert exported.provenance.value == best.value
    assert exported.provenance.engine == "keras-tuner hyperband"
    assert exported.provenance.engine_trial == best.user_attrs[TrialAttr.KERAS_TUNER_TRIAL]


def test_random_and_bayesian_oracles(tmp_path: Path) -> None:
    folders = {oracle: tmp_path / oracle for oracle in ("random", "bayesian")}
    try:
        # Side by side: most of a tiny study is starting processes, which overlaps. The
        # workers play scripted epochs (tests/search/scripted_run.py): what is tested is how
        # each oracle drives the study; real training with KerasTuner is the Hyperband study's.
        coordinators = {}
        for oracle, folder in folders.items():
            folder.mkdir()
            coordinators[oracle] = scripted_search(folder, oracle, "--n-trials", "1")
        for coordinator in coordinators.values():
            assert coordinator.finish() == 0, coordinator.output
    finally:
        kill_all()
    for oracle, folder in folders.items():
        study = load(folder)
        trials = study.get_trials()
        # The trial target ends the study; every trial trains its whole config.
        assert len(trials) == 1 and "trial target reached" in coordinators[oracle].output
        assert study.user_attrs[StudyAttr.ENGINE] == f"keras-tuner {oracle}"
        tracked = snapshot(
            "smoke", f"sqlite:///{folder / 'optuna.db'}", f"sqlite:///{folder / 'mlflow.db'}", 1
        )
        # One parent run, and one closed child run per trial.
        assert tracked.parents == 1 and tracked.run_status == {0: ["FINISHED"]}
        for trial in trials:
            assert trial.state in (TrialState.COMPLETE, TrialState.PRUNED)
            assert TrialAttr.UNTIL_EPOCH not in trial.user_attrs
            config = TrainConfig.from_yaml(trial.user_attrs[TrialAttr.CONFIG_YAML])
            trained = len(trial.intermediate_values)
            complete = trial.state == TrialState.COMPLETE
            assert trained == config.total_epochs if complete else trained <= config.total_epochs
            # No fine-tune parameter unless blocks are unfrozen: KerasTuner's conditional
            # scopes.
            if trial.params["unfreeze_level"] == 0:
                assert not any(name.startswith("ft_") for name in trial.params)


def test_hyperband_iterates_until_the_budget_ends_the_study(tmp_path: Path) -> None:
    # One iteration of the smoke space's brackets costs 11 epochs (3 x 1, 1 x 2, 2 x 3); a
    # budget of 12 runs into a second, and the budget, not the oracle, ends the study. The
    # workers play scripted epochs, honouring each round's window; nothing here needs them
    # to overlap, so they are quick.
    coordinator = scripted_search(
        tmp_path, "hyperband", "--budget-epochs", "12", seconds_per_epoch=0.05
    )
    try:
        assert coordinator.finish() == 0, coordinator.output
    finally:
        kill_all()
    trials = finished(load(tmp_path))
    assert len(trials) > HYPERBAND_TRIALS
    spent = sum(trial.user_attrs[TrialAttr.EPOCHS_SPENT] for trial in trials)
    assert spent >= 12
    study_line = [
        line for line in coordinator.output.splitlines() if line.startswith("study smoke: ")
    ][-1]
    assert study_line.endswith("; epoch budget reached"), study_line
    # Each trial trained its round's window only.
    for trial in trials:
        steps = sorted(trial.intermediate_values)
        after = trial.user_attrs.get(TrialAttr.AFTER_EPOCH, 0)
        assert steps[0] == after + 1 and steps[-1] <= trial.user_attrs[TrialAttr.UNTIL_EPOCH]


def test_a_resume_with_another_engine_is_refused(hyperband: dict[str, Any]) -> None:
    folder: Path = hyperband["folder"]
    command = search_command(folder, "hyperband")
    engine_at = command.index("--engine")
    optuna_command = command[:engine_at] + command[engine_at + 4 :]
    coordinator = CoordinatorProcess(optuna_command, cwd=folder)
    try:
        # One error line saying how to continue it, and nothing written.
        assert coordinator.finish() == 2
    finally:
        kill_all()
    assert "was started with engine 'keras-tuner hyperband', not 'optuna'" in coordinator.output
    assert "--engine keras-tuner --oracle hyperband" in coordinator.output
    assert len(load(folder).get_trials()) == len(hyperband["study"].get_trials())
