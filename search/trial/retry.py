"""Which failures are retried, and how often a study may fail before it stops.

Infrastructure failures (a worker killed, the host out of memory, a coordinator that stopped
heart-beating) say nothing about the parameters, so the trial is re-run with the same
parameters, up to `retries` times; a trial stopped on purpose (Ctrl-C) is always re-run.
Parameter failures (GPU out of memory at this batch size) are recorded with their reason and
never retried: the region is infeasible. Input errors and bugs
fail the same way every time, so they are not retried either. After `max_consecutive_failures`
failures in a row the study stops instead of burning its budget.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from search.vocabulary import Reason, TrialAttr

INFRASTRUCTURE_FAILURES = frozenset(
    {Reason.WORKER_DIED, Reason.HOST_OOM, Reason.STALE_HEARTBEAT, Reason.INTERRUPTED}
)
#: Stopped on purpose (Ctrl-C, SIGTERM): always re-run, and not counted against `retries`.
USER_STOPS = frozenset({Reason.INTERRUPTED})


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 2
    max_consecutive_failures: int = 5

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries=}")
        if self.max_consecutive_failures < 1:
            raise ValueError(
                f"max_consecutive_failures must be >= 1, got {self.max_consecutive_failures=}"
            )

    def should_retry(self, reason: str, user_attrs: Mapping[str, Any]) -> bool:
        if reason in USER_STOPS:
            return True
        retried = int(user_attrs.get(TrialAttr.RETRY_COUNT, 0))
        return reason in INFRASTRUCTURE_FAILURES and retried < self.retries


def enqueue_retry(
    study: optuna.Study,
    *,
    number: int,
    params: Mapping[str, Any],
    user_attrs: Mapping[str, Any],
    reason: str,
) -> None:
    """Queue a new trial with the same parameters; the next `ask` anywhere will run it."""
    previous = int(user_attrs.get(TrialAttr.RETRY_COUNT, 0))
    kept: dict[str, Any] = {
        key: user_attrs[key]
        for key in (TrialAttr.ENQUEUED, TrialAttr.ENQUEUED_CONFIG)
        if user_attrs.get(key) is not None
    }
    study.enqueue_trial(
        dict(params),
        user_attrs={
            TrialAttr.RETRY_OF: number,
            TrialAttr.RETRY_COUNT: previous if reason in USER_STOPS else previous + 1,
            TrialAttr.RETRY_REASON: reason,
            **kept,
        },
    )


class StudyStoppedError(RuntimeError):
    """Too many consecutive failures; the message says which and how to resume."""


def retry_params(trial: FrozenTrial) -> dict[str, Any]:
    """The parameters to re-run a trial with, including the fixed ones of an enqueued trial
    that died before its space asked for them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # system_attrs is deprecated for users, not for this
        fixed = dict(trial.system_attrs.get("fixed_params", {}))
    return {**fixed, **trial.params}
