"""How a finished trial ended, in the words the runner prints and the plots show.

The reasons are stored as trial user attributes (and MLflow tags): `prune_reason` for pruned
trials (nan, chance, collapse, unfreeze_shock, median, ...) and `fail_reason` plus
`fail_detail` for failed ones (worker_died, gpu_oom, host_oom, input, error).
"""

from __future__ import annotations

from optuna.trial import FrozenTrial, TrialState

PRUNE_REASON = "prune_reason"
FAIL_REASON = "fail_reason"
FAIL_DETAIL = "fail_detail"
BEST_EPOCH = "best_epoch"
CONFIG_YAML = "config_yaml"
MLFLOW_RUN_ID = "mlflow_run_id"
#: host:pid of the coordinator that runs the trial.
COORDINATOR = "coordinator"
#: Reason of a trial failed by the heartbeat check, which cannot set user attributes.
STALE = "stale_heartbeat"


def outcome_label(trial: FrozenTrial) -> str:
    """COMPLETE, PRUNED: <reason>, FAIL: <reason>, or the bare state."""
    if trial.state == TrialState.PRUNED:
        return f"PRUNED: {trial.user_attrs.get(PRUNE_REASON, 'unknown')}"
    if trial.state == TrialState.FAIL:
        # Only the heartbeat check fails a trial without our reason attribute.
        return f"FAIL: {trial.user_attrs.get(FAIL_REASON, STALE)}"
    return trial.state.name
