"""The coordinator driven by scripted workers: every way a trial can end, in seconds.

Each test runs a real coordinator (`search.runner.coordinator.run_study`) on a real SQLite study and
a real MLflow store, with workers spawned as in production; only what the worker does is
scripted (`tests/search/scripted_worker.py`): healthy, collapsing, NaN, crashing, failing,
slow. What real Keras workers add (real errors classified, real kills) is in test_study_run,
test_faults and test_multihost.
"""

from __future__ import annotations

import math
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna
import pytest
from mlflow import MlflowClient
from mlflow.entities import Run
from optuna.trial import FrozenTrial, TrialState

from search.reporting.console import StudySummary
from search.run import main as run_main
from search.runner.coordinator import run_study
from search.storage.lock import StudyLock
from search.study.registry import EnqueuedTrial, StudySpec
from search.study.setup import StudyMismatchError
from search.trial.retry import RetryPolicy, StudyStoppedError, enqueue_retry
from search.vocabulary import Reason, StudyAttr, TrialAttr
from spaces.finetune import Suggester
from tests.search.scripted_worker import Script, ScriptedWorker
from tests.search.tiny_study import enqueued, settings, tiny_space, tiny_spec
from trainers.config.schema import TrainConfig

HEALTHY = Script(accuracies=(0.5, 0.7, 0.8))
HEALTHY_WORKER = ScriptedWorker(default=HEALTHY)
# The seed guide's LR 1e-2 curve (120 classes) with a rising training loss: a collapse.
COLLAPSING = Script(
    accuracies=(0.4310, 0.2444, 0.1594, 0.1439),
    losses=(2.9, 3.3, 3.7, 3.8),
    num_classes=120,
    validation_images=2400,
)
# At chance on 2,000 images: measurably inside the band above chance (below 28.75%).
AT_CHANCE = Script(accuracies=(0.25, 0.25, 0.25), validation_images=2000)
NAN_AT_2 = Script(accuracies=(0.5, math.nan, 0.8))
# A two-phase trial whose fine-tuning loses a third of what the head learned (not a wreck) and
# does not recover within the shock rule's patience (one epoch).
UNFREEZE_SHOCK = Script(accuracies=(0.8, 0.85, 0.86, 0.6, 0.62, 0.7), phases=(1, 1, 1, 2, 2, 2))
DIES_AT_1 = Script(die_after=1)
SLOW = Script(accuracies=(0.5, 0.6, 0.7), seconds_per_epoch=1.0)


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    # One MLflow store for the module (creating one takes seconds); each test is its own study,
    # hence its own experiment.
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(autouse=True)
def _artifacts_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # MLflow puts a SQLite store's artifacts under ./mlruns


@dataclass
class Outcome:
    """What a study left behind: its summary, printed lines, trials and MLflow runs."""

    summary: StudySummary
    lines: list[str]
    study: optuna.Study
    runs: dict[int, list[Run]]
    parent: Run

    def trial(self, number: int) -> FrozenTrial:
        return next(t for t in self.study.get_trials() if t.number == number)

    def run(self, number: int) -> Run:
        (only,) = self.runs[number]
        return only


def _study_runs(tracking_uri: str, name: str) -> tuple[dict[int, list[Run]], Run]:
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    assert experiment is not None
    runs: dict[int, list[Run]] = {}
    parents = []
    for run in client.search_runs([experiment.experiment_id], max_results=1000):
        if run.data.tags["finetune_search.role"] == "study":
            parents.append(run)
        else:
            runs.setdefault(int(run.data.tags["optuna.trial_number"]), []).append(run)
    (parent,) = parents
    return runs, parent


class TinyStudy:
    """Runs studies of the tiny space with scripted workers in one test's folder."""

    def __init__(self, folder: Path, tracking_uri: str, name: str) -> None:
        self.folder = folder
        self.tracking_uri = tracking_uri
        self.name = name
        self.storage = f"sqlite:///{folder / 'optuna.db'}"

    def spec(self, *first: EnqueuedTrial, **changes: Any) -> StudySpec:
        return replace(tiny_spec(self.name, *first), **changes)

    def run(
        self,
        scripts: dict[int, Script],
        *first: EnqueuedTrial,
        n_trials: int,
        spec: StudySpec | None = None,
        log: Callable[[str], None] | None = None,
        **overrides: Any,
    ) -> Outcome:
        lines: list[str] = []

        def record(line: str) -> None:
            lines.append(line)
            if log is not None:
                log(line)

        summary = run_study(
            spec or self.spec(*first),
            settings(self.folder, n_trials, tracking_uri=self.tracking_uri, **overrides),
            log=record,
            worker=ScriptedWorker(scripts, default=HEALTHY),
        )
        return self.outcome(summary, lines)

    def outcome(self, summary: StudySummary, lines: list[str]) -> Outcome:
        study = optuna.load_study(study_name=self.name, storage=self.storage)
        runs, parent = _study_runs(self.tracking_uri, self.name)
        return Outcome(summary, lines, study, runs, parent)


