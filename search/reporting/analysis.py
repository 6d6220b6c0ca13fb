"""Tables of a finished study for notebooks: trials, outcomes, strategies, curves, parameters.

The notebooks in `notebooks/` call these (and draw with `search.reporting.analysis_plots`) and hold
no logic of their own.

`unfreeze_level` is the sampled step on a space's unfreeze ladder; `unfrozen_units` is what that
step meant, the whole backbone units the trial's recorded config unfroze (on effnet_b4 level 8
is 23 units). Studies created before the sampled parameter was renamed from `unfreeze_blocks`
show that column as `unfreeze_level` too, so they still analyse.

A trial's validation curve is its Optuna intermediate values (val_accuracy by global epoch);
its phase boundaries come from its recorded config. The scientific parameters are the study's
`param_roles` attribute, or `spaces.parameters.SCIENTIFIC_BY_DEFAULT` for a study without it.
"""

from __future__ import annotations

from itertools import accumulate

import pandas as pd
from optuna import Study
from optuna.trial import FrozenTrial

from search.trial.outcomes import outcome_label
from search.vocabulary import RENAMED_PARAMS, StudyAttr, TrialAttr
from spaces.parameters import SCIENTIFIC_BY_DEFAULT, Role
from trainers.config.schema import TrainConfig
from trainers.errors import ConfigError


def trials_frame(study: Study) -> pd.DataFrame:
    """number, outcome, evidence (the numbers behind a prune or an early stop), value,
    best_epoch, epochs_run, minutes, unfrozen_units, then every sampled parameter (under its
    current name)."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        duration = trial.duration.total_seconds() / 60 if trial.duration else None
        rows.append(
            {
                "number": trial.number,
                "outcome": outcome_label(trial),
                "evidence": trial.user_attrs.get(
                    TrialAttr.PRUNE_EVIDENCE, trial.user_attrs.get(TrialAttr.STOP_EVIDENCE)
                ),
                "value": trial.value,
                "best_epoch": trial.user_attrs.get(TrialAttr.BEST_EPOCH),
                "epochs_run": len(trial.intermediate_values),
                "minutes": duration,
                "unfrozen_units": unfrozen_units(trial),
                **{RENAMED_PARAMS.get(name, name): value for name, value in trial.params.items()},
            }
        )
    if not rows:
        return pd.DataFrame()
    frame = pd.DataFrame(rows).set_index("number")
    # A whole count, missing (<NA>) where a trial has no recorded config.
    frame["unfrozen_units"] = frame["unfrozen_units"].astype("Int64")
    return frame


def stopped_trials(frame: pd.DataFrame) -> pd.DataFrame:
    """The trials stopped early, pruned or completed with the best epoch they had before a
    fall: why, after how many epochs, and the numbers behind each decision."""
    if frame.empty:
        return pd.DataFrame()
    outcome = frame["outcome"]
    early = outcome.str.startswith("PRUNED") | outcome.str.contains("(stopped:", regex=False)
    stopped = frame[early]
    return stopped[["outcome", "epochs_run", "evidence"]]


def unfrozen_units(trial: FrozenTrial) -> int | None:
    """Whole units the trial's recorded config unfreezes; None without a readable config."""
    config = recorded_config(trial)
    return None if config is None else config.unfrozen_units


def recorded_config(trial: FrozenTrial) -> TrainConfig | None:
    """The config the trial trained with; None if it has none or this version cannot read it."""
    text = trial.user_attrs.get(TrialAttr.CONFIG_YAML)
    if text is None:
        return None
    try:
        return TrainConfig.from_yaml(text, origin=f"trial {trial.number}")
    except ConfigError:
        # A config this version can no longer read: leave the cell empty, keep the table.
        return None


def strategy_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Best and median value of completed trials per fine-tuning strategy (the scientific
    parameters): the ladder step, the whole units it unfroze, BatchNorm frozen or not."""
    completed = frame[frame["outcome"].str.startswith("COMPLETE")].copy()
    if completed.empty:
        return pd.DataFrame()
    if "freeze_bn" not in completed:
        completed["freeze_bn"] = None
    completed["freeze_bn"] = (
        completed["freeze_bn"]
        .astype("object")
        .where(completed["unfreeze_level"] > 0, "n/a (frozen)")
    )
    keys = ["unfreeze_level", "unfrozen_units", "freeze_bn"]
    grouped = completed.groupby(keys, dropna=False)["value"]
    return grouped.agg(["count", "max", "median"]).sort_values("max", ascending=False)


#: Columns of `validation_curves`.
CURVE_COLUMNS = ["trial", "outcome", "epoch", "val_accuracy"]


def validation_curves(study: Study) -> pd.DataFrame:
    """One row per trial and epoch it reported: trial number, outcome, global epoch, and the
    validation accuracy of that epoch (the trial's Optuna intermediate value)."""
    rows = [
        {
            "trial": trial.number,
            "outcome": outcome_label(trial),
            "epoch": epoch,
            "val_accuracy": value,
        }
        for trial in study.get_trials(deepcopy=False)
        for epoch, value in sorted(trial.intermediate_values.items())
    ]
    return pd.DataFrame(rows, columns=CURVE_COLUMNS)


def phase_boundaries(study: Study) -> dict[int, tuple[int, ...]]:
    """Trial number -> the global epochs after which its next phase starts (its config's
    cumulative phase epochs, the last phase's end left out); () for a trial without a config."""
    return {
        trial.number: trial_phase_boundaries(trial) for trial in study.get_trials(deepcopy=False)
    }


def trial_phase_boundaries(trial: FrozenTrial) -> tuple[int, ...]:
    """The global epochs that end each phase but the last, e.g. (3,) for 3 head + 5 fine-tune."""
    config = recorded_config(trial)
    if config is None:
        return ()
    ends = accumulate(phase.epochs for phase in config.phases)
    return tuple(ends)[:-1]


def scientific_parameters(study: Study) -> list[str]:
    """The scientific parameters the study's trials sampled (current names, in the order first
    sampled): by the study's `param_roles`, or `SCIENTIFIC_BY_DEFAULT` for a study without it."""
    roles = study.user_attrs.get(StudyAttr.PARAM_ROLES)
    if isinstance(roles, dict):
        scientific = {
            RENAMED_PARAMS.get(name, name)
            for name, role in roles.items()
            if role == Role.SCIENTIFIC
        }
    else:
        scientific = set(SCIENTIFIC_BY_DEFAULT)
    sampled = dict.fromkeys(
        RENAMED_PARAMS.get(name, name)
        for trial in study.get_trials(deepcopy=False)
        for name in trial.params
    )
    return [name for name in sampled if name in scientific]
