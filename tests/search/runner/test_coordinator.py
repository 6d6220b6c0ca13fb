"""The coordinator driven by scripted workers: every way a trial can end, in seconds.

Each test runs a real coordinator (`search.runner.coordinator.run_study`) on a real SQLite study and
a real MLflow store, with workers spawned as in production; only what the worker does is
scripted (`tests/search/runner/scripted_studies.py`): healthy, collapsing, NaN, crashing,
failing. The study around its trials (resume, budgets, Ctrl-C, peers, refusals) is
test_coordinator_study.py. What real Keras workers add (real errors classified, real kills) is in
test_study_run, test_faults and test_multihost.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from search.study.registry import EnqueuedTrial
from search.trial.retry import RetryPolicy, StudyStoppedError
from search.vocabulary import Reason, TrialAttr
from spaces.finetune import Suggester
from tests.search.runner.scripted_studies import (
    AT_CHANCE,
    COLLAPSING,
    DIES_AT_1,
    FALLS_NEAR_CHANCE,
    NAN_AT_2,
    PRETRAINED_FINE_TUNE,
    PRETRAINED_HEAD_ONLY,
    UNFREEZE_SHOCK,
    TinyStudy,
    finished_line,
    study_runs,
)
from tests.search.scripted_worker import Script
from tests.search.tiny_study import tiny_space
from trainers.config.schema import TrainConfig


@pytest.fixture(autouse=True)
def _artifacts_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # MLflow puts a SQLite store's artifacts under ./mlruns


@pytest.fixture(autouse=True)
def _no_worker_left(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    import multiprocessing

    # Every worker the coordinator spawned was joined, whatever the test did.
    assert multiprocessing.active_children() == []


# -- how trials end --------------------------------------------------------------------------


def test_a_healthy_trial_completes_with_its_best_epoch_everywhere(tiny: TinyStudy) -> None:
    outcome = tiny.run({0: Script(accuracies=(0.5, 0.9, 0.8))}, PRETRAINED_FINE_TUNE, n_trials=1)
    trial = outcome.trial(0)
    # The objective is the best validation accuracy over all epochs, not the last.
    assert trial.state == TrialState.COMPLETE and trial.value == 0.9
    assert trial.user_attrs[TrialAttr.BEST_EPOCH] == 2
    assert trial.intermediate_values == {1: 0.5, 2: 0.9, 3: 0.8}
    # The config the worker trained with is what export reads.
    assert "unfreeze_blocks: 1" in trial.user_attrs[TrialAttr.CONFIG_YAML]
    assert trial.user_attrs[TrialAttr.TRAIN_IMAGES] == 32
    # Only what users read is stored: no copy of the epochs for the pruner.
    assert not {"epoch_metrics", "num_classes", "unfreezing_phases"} & set(trial.user_attrs)
    run = outcome.run(0)
    assert run.info.status == "FINISHED" and run.data.tags["optuna.state"] == "COMPLETE"
    assert run.data.metrics["objective"] == 0.9 and run.data.metrics["best_epoch"] == 2
    # What the trial cost, on the trial and its run.
    assert trial.user_attrs[TrialAttr.EPOCHS_SPENT] == 3
    assert 0 < trial.user_attrs[TrialAttr.SECONDS_SPENT] < 120
    assert run.data.metrics["epochs_spent"] == 3
    assert run.data.metrics["seconds_spent"] == trial.user_attrs[TrialAttr.SECONDS_SPENT]
    # Sampled parameters, the resolved config and the units really unfrozen are params.
    params = run.data.params
    assert params["unfreeze_level"] == "1" and params["phase2.unfreeze_blocks"] == "1"
    assert params["unfrozen_units"] == "1"
    client = MlflowClient(tiny.tracking_uri)
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")]
    assert steps == [1, 2, 3]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert artifacts == {"config.yaml", "history.csv", "learning_curves.png", "worker.log"}
    assert outcome.parent.info.status == "FINISHED"
    assert finished_line(outcome, 0).startswith("trial   0 COMPLETE 0.9000 (epoch 2)")
    assert outcome.summary.best_trial == 0 and outcome.summary.finished == 1


def three_epochs_a_phase(trial: Suggester, data_source: str) -> TrainConfig:
    """The tiny space with 3 epochs in every phase, so a trial pruned early has epochs left."""
    raw = tiny_space(trial, data_source).to_dict()
    return TrainConfig.from_dict({**raw, "phases": [{**p, "epochs": 3} for p in raw["phases"]]})


@pytest.mark.parametrize(
    ("script", "first", "reason", "epochs", "evidence", "kept"),
    [
        # the guide: by its 3rd epoch; it fell from 0.431, which it keeps
        (COLLAPSING, PRETRAINED_HEAD_ONLY, Reason.COLLAPSE, 3, "peak 0.431 at epoch 1 → ", 0.431),
        # the same fall from just above chance: nothing worth keeping
        (
            FALLS_NEAR_CHANCE,
            PRETRAINED_HEAD_ONLY,
            Reason.COLLAPSE,
            3,
            "peak 0.150 at epoch 1",
            None,
        ),
        (AT_CHANCE, PRETRAINED_HEAD_ONLY, Reason.CHANCE, 2, "best 0.250 by epoch 2", None),
        (
            UNFREEZE_SHOCK,
            PRETRAINED_FINE_TUNE,
            Reason.UNFREEZE_SHOCK,
            5,
            "best 0.860 → 0.600, 0.620",
            0.86,
        ),
        (
            NAN_AT_2,
            PRETRAINED_HEAD_ONLY,
            Reason.NAN,
            2,
            "loss nan, val_accuracy nan, val_loss nan at epoch 2",
            None,
        ),
    ],
    ids=["collapse", "collapse_near_chance", "chance", "unfreeze_shock", "nan"],
)
def test_collapse_rules_stop_the_worker_and_record_their_reason(
    tiny: TinyStudy,
    script: Script,
    first: EnqueuedTrial,
    reason: Reason,
    epochs: int,
    evidence: str,
    kept: float | None,
) -> None:
    if script in (COLLAPSING, FALLS_NEAR_CHANCE):  # six epochs to play, so the stop is visible
        first = EnqueuedTrial(first.label, {**first.params, "unfreeze_level": 1})
    spec = tiny.spec(first, space=three_epochs_a_phase)
    outcome = tiny.run({0: script}, n_trials=1, spec=spec)
    trial = outcome.trial(0)
    run = outcome.run(0)
    if kept is None:
        # Pruned: its value never counts (Optuna keeps its last report, not a result).
        assert trial.state == TrialState.PRUNED
        reason_key, evidence_key = TrialAttr.PRUNE_REASON, TrialAttr.PRUNE_EVIDENCE
        assert f"PRUNED   {reason} at epoch {epochs}: {evidence}" in finished_line(outcome, 0)
        assert TrialAttr.STOP_REASON not in trial.user_attrs
    else:
        # A fall after a good epoch: stopped all the same, but completed with the best epoch's
        # value, so it ranks where it belongs; the reason and its numbers are kept.
        assert trial.state == TrialState.COMPLETE
        assert trial.value == pytest.approx(kept)
        best_epoch = trial.user_attrs[TrialAttr.BEST_EPOCH]
        assert trial.intermediate_values[best_epoch] == pytest.approx(kept)
        reason_key, evidence_key = TrialAttr.STOP_REASON, TrialAttr.STOP_EVIDENCE
        assert run.data.metrics["objective"] == pytest.approx(kept)
        assert f"COMPLETE {kept:.4f} (epoch {best_epoch}), stopped: {reason} at epoch {epochs}" in (
            finished_line(outcome, 0)
        )
        assert TrialAttr.PRUNE_REASON not in trial.user_attrs
    assert trial.user_attrs[reason_key] == reason
    # The numbers behind the decision go with it: trial, MLflow run and the printed line.
    assert trial.user_attrs[evidence_key].startswith(evidence)
    # The worker was told to stop at that epoch, with the reason: no later epoch was played,
    # though the config and the script had more.
    epoch_lines = [line for line in outcome.lines if line.startswith("  trial   0 epoch")]
    assert len(epoch_lines) == epochs
    assert int(epoch_lines[-1].split("/")[1].split()[0]) > epochs
    worker_log = (tiny.folder / "runs" / "trial-0000" / "worker.log").read_text()
    assert f"stopped by the coordinator after epoch {epochs}: {reason}" in worker_log
    # A non-finite value never reaches the storage, not even as an intermediate value.
    assert all(math.isfinite(value) for value in trial.intermediate_values.values())
    assert max(trial.intermediate_values) == (epochs - 1 if reason == Reason.NAN else epochs)
    assert run.info.status == "FINISHED" and run.data.tags[reason_key] == reason
    assert run.data.tags[evidence_key] == trial.user_attrs[evidence_key]
    # A stopped trial's cost counts too: the epochs it trained before it was stopped.
    assert trial.user_attrs[TrialAttr.EPOCHS_SPENT] == epochs == run.data.metrics["epochs_spent"]


def test_the_median_pruner_decides_after_the_collapse_rules(tiny: TinyStudy) -> None:
    spec = tiny.spec(pruner_startup_trials=2, pruner_warmup_epochs=0)
    scripts = {
        0: Script(accuracies=(0.5, 0.7, 0.8)),
        1: Script(accuracies=(0.5, 0.75, 0.85)),
        2: Script(accuracies=(0.4, 0.45, 0.5)),
    }
    outcome = tiny.run(scripts, n_trials=3, spec=spec)
    # Healthy by the collapse rules, far below the two completed trials: the median's call.
    assert [outcome.trial(n).state for n in range(3)] == [TrialState.COMPLETE] * 2 + [
        TrialState.PRUNED
    ]
    assert outcome.trial(2).user_attrs[TrialAttr.PRUNE_REASON] == "median"
    assert outcome.run(2).data.tags["prune_reason"] == "median"
    assert outcome.trial(2).user_attrs[TrialAttr.PRUNE_EVIDENCE] == "0.400 at epoch 1"
    # Two completed trials with different values and parameters: the parent run gets the
    # optimization history, the parameter importances and the outcome chart.
    client = MlflowClient(tiny.tracking_uri)
    plots = {a.path for a in client.list_artifacts(outcome.parent.info.run_id)}
    assert {"optimization_history.png", "param_importances.png", "trial_outcomes.png"} <= plots


def test_a_crashed_worker_fails_its_trial_and_is_re_run_with_the_same_params(
    tiny: TinyStudy,
) -> None:
    outcome = tiny.run({0: DIES_AT_1}, n_trials=2)
    crashed, rerun = outcome.trial(0), outcome.trial(1)
    assert crashed.state == TrialState.FAIL
    assert crashed.user_attrs[TrialAttr.FAIL_REASON] == Reason.WORKER_DIED
    assert "killed by SIGKILL" in crashed.user_attrs[TrialAttr.FAIL_DETAIL]
    assert rerun.user_attrs[TrialAttr.RETRY_OF] == 0 and rerun.params == crashed.params
    assert rerun.state == TrialState.COMPLETE
    # The failure is replaced by its re-run in the budget: two used, three trials exist.
    assert outcome.summary.finished == 2 and len(outcome.study.trials) == 3
    run = outcome.run(0)
    assert run.info.status == "FAILED" and run.data.tags["fail_reason"] == Reason.WORKER_DIED
    assert run.data.tags["retried"] == "True"
    assert any("re-running trial 0 with the same params" in line for line in outcome.lines)
    assert finished_line(outcome, 0).startswith("trial   0 FAIL     worker_died: worker killed")


@pytest.mark.parametrize(
    ("reason", "retried"),
    [
        (Reason.HOST_OOM, True),  # the machine's fault, not the parameters'
        (Reason.INPUT, False),  # fails the same way every time
        (Reason.ERROR, False),
    ],
)
def test_worker_failures_are_retried_as_the_policy_says(
    tiny: TinyStudy, reason: Reason, retried: bool
) -> None:
    outcome = tiny.run({0: Script(fail=reason, fail_after=1)}, n_trials=1)
    failed = outcome.trial(0)
    assert failed.state == TrialState.FAIL
    assert failed.user_attrs[TrialAttr.FAIL_REASON] == reason
    assert failed.user_attrs[TrialAttr.FAIL_DETAIL] == f"scripted {reason}"
    reruns = [t for t in outcome.study.trials if t.user_attrs.get(TrialAttr.RETRY_OF) == 0]
    assert len(reruns) == int(retried)
    run = outcome.run(0)
    assert run.info.status == "FAILED" and run.data.tags["fail_reason"] == reason
    assert run.data.tags["retried"] == str(retried)
    # Files of the epoch it trained are kept with its run.
    artifacts = {a.path for a in MlflowClient(tiny.tracking_uri).list_artifacts(run.info.run_id)}
    assert {"config.yaml", "history.csv"} <= artifacts


def space_with_batch_sizes(trial: Suggester, data_source: str) -> TrainConfig:
    """The tiny space, and a batch size of 8 to 256: the larger half does not fit the GPU of
    `test_a_gpu_oom_is_pruned_as_infeasible_and_tpe_moves_away_from_it`."""
    config = tiny_space(trial, data_source)
    batch_size = trial.suggest_categorical("batch_size", [8, 16, 32, 64, 128, 256])
    return TrainConfig.from_dict({**config.to_dict(), "batch_size": batch_size})


def test_a_gpu_oom_is_pruned_as_infeasible_and_tpe_moves_away_from_it(
    tiny: TinyStudy, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A GPU on which batches of 64 and more run out of memory in their first epoch.
    monkeypatch.setenv("FINETUNE_SEARCH_FAULTS", "gpu_oom@batch>=64:0")
    startup = 4
    spec = tiny.spec(space=space_with_batch_sizes, sampler_startup_trials=startup)
    outcome = tiny.run({}, n_trials=16, spec=spec, retry=RetryPolicy(max_consecutive_failures=9))
    trials = sorted(outcome.study.trials, key=lambda t: t.number)
    assert len(trials) == 16  # nothing re-run: out of memory at these parameters is for good
    out_of_memory = [t for t in trials if t.params["batch_size"] >= 64]
    assert out_of_memory, "the random start-up trials hit the GPU limit at least once"
    for trial in out_of_memory:
        assert trial.state == TrialState.PRUNED
        assert trial.user_attrs[TrialAttr.PRUNE_REASON] == Reason.GPU_OOM
        assert trial.user_attrs[TrialAttr.PRUNE_EVIDENCE] == "scripted gpu_oom"
        assert trial.constraints == {"gpu_memory": 1.0}
        run = outcome.run(trial.number)
        assert run.data.tags["prune_reason"] == Reason.GPU_OOM
        assert finished_line(outcome, trial.number).startswith(
            f"trial {trial.number:>3} PRUNED   gpu_oom at epoch 0: scripted gpu_oom"
        )
    assert all(t.state == TrialState.COMPLETE for t in trials if t.params["batch_size"] < 64)
    # Random sampling would put half of TPE's 12 trials out of memory. Told FAIL (as before),
    # the OOMs are invisible to TPE, which proposed 8 of 12 out of memory with this seed; told
    # PRUNED with the constraint, 2 of 12.
    modelled = [t for t in trials[startup:] if t.params["batch_size"] >= 64]
    assert len(modelled) <= 3, [t.params["batch_size"] for t in trials]


def space_with_a_bug(trial: Suggester, data_source: str) -> TrainConfig:
    """The tiny space, but it writes a batch size the config schema rejects."""
    config = tiny_space(trial, data_source)
    return TrainConfig.from_dict({**config.to_dict(), "batch_size": 0})


def test_an_invalid_config_from_the_space_fails_before_any_worker(tiny: TinyStudy) -> None:
    outcome = tiny.run({}, n_trials=1, spec=tiny.spec(space=space_with_a_bug))
    trial = outcome.trial(0)
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs[TrialAttr.FAIL_REASON] == Reason.INPUT
    assert trial.user_attrs[TrialAttr.FAIL_DETAIL].startswith("invalid config from the space")
    # It still has its run, closed FAILED with the reason.
    run = outcome.run(0)
    assert run.info.status == "FAILED" and run.data.tags["fail_reason"] == Reason.INPUT
    assert "FAIL     input: invalid config from the space" in finished_line(outcome, 0)


def test_consecutive_failures_stop_the_study_with_a_clear_message(tiny: TinyStudy) -> None:
    scripts = {n: Script(fail=Reason.INPUT, fail_after=0) for n in range(4)}
    with pytest.raises(StudyStoppedError, match="stopping: 2 consecutive trials failed") as stop:
        tiny.run(scripts, n_trials=4, retry=RetryPolicy(max_consecutive_failures=2))
    assert "trial 1: input: scripted input" in str(stop.value)
    assert "run the same command to resume" in str(stop.value)
    study = optuna.load_study(study_name=tiny.name, storage=tiny.storage)
    # Two trials spent, two left in the budget: it stopped instead of burning them.
    assert [t.state for t in study.trials] == [TrialState.FAIL] * 2
    runs, parent = study_runs(tiny.tracking_uri, tiny.name)
    assert parent.info.status == "FAILED" and sorted(runs) == [0, 1]
