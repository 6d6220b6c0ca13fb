"""The budget of a study shared by several coordinators: a trial target, epochs and trial hours.

A study's trial target counts trials that *used* the budget: completed, pruned, and failed for
good. A failed trial that was retried with the same parameters does not count; its retry does.

Compute is counted over every trial, retried failures included (their epochs were trained):

- **epochs**: what finished trials trained (`epochs_spent`), what running trials have reported
  so far, and what running trials may still train (their config's planned epochs, recorded when
  they start). A study starts no trial once spent plus planned reaches the epoch budget, so
  coordinators and workers never overrun it together; a trial stopped early gives its unused
  epochs back. The last trial may end past the budget by at most its own length minus one.
- **trial hours**: the wall time of every trial's worker, summed (GPU-hours when each worker
  has one GPU), running trials' up to now. No trial starts once it reaches the hour budget.

Before asking Optuna for a trial, a coordinator takes the study lock (`search.storage.lock`),
counts, and only then asks, so three coordinators never start more than the budget between
them. The counts live in the study's storage, so a resume continues the same budget.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from enum import StrEnum

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.vocabulary import TrialAttr

FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


class Limit(StrEnum):
    """Which part of the budget stops a study from starting trials."""

    TRIALS = "trials"
    EPOCHS = "epochs"
    HOURS = "hours"
    TIMEOUT = "timeout"
    #: The engine's own search ended (KerasTuner's oracle: Hyperband's brackets, max_trials).
    SEARCH = "search"


@dataclass(frozen=True)
class Limits:
    """What a study may spend; None is no limit of that kind."""

    trials: int | None
    epochs: int | None = None
    hours: float | None = None
    #: The engine ends the study itself (KerasTuner's Hyperband): no limit is needed.
    engine_ends: bool = False

    def __post_init__(self) -> None:
        if not self.bounded and not self.engine_ends:
            raise ValueError("a study needs a trial target or a compute budget")

    @property
    def bounded(self) -> bool:
        """Whether a trial target or a compute budget ends the study."""
        return not (self.trials is None and self.epochs is None and self.hours is None)


@dataclass(frozen=True)
class Budget:
    """What a study has spent of its `limits`, counted over every coordinator."""

    limits: Limits
    used: int
    running: int
    #: Epochs trained by finished trials and reported so far by running ones.
    epochs_spent: int = 0
    #: Epochs running trials may still train (planned minus reported).
    epochs_planned: int = 0
    #: Worker seconds of every trial, running ones up to now.
    seconds_spent: float = 0.0

    @property
    def target(self) -> int | None:
        return self.limits.trials

    @property
    def remaining(self) -> int | None:
        """Trials that may still start under the trial target (None: no target)."""
        if self.limits.trials is None:
            return None
        return self.limits.trials - self.used - self.running

    def exhausted(self) -> Limit | None:
        """The limit that forbids starting a trial now, counting running trials' plans."""
        remaining = self.remaining
        if remaining is not None and remaining <= 0:
            return Limit.TRIALS
        epochs = self.limits.epochs
        if epochs is not None and self.epochs_spent + self.epochs_planned >= epochs:
            return Limit.EPOCHS
        return self._out_of_hours()

    def spent(self) -> Limit | None:
        """The limit already used up by finished work: once set, running trials ending cannot
        make room for another."""
        target = self.limits.trials
        if target is not None and self.used >= target:
            return Limit.TRIALS
        epochs = self.limits.epochs
        if epochs is not None and self.epochs_spent >= epochs:
            return Limit.EPOCHS
        return self._out_of_hours()

    def _out_of_hours(self) -> Limit | None:
        hours = self.limits.hours
        if hours is not None and self.seconds_spent >= hours * 3600:
            return Limit.HOURS
        return None


def trial_epochs(trial: FrozenTrial) -> int:
    """Epochs a trial trained: as recorded when it ended, else the epochs it reported (a trial
    failed by a peer's sweep, or still running)."""
    recorded = trial.user_attrs.get(TrialAttr.EPOCHS_SPENT)
    return int(recorded) if recorded is not None else len(trial.intermediate_values)


def trial_seconds(trial: FrozenTrial, now: datetime.datetime) -> float:
    """Worker seconds of a trial: as recorded when it ended, else from its start to its end (or
    to `now`, for a running trial)."""
    recorded = trial.user_attrs.get(TrialAttr.SECONDS_SPENT)
    if recorded is not None:
        return float(recorded)
    if trial.datetime_start is None:
        return 0.0
    end = trial.datetime_complete or now
    return max(0.0, (end - trial.datetime_start).total_seconds())


def budget(study: optuna.Study, limits: Limits) -> Budget:
    trials = study.get_trials(deepcopy=False)
    retried = {
        trial.user_attrs[TrialAttr.RETRY_OF]
        for trial in trials
        if TrialAttr.RETRY_OF in trial.user_attrs
    }
    used = sum(
        1 for trial in trials if trial.state in FINISHED_STATES and trial.number not in retried
    )
    running = [trial for trial in trials if trial.state == TrialState.RUNNING]
    spent = [
        trial
        for trial in trials
        if trial.state in FINISHED_STATES or trial.state == TrialState.RUNNING
    ]
    # Optuna stamps trials with the local clock (datetime.now()), so this compares like with
    # like on one machine; across machines, running trials' seconds carry the clock skew.
    now = datetime.datetime.now()
    planned = sum(
        max(0, int(trial.user_attrs.get(TrialAttr.EPOCHS_PLANNED, 0)) - trial_epochs(trial))
        for trial in running
    )
    return Budget(
        limits=limits,
        used=used,
        running=len(running),
        epochs_spent=sum(trial_epochs(trial) for trial in spent),
        epochs_planned=planned,
        seconds_spent=sum(trial_seconds(trial, now) for trial in spent),
    )


def is_retried(study: optuna.Study, number: int) -> bool:
    """Whether some trial (queued, running or finished) re-runs trial `number`."""
    return any(
        other.user_attrs.get(TrialAttr.RETRY_OF) == number
        for other in study.get_trials(deepcopy=False)
    )
