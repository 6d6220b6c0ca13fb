"""The per-epoch decision: whether a trial's latest epoch ends it, and why.

One order wherever a trial is judged, in the coordinator and in the benchmarks that replay it:

1. the collapse rules (`search.pruning.collapse.find_collapse`) judge the curve so far;
2. a non-finite value is never handed to the storage: `nan` stops the trial before anything
   is reported;
3. every other value is reported to the Optuna trial as its intermediate value at that epoch;
4. a collapse stops the trial; otherwise the study's own Optuna pruner decides, and its reason
   is its name (`median`, `asha`, `hyperband`).

Only public Optuna API: `Trial.report` and `Trial.should_prune`. A KerasTuner study's pruner is
Optuna's `NopPruner` (its oracles give each trial its epochs up front), so step 4 is the
collapse rules alone there.
"""

from __future__ import annotations

import math

import optuna
from optuna.pruners import BasePruner

from search.pruning.collapse import EpochView, PruneDecision
from search.vocabulary import Reason

#: The Optuna pruners a study may ask after the collapse rules, by the name that is also the
#: reason they record.
PRUNERS: dict[str, type[BasePruner]] = {
    "median": optuna.pruners.MedianPruner,
    "asha": optuna.pruners.SuccessiveHalvingPruner,
    "hyperband": optuna.pruners.HyperbandPruner,
}
#: No Optuna pruner, the collapse rules alone: a confirmation's re-runs are never compared
#: mid-way (`search.runner.confirmation`).
NO_PRUNER = "none"


def pruner_name(pruner: BasePruner) -> str:
    """The reason recorded when an Optuna pruner stops a trial: its name (`median`, `asha`,
    `hyperband`; another pruner's class name, shortened)."""
    for name, kind in PRUNERS.items():
        if type(pruner) is kind:
            return name
    return type(pruner).__name__.removesuffix("Pruner").lower() or "pruner"


def report_epoch(trial: optuna.Trial, latest: EpochView) -> bool:
    """Report `latest`'s validation accuracy to `trial`; False, reporting nothing, when it is
    not finite (such a value never reaches the storage)."""
    if not math.isfinite(latest.val_accuracy):
        return False
    trial.report(latest.val_accuracy, step=latest.epoch)
    return True


def pruner_decision(trial: optuna.Trial, latest: EpochView) -> PruneDecision | None:
    """The study's own Optuna pruner on what `trial` reported, `latest` its last epoch: its
    name and that epoch's value if it prunes, else None."""
    if not trial.should_prune():
        return None
    return PruneDecision(
        pruner_name(trial.study.pruner), f"{latest.val_accuracy:.3f} at epoch {latest.epoch}"
    )


def decide_epoch(
    trial: optuna.Trial | None, latest: EpochView, collapse: PruneDecision | None
) -> PruneDecision | None:
    """Why `latest` ends the trial, or None (see the module docstring).

    `collapse` is what the collapse rules say of the curve up to `latest` (`find_collapse`);
    `trial` is the Optuna trial that records it, None where no study stands behind the trial
    (the rules alone). `trial.report` raises `optuna.exceptions.UpdateFinishedTrialError` if
    another coordinator finished the trial meanwhile.
    """
    if collapse is not None and collapse.reason == Reason.NAN:
        return collapse
    if trial is None:
        return collapse
    report_epoch(trial, latest)
    return collapse or pruner_decision(trial, latest)
