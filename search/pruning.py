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
5. Otherwise the wrapped pruner (median by default) decides; its reason is its name.

"Clearly below" is measured as a share of what the trial had learned above chance, so the
same thresholds work for 6 classes and for 120.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.pruners import BasePruner, MedianPruner
from optuna.trial import FrozenTrial

#: Trial user attributes the coordinator keeps up to date for the rules.
EPOCHS_ATTR = "epoch_metrics"
NUM_CLASSES_ATTR = "num_classes"
UNFREEZING_PHASES_ATTR = "unfreezing_phases"


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


def epoch_views(records: Sequence[Mapping[str, Any]]) -> list[EpochView]:
    return [
        EpochView(
            epoch=int(record["epoch"]),
            phase=int(record.get("phase", 1)),
            loss=float(record.get("loss", math.nan)),
            val_accuracy=float(record.get("val_accuracy", math.nan)),
            val_loss=float(record.get("val_loss", 0.0)),
        )
        for record in records
    ]


def collapse_reason(
    epochs: Sequence[EpochView],
    *,
    num_classes: int,
    unfreezing_phases: Sequence[int] = (),
    rules: CollapseRules = CollapseRules(),
) -> str | None:
    """The first collapse rule the curve so far breaks, or None if it looks healthy."""
    if not epochs:
        return None
    latest = epochs[-1]
    if not all(math.isfinite(v) for v in (latest.loss, latest.val_accuracy, latest.val_loss)):
        return "nan"
    chance = 1.0 / num_classes
    accuracies = [epoch.val_accuracy for epoch in epochs]
    if _stuck_near_chance(accuracies, chance, rules):
        return "chance"
    if _unfreeze_shock(epochs, chance, set(unfreezing_phases), rules):
        return "unfreeze_shock"
    if _peak_then_fall(epochs, chance, rules):
        return "collapse"
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


@dataclass(frozen=True)
class PruneDecision:
    reason: str


class CollapsePruner(BasePruner):
    """Prunes on the collapse rules at once, else asks a standard Optuna pruner.

    The per-epoch training loss, validation accuracy and phase come from the trial's
    `epoch_metrics` user attribute, which the coordinator updates before asking.
    """

    def __init__(
        self,
        wrapped: BasePruner | None = None,
        *,
        rules: CollapseRules | None = None,
    ) -> None:
        self.wrapped = wrapped if wrapped is not None else MedianPruner(n_startup_trials=3)
        self.rules = rules if rules is not None else CollapseRules()

    @property
    def wrapped_name(self) -> str:
        return type(self.wrapped).__name__.removesuffix("Pruner").lower() or "pruner"

    def decide(self, study: optuna.Study, trial: FrozenTrial) -> PruneDecision | None:
        """Why `trial` should stop now, or None to continue."""
        records = trial.user_attrs.get(EPOCHS_ATTR, [])
        num_classes = int(trial.user_attrs.get(NUM_CLASSES_ATTR, 0))
        if records and num_classes >= 2:
            reason = collapse_reason(
                epoch_views(records),
                num_classes=num_classes,
                unfreezing_phases=trial.user_attrs.get(UNFREEZING_PHASES_ATTR, []),
                rules=self.rules,
            )
            if reason is not None:
                return PruneDecision(reason)
        if trial.intermediate_values and self.wrapped.prune(study, trial):
            return PruneDecision(self.wrapped_name)
        return None

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        return self.decide(study, trial) is not None
