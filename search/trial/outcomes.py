"""How a finished trial ended, in the words the runner prints and the plots show."""

from __future__ import annotations

from optuna.trial import FrozenTrial, TrialState

from search.vocabulary import Reason, TrialAttr


def outcome_label(trial: FrozenTrial) -> str:
    """COMPLETE, COMPLETE (stopped: <reason>) for a trial the collapse rules stopped after a good
    epoch, PRUNED: <reason>, FAIL: <reason>, or the bare state."""
    if trial.state == TrialState.COMPLETE and TrialAttr.STOP_REASON in trial.user_attrs:
        return f"COMPLETE (stopped: {trial.user_attrs[TrialAttr.STOP_REASON]})"
    if trial.state == TrialState.PRUNED:
        return f"PRUNED: {trial.user_attrs.get(TrialAttr.PRUNE_REASON, 'unknown')}"
    if trial.state == TrialState.FAIL:
        # Only the heartbeat check fails a trial without our reason attribute.
        return f"FAIL: {trial.user_attrs.get(TrialAttr.FAIL_REASON, Reason.STALE_HEARTBEAT)}"
    return trial.state.name
