"""Collapse pruning: stop trials that visibly failed, say why, and defer the rest to Optuna.

The rules encode the seed guide's failures (DESIGN.md, "Collapse"). In order:

1. `nan`: a non-finite loss or metric. Such a value is never handed to the storage.
2. `chance`: after `chance_grace_epochs`, validation accuracy has never left the band just
   above chance and is not improving (the guide's wrong preprocessing: 4.84% with 120 classes).
3. `unfreeze_shock`: the first epoch of a phase that unfreezes blocks drops well below the best
   of the phases before it (BatchNorm unfrozen, or a fine-tune learning rate too high).
4. `collapse`: validation accuracy stays clearly below its running maximum for
   `collapse_patience` epochs in a row while training loss does not fall (the guide's LR 1e-2:
   43.10 -> 24.44 -> 15.94 is pruned at its third epoch). If training loss keeps falling it is
   overfitting, which best-epoch selection already handles.
5. Otherwise the study's Optuna pruner (median by default) decides; its reason is its name.

"Clearly below" is measured as a share of what the trial had learned above chance, so the
same thresholds work for 6 classes and for 120.

The coordinator holds each trial's epochs and hands them to `collapse_reason` directly; the
study's own pruner is a plain Optuna pruner, asked through `optuna_reason` on the stored trial.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import optuna
from optuna.pruners import BasePruner
from optuna.trial import FrozenTrial

from search.vocabulary import Reason


@dataclass(frozen=True)
class CollapseRules:
    """Thresholds of the collapse rules; every study may set its own."""

    #: Epochs before the chance rule may fire: the first epoch of a healthy run can be poor.
    chance_grace_epochs: int = 2
    #: "Near chance" = below chance + this share of the distance from chance to 100%.
    chance_margin: float = 0.05
    #: Less improvement than this (share of 1 - chance) over the previous epochs = "not improving".
    chance_min_improvement: float = 0.01
    #: "Clearly below the running maximum" = lost this share of the accuracy gained above chance.
    collapse_drop: float = 0.25
    #: Consecutive epochs that must stay clearly below the maximum.
    collapse_patience: int = 2
    #: Training loss "falls" if it ends this share below its value at the peak epoch.
    collapse_loss_fall: float = 0.05
    #: First fine-tune epoch lost this share of the previous phases' gain above chance.
    shock_drop: float = 0.10

    def __post_init__(self) -> None:
        for name in ("chance_margin", "chance_min_improvement", "collapse_drop", "shock_drop"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise ValueError(f"{name} must be in (0, 1), got {name}={value}")
        if self.chance_grace_epochs < 1 or self.collapse_patience < 1:
            raise ValueError(
                "chance_grace_epochs and collapse_patience must be >= 1, got "
                f"{self.chance_grace_epochs=}, {self.collapse_patience=}"
            )
        if not 0.0 <= self.collapse_loss_fall < 1.0:
            raise ValueError(f"collapse_loss_fall must be in [0, 1), got {self.collapse_loss_fall}")


@dataclass(frozen=True)
class EpochView:
    """What the rules look at for one epoch."""

    epoch: int
    phase: int
    loss: float
    val_accuracy: float
    val_loss: float = 0.0

    @classmethod
    def from_metrics(cls, epoch: int, metrics: Mapping[str, float]) -> EpochView:
        """One epoch as a worker reports it; a missing value counts as non-finite."""
        return cls(
            epoch=epoch,
            phase=int(metrics.get("phase", 1)),
            loss=float(metrics.get("loss", math.nan)),
            val_accuracy=float(metrics.get("val_accuracy", math.nan)),
            val_loss=float(metrics.get("val_loss", math.nan)),
        )


def collapse_reason(
    epochs: Sequence[EpochView],
    *,
    num_classes: int,
    unfreezing_phases: Sequence[int] = (),
    rules: CollapseRules = CollapseRules(),
) -> Reason | None:
    """The first collapse rule the curve so far breaks, or None if it looks healthy.

    The only place that decides `nan`: a non-finite latest epoch is reported as such before
    anything is stored. `num_classes` below 2 (not known yet) checks only that.
    """
    if not epochs:
        return None
    latest = epochs[-1]
    if not all(math.isfinite(v) for v in (latest.loss, latest.val_accuracy, latest.val_loss)):
        return Reason.NAN
    if num_classes < 2:
        return None
    chance = 1.0 / num_classes
    accuracies = [epoch.val_accuracy for epoch in epochs]
    if _stuck_near_chance(accuracies, chance, rules):
        return Reason.CHANCE
    if _unfreeze_shock(epochs, chance, set(unfreezing_phases), rules):
        return Reason.UNFREEZE_SHOCK
    if _peak_then_fall(epochs, chance, rules):
        return Reason.COLLAPSE
    return None


def _stuck_near_chance(accuracies: Sequence[float], chance: float, rules: CollapseRules) -> bool:
    if len(accuracies) < rules.chance_grace_epochs:
        return False
    band_top = chance + rules.chance_margin * (1.0 - chance)
    if max(accuracies) >= band_top:
        return False
    if len(accuracies) == 1:
        return True
    improvement = accuracies[-1] - min(accuracies[:-1])
    return improvement < rules.chance_min_improvement * (1.0 - chance)


def _unfreeze_shock(
    epochs: Sequence[EpochView], chance: float, unfreezing: set[int], rules: CollapseRules
) -> bool:
    latest = epochs[-1]
    starts_phase = len(epochs) >= 2 and epochs[-2].phase != latest.phase
    if not starts_phase or latest.phase not in unfreezing:
        return False
    previous_best = max(epoch.val_accuracy for epoch in epochs[:-1])
    gained = previous_best - chance
    return gained > 0 and latest.val_accuracy < previous_best - rules.shock_drop * gained


def _peak_then_fall(epochs: Sequence[EpochView], chance: float, rules: CollapseRules) -> bool:
    if len(epochs) <= rules.collapse_patience:
        return False
    peak_index = max(range(len(epochs)), key=lambda index: epochs[index].val_accuracy)
    peak = epochs[peak_index]
    gained = peak.val_accuracy - chance
    if gained <= 0:
        return False
    floor = peak.val_accuracy - rules.collapse_drop * gained
    recent = epochs[-rules.collapse_patience :]
    if peak_index >= len(epochs) - rules.collapse_patience:
        return False
    if not all(epoch.val_accuracy < floor for epoch in recent):
        return False
    loss_fell = recent[-1].loss < peak.loss * (1.0 - rules.collapse_loss_fall)
    return not loss_fell


def pruner_name(pruner: BasePruner) -> str:
    """The reason recorded when an Optuna pruner stops a trial: its name (`median`, ...)."""
    return type(pruner).__name__.removesuffix("Pruner").lower() or "pruner"


def optuna_reason(study: optuna.Study, trial: FrozenTrial) -> str | None:
    """The study's own Optuna pruner on the stored trial: its name if it prunes, else None."""
    if trial.intermediate_values and study.pruner.prune(study, trial):
        return pruner_name(study.pruner)
    return None
