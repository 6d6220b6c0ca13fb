"""Closing a trial: the one path every end of a trial takes, whatever ended it.

A trial ends in one of five ways: its worker finished, failed, died or was stopped (the usual way);
its config could not be built (it never reached a worker); it had nothing to train (a Hyperband
continuation of a trial that trained its whole config, closed with that trial's verdict); a peer
coordinator found its coordinator dead and failed it as stale; or a peer did so while it still ran
here, and this copy is dropped. Each becomes an `Ending`, and `TrialCloser` does the rest in two
steps:

- `record`: the storage side. Reason attributes, the re-run of a retryable failure (queued
  *before* the trial is told FAIL, so no coordinator sees a gap in the budget), and the tell.
  Callers hold the study lock when peers may touch the same trial.
- `publish`: the MLflow run closed with the same state, reason tags, metrics and files, the
  failure streak, and the printed line.

`close` does both at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.reporting.console import Log, finished_line
from search.study.budget import Limits, budget, is_retried
from search.tracking.runs import StudyTracker
from search.trial.files import trial_files
from search.trial.retry import RetryPolicy, StudyStoppedError, enqueue_retry, retry_params
from search.vocabulary import GPU_MEMORY_CONSTRAINT, Reason, TrialAttr
from trainers.fit.history import TrainingHistory

#: Longest fail detail kept as a user attribute (the MLflow tag keeps up to 5000 characters).
MAX_DETAIL_ATTR = 2000
#: Longest outcome on a trial's printed line.
MAX_LINE_RESULT = 120


@dataclass(frozen=True)
class Verdict:
    """How a trial ended: its final state, the reason (pruned, failed, or completed early by
    the collapse rules after a good epoch) and the value."""

    state: TrialState
    reason: str = ""
    #: What a failure said, or the evidence behind a prune or an early stop.
    detail: str = ""
    value: float | None = None


@dataclass(frozen=True)
class Ending:
    """Everything needed to close one trial."""

    number: int
    params: Mapping[str, Any]
    user_attrs: Mapping[str, Any]
    verdict: Verdict
    #: Its MLflow run; None closes every run the trial left open, or creates one if it has
    #: none (a trial that never reached a worker, or whose coordinator died first).
    run_id: str | None = None
    best_epoch: int | None = None
    #: The best finite validation accuracy it reached, however it ended.
    best_value: float | None = None
    epochs_run: int = 0
    files: Sequence[Path] = ()
    seconds: float = 0.0

    def result(self, *, retried: bool) -> str:
        """The printed outcome: value and best epoch, prune reason, or fail reason and detail
        (a dead peer's trial also says whether it runs again)."""
        verdict = self.verdict
        if verdict.state == TrialState.COMPLETE:
            completed = f"{verdict.value:.4f} (epoch {self.best_epoch})"
            if not verdict.reason:
                return completed
            stopped = f"{completed}, stopped: {verdict.reason} at epoch {self.epochs_run}"
            return stopped[:MAX_LINE_RESULT]
        if verdict.state == TrialState.PRUNED:
            pruned = f"{verdict.reason} at epoch {self.epochs_run}"
            return f"{pruned}: {verdict.detail}"[:MAX_LINE_RESULT] if verdict.detail else pruned
        if verdict.reason == Reason.STALE_HEARTBEAT:
            again = "re-running it" if retried else "not retried"
            return f"{verdict.reason}: {verdict.detail}; {again}"
        return f"{verdict.reason}: {verdict.detail}"[:MAX_LINE_RESULT]


class TrialCloser:
    """Closes trials for one coordinator, and keeps its streak of failed trials."""

    def __init__(
        self,
        study: optuna.Study,
        tracker: StudyTracker,
        retry: RetryPolicy,
        *,
        limits: Limits,
        log: Log,
        started_at: float,
        study_requeues: bool = True,
        told: Callable[[Ending], bool | None] = lambda _ending: None,
    ) -> None:
        self.study = study
        #: Whether a retryable failure is queued again in the study (False: the engine, told
        #: through `told`, queues it itself and says so).
        self.study_requeues = study_requeues
        self.told = told
        self.limits = limits
        self.tracker = tracker
        self.retry = retry
        self.log = log
        self.started_at = started_at
        self.consecutive_failures = 0
        self.last_failure = ""

    def close(self, trial: optuna.Trial | None, ending: Ending) -> None:
        self.publish(ending, retried=self.record(trial, ending))

    def record(self, trial: optuna.Trial | None, ending: Ending) -> bool:
        """Tell `trial` (None: already finished in the storage, by a sweep or a peer) and queue
        the re-run of a retryable failure; whether it was queued."""
        verdict = ending.verdict
        retried = verdict.state == TrialState.FAIL and self._retry_if_allowed(ending)
        if trial is None:
            return self._tell_engine(ending, retried)
        trial.set_user_attr(TrialAttr.EPOCHS_SPENT, ending.epochs_run)
        trial.set_user_attr(TrialAttr.SECONDS_SPENT, round(ending.seconds, 1))
        if verdict.state == TrialState.COMPLETE:
            assert verdict.value is not None
            trial.set_user_attr(TrialAttr.BEST_EPOCH, ending.best_epoch)
            if verdict.reason:
                trial.set_user_attr(TrialAttr.STOP_REASON, verdict.reason)
                trial.set_user_attr(TrialAttr.STOP_EVIDENCE, verdict.detail[:MAX_DETAIL_ATTR])
            self.study.tell(trial, verdict.value)
        elif verdict.state == TrialState.PRUNED:
            trial.set_user_attr(TrialAttr.PRUNE_REASON, verdict.reason)
            if verdict.detail:
                trial.set_user_attr(TrialAttr.PRUNE_EVIDENCE, verdict.detail[:MAX_DETAIL_ATTR])
            if verdict.reason == Reason.GPU_OOM:
                # Optuna's samplers never look at FAIL trials, so a failed OOM would teach
                # TPE nothing and it would keep proposing batch sizes that do not fit. A PRUNED
                # trial that violates a constraint is what TPE ranks below every feasible one
                # (its "above" group), whatever epochs it reported before running out of
                # memory; the reason stays `gpu_oom`, and the trial is still not retried.
                trial.set_constraint(GPU_MEMORY_CONSTRAINT, 1.0)
            self.study.tell(trial, state=TrialState.PRUNED)
        else:
            trial.set_user_attr(TrialAttr.FAIL_REASON, verdict.reason)
            trial.set_user_attr(TrialAttr.FAIL_DETAIL, verdict.detail[:MAX_DETAIL_ATTR])
            self.study.tell(trial, state=TrialState.FAIL)
        return self._tell_engine(ending, retried)

    def _tell_engine(self, ending: Ending, retried: bool) -> bool:
        """After the study: the engine hears the result (it may queue the re-run itself)."""
        queued = self.told(ending)
        return retried if queued is None else queued

    def publish(self, ending: Ending, *, retried: bool) -> None:
        """Close the trial's MLflow run(s), count the outcome and print the line."""
        verdict = ending.verdict
        tags: dict[str, str] = {}
        metrics = {
            TrialAttr.EPOCHS_SPENT.value: float(ending.epochs_run),
            TrialAttr.SECONDS_SPENT.value: round(ending.seconds, 1),
        }
        if verdict.state == TrialState.COMPLETE:
            assert verdict.value is not None
            metrics["objective"] = verdict.value
            metrics["best_epoch"] = float(ending.best_epoch or 0)
            if verdict.reason:
                tags = {TrialAttr.STOP_REASON: verdict.reason}
                tags[TrialAttr.STOP_EVIDENCE] = verdict.detail
        elif verdict.state == TrialState.PRUNED:
            tags = {TrialAttr.PRUNE_REASON: verdict.reason}
            if verdict.detail:
                tags[TrialAttr.PRUNE_EVIDENCE] = verdict.detail
        elif verdict.reason == Reason.TAKEN_OVER:
            # The peer that took it over queued its re-run; this run only says why it ended.
            tags = {TrialAttr.FAIL_REASON: verdict.reason}
        else:
            tags = {
                TrialAttr.FAIL_REASON: verdict.reason,
                TrialAttr.FAIL_DETAIL: verdict.detail,
                TrialAttr.RETRIED: str(retried),
            }
        run_ids = (
            [ending.run_id]
            if ending.run_id is not None
            else self.tracker.runs_to_close(ending.number, ending.params)
        )
        for run_id in run_ids:
            self.tracker.finish_trial(
                run_id,
                state=verdict.state.name,
                tags=tags,
                metrics=metrics,
                files=ending.files,
                killed=verdict.reason == Reason.INTERRUPTED,
            )
        if verdict.reason == Reason.TAKEN_OVER:
            self.log(f"trial {ending.number:>3} dropped: another coordinator took it over")
            return
        self._count(ending)
        elapsed = time.monotonic() - self.started_at
        result = ending.result(retried=retried)
        spent = budget(self.study, self.limits)
        self.log(
            finished_line(
                ending.number, verdict.state, result, self.study, ending.seconds, elapsed, spent
            )
        )

    def check_failure_streak(self) -> None:
        """Stop the study (`StudyStoppedError`) once the retry policy's streak of consecutive
        failed trials is reached."""
        streak = self.consecutive_failures
        if streak >= self.retry.max_consecutive_failures:
            raise StudyStoppedError(
                f"stopping: {streak} consecutive trials failed (last: "
                f"{self.last_failure}). Fix the cause, then run the same command to resume."
            )

    def close_invalid(self, trial: optuna.Trial, error: Exception) -> None:
        """Close a trial whose space produced an invalid config: a bug in the space."""
        verdict = Verdict(TrialState.FAIL, Reason.INPUT, f"invalid config from the space: {error}")
        self.close(trial, Ending(trial.number, trial.params, trial.user_attrs, verdict))

    def close_inherited(self, trial: optuna.Trial, verdict: Verdict, best: float | None) -> None:
        """Close a trial with nothing to train (a Hyperband continuation of a trial that trained
        its whole config) with the verdict and best value of the trial it continues."""
        ending = Ending(
            trial.number, trial.params, trial.user_attrs, verdict, best_epoch=0, best_value=best
        )
        self.close(trial, ending)

    def with_files(
        self, ending: Ending, folder: Path, config_yaml: str, history: TrainingHistory, title: str
    ) -> Ending:
        """`ending` with the trial's artifacts written to `folder` (`trial_files`): a full disk
        costs the trial its files and a warning, never its result."""
        files, unwritten = trial_files(folder, config_yaml, history, title=title)
        if unwritten:
            self.log(
                f"warning: trial {ending.number}: artifacts not written to {folder}: "
                f"{', '.join(unwritten)}; its result and metrics are kept"
            )
        return replace(ending, files=files)

    def close_stale(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Close a trial failed because its coordinator stopped heart-beating (killed, machine
        lost); called under the study lock."""
        verdict = Verdict(TrialState.FAIL, Reason.STALE_HEARTBEAT, "its coordinator stopped")
        start, end = trial.datetime_start, trial.datetime_complete
        seconds = (end - start).total_seconds() if start is not None and end is not None else 0.0
        ending = Ending(
            trial.number, retry_params(trial), trial.user_attrs, verdict, seconds=seconds
        )
        self.close(None, ending)

    def needs_rerun(self, trial: FrozenTrial) -> bool:
        """Whether a trial failed as stale still lacks the re-run the policy wants for it (its
        sweeper died before queueing one)."""
        if not self.study_requeues:
            return False
        return self.retry.should_retry(Reason.STALE_HEARTBEAT, trial.user_attrs) and not (
            is_retried(self.study, trial.number)
        )

    def _retry_if_allowed(self, ending: Ending) -> bool:
        if not self.study_requeues:
            return False
        if not self.retry.should_retry(ending.verdict.reason, ending.user_attrs):
            return False
        if is_retried(self.study, ending.number):
            return True  # a coordinator that died between queueing and telling did it already
        enqueue_retry(
            self.study,
            number=ending.number,
            params=ending.params,
            user_attrs=ending.user_attrs,
            reason=ending.verdict.reason,
        )
        return True

    def _count(self, ending: Ending) -> None:
        # Only this coordinator's own trials make its streak: a dead peer's trial says nothing
        # about the configs this one runs.
        if ending.verdict.reason == Reason.STALE_HEARTBEAT:
            return
        # An OOM is told PRUNED but is a failure to run: a study whose every batch size runs
        # out of memory stops like one whose every trial fails.
        verdict = ending.verdict
        if verdict.state == TrialState.FAIL or verdict.reason == Reason.GPU_OOM:
            self.consecutive_failures += 1
            self.last_failure = f"trial {ending.number}: {verdict.reason}: {verdict.detail}"[:300]
        else:
            self.consecutive_failures = 0
