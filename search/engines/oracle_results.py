"""What a KerasTuner oracle is told of a trial the study recorded.

A pruned trial is told COMPLETED with its best epoch so far, as KerasTuner scores a trial an
`EarlyStopping` callback ended; an out-of-memory or failed one FAILED; a crashed one INVALID,
and the oracle queues it again (up to `--retries`). A trial stopped by Ctrl-C, or left running
by a killed coordinator, is not told: reloading the oracle's state queues it again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from optuna.trial import FrozenTrial, TrialState

from search.trial.retry import INFRASTRUCTURE_FAILURES, USER_STOPS
from search.vocabulary import Reason, TrialAttr

#: Reasons the oracle is not told of: the trial runs again from the oracle's reloaded state.
NOT_TOLD = frozenset({*USER_STOPS, Reason.STALE_HEARTBEAT, Reason.TAKEN_OVER})


@dataclass(frozen=True)
class OracleResult:
    """What the oracle is told of a finished trial."""

    status: str
    value: float | None = None
    message: str = ""


def oracle_result(
    state: TrialState, reason: str, value: float | None, detail: str = ""
) -> OracleResult:
    """The oracle's view of a trial the study recorded (see the module docstring): `value`
    is the trial's best validation accuracy, pruned or not."""
    if state == TrialState.COMPLETE:
        return OracleResult("COMPLETED", value)
    if state == TrialState.PRUNED and reason != Reason.GPU_OOM and value is not None:
        return OracleResult("COMPLETED", value, f"pruned: {reason}")
    if reason in INFRASTRUCTURE_FAILURES:
        return OracleResult("INVALID", None, f"{reason}: {detail}")
    return OracleResult("FAILED", None, f"{reason}: {detail}")


def best_reported(trial: FrozenTrial) -> float | None:
    """The best finite value a trial reported; None if it reported none."""
    finite = [value for value in trial.intermediate_values.values() if math.isfinite(value)]
    return max(finite) if finite else None


def recorded_result(trial: FrozenTrial) -> OracleResult | None:
    """The oracle's view of a finished Optuna trial; None if it is to run again (a crash,
    Ctrl-C, a dead coordinator) or still runs."""
    attrs = trial.user_attrs
    if trial.state == TrialState.COMPLETE:
        return OracleResult("COMPLETED", trial.value)
    if trial.state == TrialState.PRUNED:
        reason = str(attrs.get(TrialAttr.PRUNE_REASON, ""))
        return oracle_result(trial.state, reason, best_reported(trial), "")
    if trial.state == TrialState.FAIL:
        reason = str(attrs.get(TrialAttr.FAIL_REASON, Reason.STALE_HEARTBEAT))
        if reason in NOT_TOLD or reason in INFRASTRUCTURE_FAILURES:
            return None
        return oracle_result(trial.state, reason, None, str(attrs.get(TrialAttr.FAIL_DETAIL, "")))
    return None
