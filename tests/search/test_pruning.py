"""Collapse pruner on scripted curves: the seed guide's failures are caught, healthy runs never."""

from __future__ import annotations

import math
from collections.abc import Sequence

import optuna
import pytest
from optuna.trial import TrialState

from search.pruning import (
    CollapseRules,
    EpochView,
    collapse_reason,
    optuna_reason,
    pruner_name,
)


def curve(
    accuracies: Sequence[float],
    losses: Sequence[float] | None = None,
    phases: Sequence[int] | None = None,
) -> list[EpochView]:
    losses = losses if losses is not None else [1.0 - 0.01 * i for i in range(len(accuracies))]
    phases = phases if phases is not None else [1] * len(accuracies)
    return [
        EpochView(epoch=i + 1, phase=p, loss=loss, val_accuracy=a, val_loss=1.0)
        for i, (a, loss, p) in enumerate(zip(accuracies, losses, phases, strict=True))
    ]


def first_pruned_epoch(
    epochs: list[EpochView], num_classes: int, **kwargs: object
) -> tuple[int, str] | None:
    """Feed the curve epoch by epoch, as the coordinator does; where does it stop?"""
    for end in range(1, len(epochs) + 1):
        reason = collapse_reason(epochs[:end], num_classes=num_classes, **kwargs)  # type: ignore[arg-type]
        if reason is not None:
            return end, reason
    return None


GUIDE_COLLAPSE = [0.4310, 0.2444, 0.1594, 0.1439]  # LR 1e-2, frozen, 120 classes
GUIDE_HEALTHY = [0.9131, 0.9200, 0.9250, 0.9280, 0.9300, 0.9312]  # LR 1e-3 ... 93.00, 93.12


def test_guide_collapse_is_pruned_by_its_third_epoch() -> None:
    # "Training got progressively worse": training loss does not fall while val accuracy sinks.
    epochs = curve(GUIDE_COLLAPSE, losses=[2.9, 3.3, 3.7, 3.8])
    assert first_pruned_epoch(epochs, 120) == (3, "collapse")


def test_falling_val_accuracy_with_falling_training_loss_is_overfitting_not_collapse() -> None:
    epochs = curve(GUIDE_COLLAPSE, losses=[2.9, 2.0, 1.2, 0.8])
    assert first_pruned_epoch(epochs, 120) is None


def test_guide_healthy_curve_is_never_pruned() -> None:
    assert first_pruned_epoch(curve(GUIDE_HEALTHY), 120) is None


def test_noisy_but_rising_curve_is_never_pruned() -> None:
    noisy = [0.40, 0.55, 0.48, 0.62, 0.57, 0.70, 0.64, 0.74]
    assert first_pruned_epoch(curve(noisy, losses=[1.5] * 8), 6) is None


def test_slow_starter_that_improves_is_never_pruned() -> None:
    slow = [0.012, 0.025, 0.040, 0.075, 0.15, 0.30]  # 120 classes: below 5.8% for 3 epochs
    assert first_pruned_epoch(curve(slow), 120) is None


def test_wrong_preprocessing_stuck_near_chance_is_pruned() -> None:
    # The guide's attempt 1: val 4.84% at epoch 1 with 120 classes, then not learning.
    stuck = [0.0484, 0.0470, 0.0490, 0.0480]
    assert first_pruned_epoch(curve(stuck), 120) == (2, "chance")


def test_chance_rule_scales_with_the_number_of_classes() -> None:
    # Six classes: 17% is chance level and 0.5 points is not learning; 40% is well above it.
    assert first_pruned_epoch(curve([0.170, 0.175, 0.170]), 6) == (2, "chance")
    assert first_pruned_epoch(curve([0.40, 0.40, 0.41]), 6) is None


def test_unfreeze_shock_is_pruned_on_the_first_fine_tune_epoch() -> None:
    # Frozen baseline ~93.7%, then BatchNorm unfrozen: the first fine-tune epoch drops.
    epochs = curve([0.930, 0.937, 0.80, 0.85], phases=[1, 1, 2, 2])
    assert first_pruned_epoch(epochs, 120, unfreezing_phases=[2]) == (3, "unfreeze_shock")
    # A phase that unfreezes nothing is not "unfreezing": no shock rule there.
    assert first_pruned_epoch(epochs, 120, unfreezing_phases=[]) is None


