"""The trial budget of a study shared by several coordinators.

A study's target counts trials that *used* the budget: completed, pruned, and failed for good.
A failed trial that was retried with the same parameters does not count; its retry does. Before
asking Optuna for a trial, a coordinator takes the study lock (`search.study_lock`), counts used
and running trials, and only then asks, so three coordinators never start more trials than the
target between them.
"""

from __future__ import annotations

from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from search.vocabulary import TrialAttr

FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


@dataclass(frozen=True)
class Budget:
    used: int
    running: int
    target: int

    @property
    def remaining(self) -> int:
        return self.target - self.used - self.running


def budget(study: optuna.Study, target: int) -> Budget:
    trials = study.get_trials(deepcopy=False)
    retried = {
        trial.user_attrs[TrialAttr.RETRY_OF]
        for trial in trials
        if TrialAttr.RETRY_OF in trial.user_attrs
    }
    used = sum(
        1 for trial in trials if trial.state in FINISHED_STATES and trial.number not in retried
    )
    running = sum(1 for trial in trials if trial.state == TrialState.RUNNING)
    return Budget(used=used, running=running, target=target)


def is_retried(study: optuna.Study, number: int) -> bool:
    """Whether some trial (queued, running or finished) re-runs trial `number`."""
    return any(
        other.user_attrs.get(TrialAttr.RETRY_OF) == number
        for other in study.get_trials(deepcopy=False)
    )