@pytest.fixture
def tiny(tmp_path: Path, tracking_uri: str, request: pytest.FixtureRequest) -> TinyStudy:
    return TinyStudy(tmp_path, tracking_uri, request.node.name.removeprefix("test_"))


PRETRAINED_HEAD_ONLY = enqueued("head_only", "pretrained", 0)
PRETRAINED_FINE_TUNE = enqueued("fine_tune", "pretrained", 1)


def _finished_line(outcome: Outcome, number: int) -> str:
    return next(
        line
        for line in outcome.lines
        if line.startswith(f"trial {number:>3} ") and " best " in line
    )


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
    assert _finished_line(outcome, 0).startswith("trial   0 COMPLETE 0.9000 (epoch 2)")
    assert outcome.summary.best_trial == 0 and outcome.summary.finished == 1


def three_epochs_a_phase(trial: Suggester, data_source: str) -> TrainConfig:
    """The tiny space with 3 epochs in every phase, so a trial pruned early has epochs left."""
    raw = tiny_space(trial, data_source).to_dict()
    return TrainConfig.from_dict({**raw, "phases": [{**p, "epochs": 3} for p in raw["phases"]]})


@pytest.mark.parametrize(
    ("script", "first", "reason", "epochs", "evidence"),
    [
        # the guide: by its 3rd epoch
        (COLLAPSING, PRETRAINED_HEAD_ONLY, Reason.COLLAPSE, 3, "peak 0.431 at epoch 1 → "),
        (AT_CHANCE, PRETRAINED_HEAD_ONLY, Reason.CHANCE, 2, "best 0.250 by epoch 2"),
        (
            UNFREEZE_SHOCK,
            PRETRAINED_FINE_TUNE,
            Reason.UNFREEZE_SHOCK,
            5,
            "best 0.860 → 0.600, 0.620",
        ),
        (
            NAN_AT_2,
            PRETRAINED_HEAD_ONLY,
            Reason.NAN,
            2,
            "loss nan, val_accuracy nan, val_loss nan at epoch 2",
        ),
    ],
    ids=["collapse", "chance", "unfreeze_shock", "nan"],
)
def test_collapse_rules_stop_the_worker_and_record_their_reason(
    tiny: TinyStudy,
    script: Script,
    first: EnqueuedTrial,
    reason: Reason,
    epochs: int,
    evidence: str,
) -> None:
    if script is COLLAPSING:  # six epochs to play, so the stop is visible
        first = EnqueuedTrial(first.label, {**first.params, "unfreeze_level": 1})
    spec = tiny.spec(first, space=three_epochs_a_phase)
    outcome = tiny.run({0: script}, n_trials=1, spec=spec)
    trial = outcome.trial(0)
    assert trial.state == TrialState.PRUNED
    assert trial.user_attrs[TrialAttr.PRUNE_REASON] == reason
    # The numbers behind the decision go with it: trial, MLflow run and the printed line.
    assert trial.user_attrs[TrialAttr.PRUNE_EVIDENCE].startswith(evidence)
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
    run = outcome.run(0)
    assert run.info.status == "FINISHED" and run.data.tags["prune_reason"] == reason
    assert run.data.tags["prune_evidence"] == trial.user_attrs[TrialAttr.PRUNE_EVIDENCE]
    # A pruned trial's cost counts too: the epochs it trained before it was stopped.
    assert trial.user_attrs[TrialAttr.EPOCHS_SPENT] == epochs == run.data.metrics["epochs_spent"]
    assert f"PRUNED   {reason} at epoch {epochs}: {evidence}" in _finished_line(outcome, 0)


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
    assert _finished_line(outcome, 0).startswith("trial   0 FAIL     worker_died: worker killed")


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
        assert _finished_line(outcome, trial.number).startswith(
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
    assert "FAIL     input: invalid config from the space" in _finished_line(outcome, 0)


def test_consecutive_failures_stop_the_study_with_a_clear_message(tiny: TinyStudy) -> None:
    scripts = {n: Script(fail=Reason.INPUT, fail_after=0) for n in range(4)}
    with pytest.raises(StudyStoppedError, match="stopping: 2 consecutive trials failed") as stop:
        tiny.run(scripts, n_trials=4, retry=RetryPolicy(max_consecutive_failures=2))
    assert "trial 1: input: scripted input" in str(stop.value)
    assert "run the same command to resume" in str(stop.value)
    study = optuna.load_study(study_name=tiny.name, storage=tiny.storage)
    # Two trials spent, two left in the budget: it stopped instead of burning them.
    assert [t.state for t in study.trials] == [TrialState.FAIL] * 2
    runs, parent = _study_runs(tiny.tracking_uri, tiny.name)
    assert parent.info.status == "FAILED" and sorted(runs) == [0, 1]


# -- the study around its trials ---------------------------------------------------------------


def test_resume_continues_a_half_done_study(tiny: TinyStudy) -> None:
    scripts = {0: AT_CHANCE}
    first = tiny.run(scripts, n_trials=2)
    assert first.summary.finished == 2
    before = {t.number: (t.state, t.value, t.datetime_complete) for t in first.study.trials}
    # The same command with a larger target continues: finished trials are kept as they were
    # and only the missing one runs.
    second = tiny.run(scripts, n_trials=3)
    assert second.summary.finished == 3 and len(second.study.trials) == 3
    assert {
        t.number: (t.state, t.value, t.datetime_complete)
        for t in second.study.trials
        if t.number < 2
    } == before
    # Running it again with the target reached starts nothing.
    third = tiny.run(scripts, n_trials=3)
    assert third.summary.finished == 3 and len(third.study.trials) == 3
    assert not any(" started " in line for line in third.lines)
    # One parent run across all three invocations, one child run per trial.
    assert {n: len(runs) for n, runs in third.runs.items()} == {0: 1, 1: 1, 2: 1}


def test_two_workers_run_trials_at_once_and_never_exceed_the_target(tiny: TinyStudy) -> None:
    outcome = tiny.run({}, n_trials=4, workers=2, worker_environments=({}, {}))
    started = [i for i, line in enumerate(outcome.lines) if " started (slot " in line]
    first_finished = next(
        i for i, line in enumerate(outcome.lines) if line.startswith("trial ") and " best " in line
    )
    # Two trials ran at once, one per slot, and exactly the target ran.
    assert len([i for i in started if i < first_finished]) == 2
    slots = {line.split("(slot ")[1][0] for line in outcome.lines if " started (slot " in line}
    assert slots == {"0", "1"}
    assert len(outcome.study.trials) == 4 and outcome.summary.finished == 4
    assert all(t.state == TrialState.COMPLETE for t in outcome.study.trials)


def test_an_epoch_budget_keeps_running_trials_epochs_and_gets_back_what_a_prune_saved(
    tiny: TinyStudy,
) -> None:
    # Three epochs each (head + fine-tune). Trial 0 sits at chance and is pruned after 2.
    fine_tunes = [
        enqueued(f"fine_tune_{n}", "pretrained", 1, head_lr=1e-3 * (n + 2)) for n in range(3)
    ]
    outcome = tiny.run(
        {0: AT_CHANCE},
        *fine_tunes,
        n_trials=None,
        budget_epochs=6,
        workers=2,
        worker_environments=({}, {}),
    )
    trials = sorted(outcome.study.trials, key=lambda t: t.number)
    # Trials 0 and 1 start at once and hold all 6 epochs between them; the prune gives one
    # back (2 + 3 < 6), so trial 2 starts; then 8 epochs are spent and nothing more starts.
    assert [t.user_attrs[TrialAttr.EPOCHS_PLANNED] for t in trials] == [3, 3, 3]
    assert [t.user_attrs[TrialAttr.EPOCHS_SPENT] for t in trials] == [2, 3, 3]
    assert trials[0].user_attrs[TrialAttr.PRUNE_REASON] == Reason.CHANCE
    assert outcome.summary.finished == 3 and outcome.summary.target is None
    summary = next(line for line in outcome.lines if line.startswith(f"study {tiny.name}: 3 "))
    assert "spent 8/6 epochs" in summary and summary.endswith("; epoch budget reached")
    # Every trial's line shows what the study has spent so far (running trials' epochs too).
    last = _finished_line(outcome, max(outcome.runs, key=lambda n: outcome.run(n).info.end_time))
    assert "; study 8/6 epochs, " in last
    # The spent epochs stay with the study: the same command again starts nothing.
    again = tiny.run({}, n_trials=None, budget_epochs=6)
    assert len(again.study.trials) == 3 and not any(" started " in line for line in again.lines)
    assert again.lines[0].startswith(f"study {tiny.name}: 3 trials finished, continuing (8/6 ")


def test_an_hour_budget_counts_the_time_of_running_trials(tiny: TinyStudy) -> None:
    slow = Script(accuracies=(0.5, 0.6, 0.7), seconds_per_epoch=1.5)  # 3 s or more a trial
    outcome = tiny.run(
        dict.fromkeys(range(4), slow),
        n_trials=None,
        budget_hours=0.0005,  # 1.8 s of trial time
        workers=2,
        worker_environments=({}, {}),
    )
    # Both slots start at once, with nearly nothing spent; after them, 6 s or more are.
    assert len(outcome.study.trials) == 2
    seconds = [t.user_attrs[TrialAttr.SECONDS_SPENT] for t in outcome.study.trials]
    assert all(second >= 3 for second in seconds), seconds
    assert "/0.0005h trial time" in _finished_line(outcome, 0)
    summary = next(line for line in outcome.lines if line.startswith(f"study {tiny.name}: 2 "))
    assert summary.endswith("trial time; trial-hour budget reached")


def test_ctrl_c_marks_running_trials_interrupted_and_queues_them(tiny: TinyStudy) -> None:
    def interrupt_at_first_epoch(line: str) -> None:
        if line.startswith("  trial   0 epoch   1/"):
            os.kill(os.getpid(), signal.SIGINT)

    previous = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        tiny.run({0: SLOW}, n_trials=2, log=interrupt_at_first_epoch)
    # The coordinator put back the handler it found.
    assert signal.getsignal(signal.SIGINT) is previous
    outcome = tiny.outcome(StudySummary(tiny.name, {}, 0, 2, None, None), [])
    stopped = outcome.trial(0)
    assert stopped.state == TrialState.FAIL
    assert stopped.user_attrs[TrialAttr.FAIL_REASON] == Reason.INTERRUPTED
    # Queued again with the same parameters, without spending one of its retries.
    (waiting,) = outcome.study.get_trials(states=(TrialState.WAITING,))
    assert waiting.user_attrs[TrialAttr.RETRY_OF] == 0
    assert waiting.user_attrs[TrialAttr.RETRY_COUNT] == 0
    assert outcome.run(0).info.status == "KILLED" and outcome.parent.info.status == "KILLED"
    # The resume runs the queued trial and completes the study.
    resumed = tiny.run({}, n_trials=2)
    assert resumed.summary.finished == 2
    assert resumed.trial(1).user_attrs[TrialAttr.RETRY_OF] == 0
    assert resumed.trial(1).params == stopped.params


def test_a_trial_a_peer_took_over_is_dropped_not_told_twice(tiny: TinyStudy) -> None:
    storage = optuna.storages.RDBStorage(tiny.storage)

    def peer_fails_it_as_stale(line: str) -> None:
        # What a peer's sweep does, under the study lock, when this coordinator looked dead
        # for too long: fail the trial and queue its re-run.
        if line.startswith("  trial   0 epoch   1/"):
            with StudyLock(tiny.storage, tiny.name).held():
                study = optuna.load_study(study_name=tiny.name, storage=storage)
                trial = study.get_trials()[0]
                storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
                enqueue_retry(
                    study,
                    number=0,
                    params=trial.params,
                    user_attrs=trial.user_attrs,
                    reason=Reason.STALE_HEARTBEAT,
                )

    outcome = tiny.run({0: SLOW}, n_trials=1, log=peer_fails_it_as_stale)
    dropped = outcome.trial(0)
    # Failed by the peer, and left as the peer left it: no reason of ours, no value.
    assert dropped.state == TrialState.FAIL and TrialAttr.FAIL_REASON not in dropped.user_attrs
    trial_0 = [line for line in outcome.lines if line.startswith("trial   0 ")]
    assert trial_0[1:] == ["trial   0 dropped: another coordinator took it over"]
    # The worker was stopped at its next epoch, its run closed as taken over, and only the
    # peer's re-run (same parameters) counts.
    assert not any(line.startswith("  trial   0 epoch   3/") for line in outcome.lines)
    run = outcome.run(0)
    assert run.info.status == "FAILED" and run.data.tags["fail_reason"] == Reason.TAKEN_OVER
    reruns = [t for t in outcome.study.trials if t.user_attrs.get(TrialAttr.RETRY_OF) == 0]
    assert len(reruns) == 1 and reruns[0].params == dropped.params
    assert reruns[0].state == TrialState.COMPLETE and outcome.summary.finished == 1


def test_a_dead_peers_trial_is_failed_as_stale_and_re_run(tiny: TinyStudy) -> None:
    # A trial another coordinator claimed (one heartbeat, its identity), then it died.
    storage = optuna.storages.RDBStorage(tiny.storage, heartbeat_interval=1, grace_period=2)
    study = optuna.create_study(study_name=tiny.name, storage=storage, direction="maximize")
    tiny_space(orphan := study.ask(), "synthetic:target")
    storage.record_heartbeat(orphan._trial_id)
    orphan.set_user_attr(TrialAttr.COORDINATOR, "dead-host:1")
    outcome = tiny.run({}, n_trials=2, heartbeat_interval=1, grace_period=2)
    stale = outcome.trial(orphan.number)
    assert stale.state == TrialState.FAIL
    reruns = [t for t in outcome.study.trials if t.user_attrs.get(TrialAttr.RETRY_OF) == 0]
    assert len(reruns) == 1 and reruns[0].params == stale.params
    assert reruns[0].state == TrialState.COMPLETE
    # Its run was created by the sweeper (the dead coordinator never made one) and closed.
    run = outcome.run(0)
    assert run.info.status == "FAILED"
    assert run.data.tags["fail_reason"] == Reason.STALE_HEARTBEAT
    assert "FAIL     stale_heartbeat: its coordinator stopped; re-running it" in (
        _finished_line(outcome, 0)
    )
    assert outcome.summary.finished == 2


def test_a_study_with_the_old_ladder_parameter_is_refused_on_resume(tiny: TinyStudy) -> None:
    study = optuna.create_study(study_name=tiny.name, storage=tiny.storage)
    study.enqueue_trial({"unfreeze_blocks": 2})
    with pytest.raises(StudyMismatchError, match="renamed 'unfreeze_level'") as refused:
        tiny.run({}, n_trials=1)
    assert "python -m search.export --study" in str(refused.value)
    # Nothing was written: no MLflow experiment, the queued trial still waits.
    assert MlflowClient(tiny.tracking_uri).get_experiment_by_name(tiny.name) is None
    assert [t.state for t in study.get_trials()] == [TrialState.WAITING]


def test_a_resume_with_another_pruner_is_refused(tiny: TinyStudy) -> None:
    outcome = tiny.run({}, n_trials=1, spec=tiny.spec(pruner="asha"))
    assert outcome.study.user_attrs[StudyAttr.PRUNER] == "asha"
    with pytest.raises(StudyMismatchError, match="was started with pruner 'asha', not 'median'"):
        tiny.run({}, n_trials=2)
    assert len(optuna.load_study(study_name=tiny.name, storage=tiny.storage).trials) == 1


def test_the_command_line_chooses_the_pruner(
    tmp_path: Path, tracking_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    common = ["--study", "smoke", "--storage", storage, "--tracking-uri", tracking_uri]
    assert (
        run_main([*common, "--n-trials", "1", "--pruner", "hyperband"], worker=HEALTHY_WORKER) == 0
    )
    study = optuna.load_study(study_name="smoke", storage=storage)
    assert study.user_attrs[StudyAttr.PRUNER] == "hyperband"
    # Without --pruner, the study's own (median): not the one it was started with.
    assert run_main([*common, "--n-trials", "2"], worker=HEALTHY_WORKER) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error == [
        "error: study 'smoke' was started with pruner 'hyperband', not 'median'; pass --pruner "
        "hyperband to continue it, or use another --storage for a new study"
    ]


def test_a_resume_with_other_data_is_refused(tiny: TinyStudy) -> None:
    tiny.run({}, n_trials=1)
    with pytest.raises(StudyMismatchError, match="was started with data 'synthetic:target'"):
        tiny.run({}, n_trials=2, data_source="synthetic:source")


@pytest.fixture(autouse=True)
def _no_worker_left(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    import multiprocessing

    # Every worker the coordinator spawned was joined, whatever the test did.
    assert multiprocessing.active_children() == []
