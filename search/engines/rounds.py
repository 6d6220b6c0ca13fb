"""Hyperband's rounds as epoch windows: what a KerasTuner Hyperband trial trains.

A trial trains up to its round's `tuner/epochs`; a trial that continues an earlier round's
trial (`tuner/trial_id`) starts from that trial's best-epoch weights (`best.weights.h5` in its
folder) after `tuner/initial_epoch`, as KerasTuner's own Hyperband does (weights only; the
optimizer starts afresh). The window itself is `trainers.fit.window.EpochWindow`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from search.engines.oracle_results import best_reported
from search.trial.closing import Verdict
from search.trial.files import BEST_WEIGHTS, trial_folder
from search.vocabulary import TrialAttr
from trainers.fit.window import EpochWindow


@dataclass(frozen=True)
class HyperbandRound:
    """KerasTuner's words for a Hyperband trial's round: train up to epoch `epochs`
    (`tuner/epochs`); a trial that continues an earlier round's trial (`trial_id`, KerasTuner's
    `tuner/trial_id`) resumes after `initial_epoch` (`tuner/initial_epoch`)."""

    epochs: int
    initial_epoch: int = 0
    trial_id: str | None = None

    def window(self, weights: Path | None) -> EpochWindow:
        """The epochs this round trains: after `initial_epoch` from the continued trial's
        best-epoch `weights`, or from the start up to `epochs` without them."""
        if weights is None:
            return EpochWindow(until_epoch=self.epochs)
        return EpochWindow(
            after_epoch=self.initial_epoch, until_epoch=self.epochs, initial_weights=weights
        )


def hyperband_round(values: Mapping[str, Any]) -> HyperbandRound | None:
    """The round of a KerasTuner trial's values; None for an oracle without rounds."""
    if "tuner/epochs" not in values:
        return None
    continued = values.get("tuner/trial_id")
    return HyperbandRound(
        epochs=int(values["tuner/epochs"]),
        initial_epoch=int(values.get("tuner/initial_epoch", 0)) if continued else 0,
        trial_id=None if continued is None else str(continued),
    )


@dataclass(frozen=True)
class RoundPlan:
    """How a Hyperband trial runs: its epoch window (it always keeps its best-epoch weights,
    for a later round); for a continuation, the study's trial it continues and that trial's
    verdict and best value (what a continuation with nothing left to train is closed with)."""

    window: EpochWindow
    continued: int | None = None
    inherited: Verdict | None = None
    inherited_best: float | None = None


def round_plan(
    round_: HyperbandRound, trials: Sequence[FrozenTrial], output_dir: Path
) -> RoundPlan:
    """The plan of a trial in Hyperband's round `round_`, given the study's `trials`: from the
    continued trial's best-epoch weights, or from the start if they are gone."""
    from_start = RoundPlan(round_.window(None))
    if round_.trial_id is None:
        return from_start
    continued = next(
        (
            trial
            for trial in trials
            if trial.user_attrs.get(TrialAttr.KERAS_TUNER_TRIAL) == round_.trial_id
            and trial.state in (TrialState.COMPLETE, TrialState.PRUNED)
        ),
        None,
    )
    if continued is None:
        return from_start
    weights = trial_folder(output_dir, continued.number) / BEST_WEIGHTS
    if not weights.is_file():
        return from_start
    best = continued.value if continued.value is not None else best_reported(continued)
    if continued.state == TrialState.COMPLETE:
        verdict = Verdict(TrialState.COMPLETE, value=best)
    else:
        reason = str(continued.user_attrs.get(TrialAttr.PRUNE_REASON, ""))
        detail = f"continues trial {continued.number}, pruned; nothing left to train"
        verdict = Verdict(TrialState.PRUNED, reason, detail)
    return RoundPlan(round_.window(weights), continued.number, verdict, best)
