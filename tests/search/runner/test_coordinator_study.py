"""The coordinator driven by scripted workers: the study around its trials, in seconds.

Resume, two workers at once, epoch and hour budgets, Ctrl-C, a trial a peer took over, a dead
peer's trial, and the refusals of a resume that does not match the study; a real coordinator
(`search.runner.coordinator.run_study`) on a real SQLite study and MLflow store, workers
scripted as in test_coordinator.py (`tests/search/runner/scripted_studies.py`).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from search.engines.base import ask_quietly
from search.reporting.console import StudySummary
from search.run import main as run_main
from search.storage.lock import StudyLock
from search.storage.urls import make_storage
from search.study.setup import StudyMismatchError
from search.trial.retry import enqueue_retry
from search.vocabulary import Reason, StudyAttr, TrialAttr
from tests.search.runner.scripted_studies import (
    AT_CHANCE,
    HEALTHY_WORKER,
    SLOW,
    TinyStudy,
    finished_line,
)
from tests.search.scripted_worker import Script
from tests.search.tiny_study import enqueued, tiny_space


@pytest.fixture(autouse=True)
def _artifacts_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # MLflow puts a SQLite store's artifacts under ./mlruns


@pytest.fixture(autouse=True)
def _no_worker_left(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    import multiprocessing

    # Every worker the coordinator spawned was joined, whatever the test did.
    assert multiprocessing.active_children() == []


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
    last = finished_line(outcome, max(outcome.runs, key=lambda n: outcome.run(n).info.end_time))
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
    assert "/0.0005h trial time" in finished_line(outcome, 0)
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
    storage = make_storage(tiny.storage, heartbeat_interval=1, grace_period=2)
    study = optuna.create_study(study_name=tiny.name, storage=storage, direction="maximize")
    tiny_space(orphan := ask_quietly(study), "synthetic:target")
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
        finished_line(outcome, 0)
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
