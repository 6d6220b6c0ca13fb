"""Confirming the winner: the best trials re-trained with other seeds by the real coordinator
(scripted workers), picked by their mean, tracked as children of the study's parent run, and
resumed after an interruption without training anything twice."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from dataclasses import replace

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import FrozenTrial, TrialState

from search import export
from search.runner.confirmation import SUFFIX, ConfirmationError, Confirmed, confirm
from search.study.registry import STUDIES, EnqueuedTrial, StudySpec
from search.tracking.runs import CONFIRMATION_ROLE, PARENT_TAG, ROLE_TAG
from search.vocabulary import TrialAttr
from tests.search.runner.scripted_studies import TinyStudy
from tests.search.scripted_worker import Script, ScriptedWorker
from trainers.config.schema import load_config

#: The study: trial 1 is best by its single value (0.90), trial 2 close behind (0.88).
STUDY_SCRIPTS = {
    0: Script(accuracies=(0.5, 0.6, 0.7)),
    1: Script(accuracies=(0.6, 0.8, 0.9)),
    2: Script(accuracies=(0.6, 0.8, 0.88)),
}
#: The re-runs, in the order they are queued: trial 1 with seeds 1 and 2, then trial 2's.
#: Trial 1's 0.90 was luck (mean 0.81); trial 2 holds up (mean 0.85).
RERUN_SCRIPTS = {
    0: Script(accuracies=(0.6, 0.8)),
    1: Script(accuracies=(0.6, 0.82)),
    2: Script(accuracies=(0.6, 0.86)),
    3: Script(accuracies=(0.6, 0.84)),
}


def _study(tiny: TinyStudy) -> StudySpec:
    first = [EnqueuedTrial(f"t{n}", {"head_lr": 1e-3 * (n + 1)}) for n in range(3)]
    spec = tiny.spec(*first)
    outcome = tiny.run(STUDY_SCRIPTS, n_trials=3, spec=spec)
    assert [t.value for t in outcome.study.get_trials()] == [0.7, 0.9, 0.88]
    return spec


def _confirm(
    tiny: TinyStudy,
    spec: StudySpec,
    log: Callable[[str], None] = lambda _line: None,
    *,
    worker: ScriptedWorker | None = None,
    grace_period: int = 60,
) -> list[Confirmed]:
    """The 2 best trials of `tiny`'s study, re-run with 2 other seeds each."""
    return confirm(
        spec,
        candidates=2,
        seeds=2,
        storage=tiny.storage,
        tracking_uri=tiny.tracking_uri,
        output_dir=tiny.folder / "confirm",
        log=log,
        worker=worker or ScriptedWorker(RERUN_SCRIPTS),
        heartbeat_interval=1,
        grace_period=grace_period,
    )


def test_the_best_mean_wins_and_its_reruns_are_children_of_the_study(tiny: TinyStudy) -> None:
    spec = _study(tiny)
    confirmed = _confirm(tiny, spec)
    # Trial 2 wins by its mean, though trial 1 had the best single value.
    assert [c.number for c in confirmed] == [2, 1]
    winner, runner_up = confirmed
    assert winner.seeds == (1, 2) and winner.values == (0.86, 0.84)
    assert winner.mean == pytest.approx(0.85) and winner.stderr == pytest.approx(0.01)
    assert runner_up.mean == pytest.approx(0.81) and runner_up.value == pytest.approx(0.9)
    recorded = winner.confirmation(candidates=2)
    assert (recorded.mean, recorded.stderr, recorded.candidates) == (0.85, 0.01, 2)
    # Each re-run ran the candidate's exact config with its own seed, unpruned.
    reruns = optuna.load_study(study_name=f"{spec.name}{SUFFIX}", storage=tiny.storage)
    labels = [t.user_attrs[TrialAttr.ENQUEUED] for t in reruns.get_trials()]
    assert labels == ["trial 1 seed 1", "trial 1 seed 2", "trial 2 seed 1", "trial 2 seed 2"]
    assert all(t.state == TrialState.COMPLETE for t in reruns.get_trials())
    # MLflow: children of the study's parent run, with their own role; the study's own runs,
    # its parent's status and its best-trial tag are left as they were.
    client = MlflowClient(tiny.tracking_uri)
    experiment = client.get_experiment_by_name(spec.name)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    parent = next(run for run in runs if run.data.tags[ROLE_TAG] == "study")
    children = [run for run in runs if run.data.tags[ROLE_TAG] == CONFIRMATION_ROLE]
    assert sorted(run.info.run_id for run in children) == sorted(
        (*winner.mlflow_runs, *runner_up.mlflow_runs)
    )
    assert all(run.data.tags[PARENT_TAG] == parent.info.run_id for run in children)
    assert all(run.info.status == "FINISHED" for run in children)
    assert parent.info.status == "FINISHED" and parent.data.tags["best_trial"] == "1"
    assert len([run for run in runs if run.data.tags[ROLE_TAG] == "trial"]) == 3


def test_an_interrupted_confirmation_resumes_without_training_twice(tiny: TinyStudy) -> None:
    spec = _study(tiny)
    lines: list[str] = []

    def interrupt_after_two(line: str) -> None:
        lines.append(line)
        if sum(" COMPLETE " in seen for seen in lines) == 2:
            raise KeyboardInterrupt  # Ctrl-C once two re-runs have finished

    with pytest.raises(KeyboardInterrupt):
        _confirm(tiny, spec, interrupt_after_two)
    reruns = optuna.load_study(study_name=f"{spec.name}{SUFFIX}", storage=tiny.storage)
    done_before = {
        t.user_attrs[TrialAttr.ENQUEUED] for t in reruns.get_trials() if t.state.is_finished()
    }
    assert len(done_before) == 2
    # The same call again finishes the other two, and trains nothing twice.
    confirmed = _confirm(tiny, spec)
    assert [c.number for c in confirmed] == [2, 1]
    assert confirmed[0].values == (0.86, 0.84)
    finished = [
        t.user_attrs[TrialAttr.ENQUEUED]
        for t in reruns.get_trials()
        if t.state == TrialState.COMPLETE
    ]
    assert sorted(finished) == [
        "trial 1 seed 1", "trial 1 seed 2", "trial 2 seed 1", "trial 2 seed 2",
    ]  # fmt: skip