def test_small_dip_after_unfreezing_is_healthy() -> None:
    epochs = curve([0.930, 0.937, 0.925, 0.940, 0.945], phases=[1, 1, 2, 2, 2])
    assert first_pruned_epoch(epochs, 120, unfreezing_phases=[2]) is None


def test_non_finite_values_are_pruned_as_nan_at_once() -> None:
    for bad in (math.nan, math.inf):
        epochs = [*curve([0.5, 0.6]), EpochView(3, 1, bad, 0.6, 1.0)]
        assert first_pruned_epoch(epochs, 10) == (3, "nan")
    assert collapse_reason([EpochView(1, 1, 1.0, math.nan)], num_classes=10) == "nan"


def test_thresholds_are_per_study_settings() -> None:
    mild_fall = curve([0.60, 0.50, 0.48, 0.47], losses=[1.0, 1.0, 1.0, 1.0])
    # Lost 20-25% of the gain above chance: healthy by default, a collapse for a strict study.
    assert first_pruned_epoch(mild_fall, 10) is None
    strict = CollapseRules(collapse_drop=0.15)
    assert first_pruned_epoch(mild_fall, 10, rules=strict) == (3, "collapse")
    patient = CollapseRules(collapse_patience=3)
    assert first_pruned_epoch(
        curve(GUIDE_COLLAPSE, losses=[2.9, 3.3, 3.7, 3.8]), 120, rules=patient
    ) == (
        4,
        "collapse",
    )


@pytest.mark.parametrize(
    "bad",
    [
        {"collapse_drop": 0.0},
        {"shock_drop": 1.5},
        {"chance_grace_epochs": 0},
        {"collapse_loss_fall": -0.1},
    ],
)
def test_invalid_thresholds_are_rejected_with_their_name(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        CollapseRules(**bad)  # type: ignore[arg-type]


def _report(trial: optuna.Trial, accuracies: Sequence[float]) -> None:
    for epoch, accuracy in enumerate(accuracies, start=1):
        trial.report(accuracy, step=epoch)


def _frozen(study: optuna.Study, number: int) -> optuna.trial.FrozenTrial:
    return next(t for t in study.get_trials(deepcopy=False) if t.number == number)


def test_the_studys_own_optuna_pruner_decides_after_the_collapse_rules() -> None:
    study = optuna.create_study(
        direction="maximize",
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0),
    )
    for _ in range(2):
        good = study.ask()
        _report(good, [0.8, 0.85, 0.9])
        study.tell(good, 0.9)
    # Healthy by the collapse rules but far below the other trials: the median pruner's call,
    # recorded under its name.
    weak = study.ask()
    _report(weak, [0.3, 0.32])
    assert collapse_reason(curve([0.3, 0.32]), num_classes=10) is None
    assert optuna_reason(study, _frozen(study, weak.number)) == "median"
    # A trial as good as the others continues.
    fine = study.ask()
    _report(fine, [0.8, 0.86])
    assert optuna_reason(study, _frozen(study, fine.number)) is None
    # A trial with no reported epoch yet is never asked about.
    assert optuna_reason(study, _frozen(study, study.ask().number)) is None
    assert {t.state for t in study.get_trials()} == {TrialState.COMPLETE, TrialState.RUNNING}


def test_pruner_names_are_the_reasons_users_filter_on() -> None:
    assert pruner_name(optuna.pruners.MedianPruner()) == "median"
    assert pruner_name(optuna.pruners.HyperbandPruner()) == "hyperband"


def test_nan_is_decided_before_the_number_of_classes_is_known() -> None:
    # The worker reports its first epoch only after loading the data, but a rule that needs
    # chance must never hide a non-finite value.
    assert collapse_reason([EpochView(1, 1, math.nan, 0.5, 1.0)], num_classes=0) == "nan"
    assert collapse_reason(curve([0.1, 0.1]), num_classes=0) is None
