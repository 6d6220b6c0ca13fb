"""Tables of a finished study for notebooks: one row per trial, outcome and parameters.

The notebooks in `notebooks/` call these and hold no logic of their own.
"""

from __future__ import annotations

import pandas as pd
from optuna import Study

from search.outcomes import BEST_EPOCH, outcome_label


def trials_frame(study: Study) -> pd.DataFrame:
    """number, outcome, value, best_epoch, minutes, then every sampled parameter."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        duration = trial.duration.total_seconds() / 60 if trial.duration else None
        rows.append(
            {
                "number": trial.number,
                "outcome": outcome_label(trial),
                "value": trial.value,
                "best_epoch": trial.user_attrs.get(BEST_EPOCH),
                "epochs_run": len(trial.intermediate_values),
                "minutes": duration,
                **trial.params,
            }
        )
    return pd.DataFrame(rows).set_index("number") if rows else pd.DataFrame()


def strategy_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Best and median value of completed trials per fine-tuning strategy (the scientific
    parameters: how many blocks, BatchNorm frozen or not)."""
    completed = frame[frame["outcome"] == "COMPLETE"].copy()
    if completed.empty:
        return pd.DataFrame()
    if "freeze_bn" not in completed:
        completed["freeze_bn"] = None
    completed["freeze_bn"] = (
        completed["freeze_bn"]
        .astype("object")
        .where(completed["unfreeze_blocks"] > 0, "n/a (frozen)")
    )
    grouped = completed.groupby(["unfreeze_blocks", "freeze_bn"], dropna=False)["value"]
    return grouped.agg(["count", "max", "median"]).sort_values("max", ascending=False)
