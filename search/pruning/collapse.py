"""Collapse pruning: stop trials that visibly failed, say why with the numbers, and defer the
rest to Optuna.

The rules encode the seed guide's failures (docs/seed-guide.md, docs/pruning.md). In order:

1. `nan`: a non-finite loss or metric. Such a value is never handed to the storage.
2. `chance`: after `chance_grace_epochs`, validation accuracy has never left the band just
   above chance and is not improving (the guide's wrong preprocessing: 4.84% with 120 classes).
3. `unfreeze_shock`: a phase that unfreezes blocks starts well below the best of the phases
   before it (`shock_drop`) and has not recovered `shock_patience` epochs later, the next epoch
   still as far below; or its first epoch is back near chance at once, having lost most of
   the gain above chance (`shock_wreck_drop`; BatchNorm unfrozen at a high rate: pruned at its
   first fine-tune epoch, as before). A dip that recovers is not a shock: off ImageNet-like
   data, the first unfrozen epoch often dips while BatchNorm re-adapts, and that can be the
   start of the best curve of the study (`bench.pruning`'s far task has one).
4. `collapse`: validation accuracy stays clearly below its running maximum for
   `collapse_patience` epochs in a row while training loss does not fall (the guide's LR 1e-2:
   43.10 -> 24.44 -> 15.94 is pruned at its third epoch). If training loss keeps falling it is
   overfitting, which best-epoch selection already handles.
5. Otherwise the study's Optuna pruner (median by default) decides; its reason is its name.

A fall after a good epoch keeps the best: the objective is the best epoch, so a trial that
`collapse`s or suffers an `unfreeze_shock` after an epoch clearly above the chance band (less
its noise) has already shown its value. It is stopped all the same, but completes with that best
value, its reason and evidence kept as `stop_reason` and `stop_evidence`
(`PruneDecision.keeps_best`); a fall from near chance, `chance` and `nan` are pruned.

"Clearly below" is measured twice, and a rule fires only when both hold:

- **Against what the trial learned**: a share of the accuracy gained above chance (so the same
  thresholds work for 6 classes and for 120).
- **Against the noise of the measurement**: a validation accuracy p measured on n images is a
  binomial proportion with standard error sqrt(p(1-p)/n). Two epochs' accuracies differ by more
  than noise when the gap exceeds `noise_z` (2) standard errors of the difference,
  sqrt(p1(1-p1)/n + p2(1-p2)/n): a one-sided test at about the 2.3% level. The two epochs are
  different models on the same images; a paired test (McNemar) would need per-image predictions
  that workers do not report, and treating them as independent overstates the noise where the
  predictions agree, which is the safe side for pruning. The chance band is left only when the
  best accuracy's upper bound, p + z * sqrt(p(1-p)/n), clears it. p is taken as (k+1)/(n+2), so
  that 0% or 100% still carries noise. "Back near chance" for the shock rule is measured the same
  way: the drop less its noise is still `shock_wreck_drop` (60%) of the gain above chance.

  Worked example (10 classes, 360 validation images): 0.150 -> 0.142 at the first fine-tune
  epoch is 0.8 points, while the noise of that difference is 2 x 2.6 = 5.3 points, so the trial
  goes on; the guide's 43.10 -> 24.44 on 2,400 images is 18.7 points against 2.7 points of noise
  and is pruned as before.

The validation image count comes from the worker (`validation_images`). Without it (trials
recorded before it was kept, curves from elsewhere) the rules judge as they did before the
noise test: shares of the gain alone, and the shock rule at the first unfrozen epoch.

Every decision carries its evidence, the numbers behind it
(`unfreeze_shock: best 0.850 → 0.550, 0.560 at epochs 3–4 (−29.0 pts; noise ±6.5 pts)` on 360
validation images), kept next to the reason on the trial and its MLflow run.

The coordinator holds each trial's epochs and hands them to `find_collapse` directly; what
follows a rule's verdict (report the value or not, then the study's own Optuna pruner) is the
per-epoch decision, `search.pruning.decision`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from search.pruning.noise import Noise
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
    #: Epochs after the first unfrozen one that must also stay that far below (no recovery).
    shock_patience: int = 1
    #: The first unfrozen epoch alone prunes when it is back near chance: less its noise, its
    #: drop is still this share of the previous phases' gain above chance.
    shock_wreck_drop: float = 0.6
    #: Standard errors a difference must exceed to be more than measurement noise.
    noise_z: float = 2.0

    def __post_init__(self) -> None:
        shares = ("chance_margin", "chance_min_improvement", "collapse_drop", "shock_drop")
        for name in (*shares, "shock_wreck_drop"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise ValueError(f"{name} must be in (0, 1), got {name}={value}")
        if self.chance_grace_epochs < 1 or self.collapse_patience < 1:
            raise ValueError(
                "chance_grace_epochs and collapse_patience must be >= 1, got "
                f"{self.chance_grace_epochs=}, {self.collapse_patience=}"
            )
        if self.shock_patience < 0:
            raise ValueError(f"shock_patience must be >= 0, got {self.shock_patience}")
        if not 0.0 <= self.collapse_loss_fall < 1.0:
            raise ValueError(f"collapse_loss_fall must be in [0, 1), got {self.collapse_loss_fall}")
        if not 0.0 <= self.noise_z <= 10.0:
            raise ValueError(f"noise_z must be in [0, 10], got {self.noise_z}")


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


@dataclass(frozen=True)
class PruneDecision:
    """Why a trial stops: the reason users filter on, and the numbers behind it."""

    reason: str
    evidence: str = ""
    #: The curve fell after an epoch clearly above chance (`collapse`, `unfreeze_shock`): the
    #: trial stops, but its best epoch has shown its value, so it completes with that value
    #: instead of being pruned (the objective is the best epoch, not the last).
    keeps_best: bool = False

    def __str__(self) -> str:
        return f"{self.reason}: {self.evidence}" if self.evidence else self.reason


def find_collapse(
    epochs: Sequence[EpochView],
    *,
    num_classes: int,
    validation_images: int | None = None,
    unfreezing_phases: Sequence[int] = (),
    rules: CollapseRules = CollapseRules(),
) -> PruneDecision | None:
    """The first collapse rule the curve so far breaks, with its evidence; None if healthy.

    The only place that decides `nan`: a non-finite latest epoch is reported as such before
    anything is stored. `num_classes` below 2 (not known yet) checks only that.
    """
    if not epochs:
        return None
    latest = epochs[-1]
    values = {"loss": latest.loss, "val_accuracy": latest.val_accuracy, "val_loss": latest.val_loss}
    not_finite = [f"{name} {value}" for name, value in values.items() if not math.isfinite(value)]
    if not_finite:
        return PruneDecision(Reason.NAN, f"{', '.join(not_finite)} at epoch {latest.epoch}")
    if num_classes < 2:
        return None
    noise = Noise(validation_images, rules.noise_z)
    curve = _Curve(epochs, 1.0 / num_classes, frozenset(unfreezing_phases), noise, rules)
    for rule in (curve.stuck_near_chance, curve.unfreeze_shock, curve.peak_then_fall):
        decision = rule()
        if decision is not None:
            return decision
    return None


def _points(difference: float) -> str:
    return f"{100 * difference:+.1f} pts".replace("-", "−")


def _span(epochs: Sequence[EpochView]) -> str:
    accuracies = ", ".join(f"{epoch.val_accuracy:.3f}" for epoch in epochs)
    where = (
        f"epoch {epochs[0].epoch}"
        if len(epochs) == 1
        else f"epochs {epochs[0].epoch}–{epochs[-1].epoch}"
    )
    return f"{accuracies} at {where}"


@dataclass(frozen=True)
class _Curve:
    """One trial's epochs so far, and what the rules need to judge them."""

    epochs: Sequence[EpochView]
    chance: float
    #: Phase numbers (from 1) that unfreeze backbone blocks.
    unfreezing: frozenset[int]
    noise: Noise
    rules: CollapseRules

    def clearly_below(self, reference: float, accuracy: float, share: float) -> bool:
        """`accuracy` lost more than `share` of `reference`'s gain above chance, and more
        than the noise of the difference."""
        drop = reference - accuracy
        gained = reference - self.chance
        return (
            gained > 0
            and drop > share * gained
            and drop > self.noise.of_difference(reference, accuracy)
        )

    @property
    def chance_band_top(self) -> float:
        """Accuracies below this are "near chance"."""
        return self.chance + self.rules.chance_margin * (1.0 - self.chance)

    def shown_value(self, best: float) -> bool:
        """Whether `best` is clearly above the chance band, less its noise: an epoch worth
        keeping, whatever came after it."""
        return best - self.noise.of_accuracy(best) >= self.chance_band_top

    def stuck_near_chance(self) -> PruneDecision | None:
        rules, epochs = self.rules, self.epochs
        if len(epochs) < rules.chance_grace_epochs:
            return None
        best = max(epochs, key=lambda epoch: epoch.val_accuracy)
        # Near chance only if even the best accuracy's upper bound stays inside the band.
        top = self.chance_band_top
        band = self.noise.of_accuracy(best.val_accuracy)
        if best.val_accuracy + band >= top:
            return None
        if len(epochs) > 1:
            improvement = epochs[-1].val_accuracy - min(e.val_accuracy for e in epochs[:-1])
            if improvement >= rules.chance_min_improvement * (1.0 - self.chance):
                return None
        return PruneDecision(
            Reason.CHANCE,
            f"best {best.val_accuracy:.3f} by epoch {epochs[-1].epoch}, chance {self.chance:.3f} "
            f"(band below {top:.3f}; {self.noise.describe(band)})",
        )

    def unfreeze_shock(self) -> PruneDecision | None:
        epochs, rules = self.epochs, self.rules
        phase = epochs[-1].phase
        start = len(epochs)
        while start > 0 and epochs[start - 1].phase == phase:
            start -= 1
        if start == 0 or phase not in self.unfreezing:
            return None
        before, since = epochs[:start], epochs[start:]
        best = max(before, key=lambda epoch: epoch.val_accuracy).val_accuracy
        latest = since[-1].val_accuracy
        band = self.noise.of_difference(best, latest)
        evidence = f"best {best:.3f} → {_span(since)} ({_points(latest - best)}; "
        if not self.noise.known:
            # Without a validation count, the rule as it was: the first unfrozen epoch alone.
            if len(since) == 1 and self.clearly_below(best, latest, rules.shock_drop):
                return self._stop(Reason.UNFREEZE_SHOCK, evidence + "noise unknown)", best)
            return None
        if len(since) == 1:
            # Wrecked: back near chance at once; even less its noise, the drop is most of the gain.
            lost = (best - latest - band) / (best - self.chance) if best > self.chance else 0.0
            if lost >= rules.shock_wreck_drop:
                noise = self.noise.describe(band)
                return self._stop(
                    Reason.UNFREEZE_SHOCK,
                    evidence + f"{noise}; lost ≥{lost:.0%} of the gain)",
                    best,
                )
        if len(since) == rules.shock_patience + 1 and all(
            self.clearly_below(best, epoch.val_accuracy, rules.shock_drop) for epoch in since
        ):
            return self._stop(
                Reason.UNFREEZE_SHOCK, evidence + f"{self.noise.describe(band)})", best
            )
        return None

    def peak_then_fall(self) -> PruneDecision | None:
        epochs, rules = self.epochs, self.rules
        if len(epochs) <= rules.collapse_patience:
            return None
        peak_index = max(range(len(epochs)), key=lambda index: epochs[index].val_accuracy)
        if peak_index >= len(epochs) - rules.collapse_patience:
            return None
        peak = epochs[peak_index]
        recent = epochs[-rules.collapse_patience :]
        if not all(
            self.clearly_below(peak.val_accuracy, epoch.val_accuracy, rules.collapse_drop)
            for epoch in recent
        ):
            return None
        if recent[-1].loss < peak.loss * (1.0 - rules.collapse_loss_fall):
            return None  # training loss keeps falling: overfitting, not a collapse
        latest = recent[-1].val_accuracy
        band = self.noise.of_difference(peak.val_accuracy, latest)
        return self._stop(
            Reason.COLLAPSE,
            f"peak {peak.val_accuracy:.3f} at epoch {peak.epoch} → {_span(recent)} "
            f"({_points(latest - peak.val_accuracy)}; {self.noise.describe(band)}); "
            f"loss {peak.loss:.3f} → {recent[-1].loss:.3f}",
            peak.val_accuracy,
        )

    def _stop(self, reason: Reason, evidence: str, best: float) -> PruneDecision:
        """A fall from `best`: the trial stops, and completes with its best if that was an
        epoch worth keeping (a fall from near chance is pruned)."""
        return PruneDecision(reason, evidence, keeps_best=self.shown_value(best))