def test_a_study_without_a_completed_trial_has_nothing_to_confirm(tiny: TinyStudy) -> None:
    spec = tiny.spec()
    tiny.run({0: Script(accuracies=(0.25, 0.25, 0.25), validation_images=2000)}, n_trials=1)
    with pytest.raises(ConfirmationError, match="has no completed trial to confirm"):
        _confirm(tiny, spec)


def test_export_confirm_writes_the_winner_with_its_mean_and_runs(
    tiny: TinyStudy, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _study(tiny)
    # `--study` names a registered study: register the test's for this test only.
    monkeypatch.setitem(STUDIES, spec.name, spec)
    monkeypatch.chdir(tiny.folder)
    args = ["--study", spec.name, "--storage", tiny.storage, "--tracking-uri", tiny.tracking_uri]
    args += ["--confirm", "2", "--confirm-seeds", "2", "-o", "best.yaml"]
    assert export.main(args, worker=ScriptedWorker(RERUN_SCRIPTS)) == 0
    out = capsys.readouterr().out.splitlines()
    assert "confirmed 2 trials with 2 other seeds each:" in out
    assert "  trial 2: 0.8800 in the study; seeds 1, 2: 0.8600, 0.8400; mean 0.8500 ± 0.0100" in out
    assert out[-1].endswith(
        "trial 2 of " + spec.name + ", val_accuracy 0.8800 at epoch 3, mean 0.8500 ± 0.0100"
    )
    exported = load_config(tiny.folder / "best.yaml")
    assert exported.provenance is not None and exported.provenance.trial_number == 2
    confirmation = exported.provenance.confirmation
    assert confirmation is not None
    assert (confirmation.mean, confirmation.stderr, confirmation.values) == (
        0.85,
        0.01,
        (0.86, 0.84),
    )
    assert len(confirmation.mlflow_runs) == 2 and all(confirmation.mlflow_runs)
    # The re-runs' files went under runs/search/<study>/confirm.
    assert (tiny.folder / "runs" / "search" / spec.name / "confirm").is_dir()
    # Bad numbers: one error line, nothing written.
    (tiny.folder / "best.yaml").unlink()
    assert export.main([*args[:-4], "--confirm", "0"]) == 2
    assert capsys.readouterr().err.startswith("error: --confirm, --confirm-seeds and --workers")
    assert not (tiny.folder / "best.yaml").exists()


def _confirm_in_a_process(tiny: TinyStudy, spec: StudySpec) -> None:
    """The confirmation of the tests above, its last two re-runs slow (a second an epoch)."""
    slow = {n: replace(RERUN_SCRIPTS[n], seconds_per_epoch=1.0) for n in (2, 3)}
    _confirm(tiny, spec, worker=ScriptedWorker({**RERUN_SCRIPTS, **slow}))


def test_a_killed_confirmation_resumes_and_reruns_what_it_left_running(tiny: TinyStudy) -> None:
    spec = _study(tiny)
    process = multiprocessing.get_context("spawn").Process(
        target=_confirm_in_a_process, args=(tiny, spec)
    )
    process.start()
    name = f"{spec.name}{SUFFIX}"
    deadline = time.monotonic() + 120
    running: list[FrozenTrial] = []
    while time.monotonic() < deadline and not running:
        time.sleep(0.2)
        if name not in optuna.get_all_study_names(tiny.storage):
            continue
        trials = optuna.load_study(study_name=name, storage=tiny.storage).get_trials()
        finished = [t for t in trials if t.state == TrialState.COMPLETE]
        running = [t for t in trials if t.state == TrialState.RUNNING] if len(finished) >= 2 else []
    assert running, "the confirmation never reached its slow re-runs"
    killed = running[0].number  # the third re-run, or the fourth on a slow machine
    os.kill(process.pid, signal.SIGKILL)  # the coordinator dies mid-re-run, nothing closed
    process.join(30)
    # The same confirmation again: the dead coordinator's re-run is failed as stale (after the
    # grace period) and run again; the finished ones are kept.
    # The re-run of the stale one is the study's trial 4: it plays what that one played.
    rerun_worker = ScriptedWorker({**RERUN_SCRIPTS, 4: RERUN_SCRIPTS[killed]})
    confirmed = _confirm(tiny, spec, worker=rerun_worker, grace_period=2)
    assert [c.number for c in confirmed] == [2, 1] and confirmed[0].values == (0.86, 0.84)
    trials = optuna.load_study(study_name=name, storage=tiny.storage).get_trials()
    complete = sorted(
        t.user_attrs[TrialAttr.ENQUEUED] for t in trials if t.state == TrialState.COMPLETE
    )
    assert complete == ["trial 1 seed 1", "trial 1 seed 2", "trial 2 seed 1", "trial 2 seed 2"]
    # The one it left running was failed as stale and re-run once, as trial 4.
    assert [t.number for t in trials if t.state == TrialState.FAIL] == [killed]
    (rerun,) = [t for t in trials if t.user_attrs.get(TrialAttr.RETRY_OF) == killed]
    assert (rerun.number, rerun.user_attrs[TrialAttr.RETRY_REASON]) == (4, "stale_heartbeat")
