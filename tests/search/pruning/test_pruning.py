"""Collapse rules on scripted curves: the seed guide's failures are caught, healthy runs never,
and a dip within the noise of the validation set is not a failure."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import optuna
import pytest
from optuna.pruners import SuccessiveHalvingPruner
from optuna.trial import TrialState

from search.pruning.collapse import CollapseRules, EpochView, PruneDecision, find_collapse
from search.pruning.decision import decide_epoch, pruner_decision, pruner_name
from search.pruning.noise import Noise
from search.study.registry import get_study_spec


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
        decision = find_collapse(epochs[:end], num_classes=num_classes, **kwargs)  # type: ignore[arg-type]
        if decision is not None:
            return end, decision.reason
    return None


GUIDE_COLLAPSE = [0.4310, 0.2444, 0.1594, 0.1439]  # LR 1e-2, frozen, 120 classes
GUIDE_HEALTHY = [0.9131, 0.9200, 0.9250, 0.9280, 0.9300, 0.9312]  # LR 1e-3 ... 93.00, 93.12
#: The guide's validation set: Stanford Dogs' 120 breeds at 20 images each.
GUIDE_VALIDATION = 2400

#: Every guide test runs with the guide's validation count (the noise test on) and without one
#: (a trial recorded before counts were kept): the rules must judge the guide's curves alike.
noise_known_or_not = pytest.mark.parametrize("validation_images", [GUIDE_VALIDATION, None])


@noise_known_or_not
def test_guide_collapse_is_pruned_by_its_third_epoch(validation_images: int | None) -> None:
    # "Training got progressively worse": training loss does not fall while val accuracy sinks.
    epochs = curve(GUIDE_COLLAPSE, losses=[2.9, 3.3, 3.7, 3.8])
    pruned = first_pruned_epoch(epochs, 120, validation_images=validation_images)
    assert pruned == (3, "collapse")


@noise_known_or_not
def test_falling_val_accuracy_with_falling_training_loss_is_overfitting_not_collapse(
    validation_images: int | None,
) -> None:
    epochs = curve(GUIDE_COLLAPSE, losses=[2.9, 2.0, 1.2, 0.8])
    assert first_pruned_epoch(epochs, 120, validation_images=validation_images) is None


@noise_known_or_not
def test_guide_healthy_curve_is_never_pruned(validation_images: int | None) -> None:
    epochs = curve(GUIDE_HEALTHY)
    assert first_pruned_epoch(epochs, 120, validation_images=validation_images) is None


@noise_known_or_not
def test_noisy_but_rising_curve_is_never_pruned(validation_images: int | None) -> None:
    noisy = [0.40, 0.55, 0.48, 0.62, 0.57, 0.70, 0.64, 0.74]
    epochs = curve(noisy, losses=[1.5] * 8)
    assert first_pruned_epoch(epochs, 6, validation_images=validation_images) is None


@noise_known_or_not
def test_slow_starter_that_improves_is_never_pruned(validation_images: int | None) -> None:
    slow = [0.012, 0.025, 0.040, 0.075, 0.15, 0.30]  # 120 classes: below 5.8% for 3 epochs
    assert first_pruned_epoch(curve(slow), 120, validation_images=validation_images) is None


@noise_known_or_not
def test_wrong_preprocessing_stuck_near_chance_is_pruned(validation_images: int | None) -> None:
    # The guide's attempt 1: val 4.84% at epoch 1 with 120 classes, then not learning.
    stuck = [0.0484, 0.0470, 0.0490, 0.0480]
    pruned = first_pruned_epoch(curve(stuck), 120, validation_images=validation_images)
    assert pruned == (2, "chance")


def test_chance_rule_scales_with_the_number_of_classes() -> None:
    # Six classes: 17% is chance level and 0.5 points is not learning; 40% is well above it.
    assert first_pruned_epoch(curve([0.170, 0.175, 0.170]), 6) == (2, "chance")
    assert first_pruned_epoch(curve([0.40, 0.40, 0.41]), 6) is None
    # With 600 validation images, 17% is still measurably inside the band (below 20.8%).
    at_chance = curve([0.170, 0.175, 0.170])
    assert first_pruned_epoch(at_chance, 6, validation_images=600) == (2, "chance")


@noise_known_or_not
def test_batchnorm_unfrozen_at_a_high_rate_is_pruned_on_the_first_fine_tune_epoch(
    validation_images: int | None,
) -> None:
    # Frozen baseline ~93.7%, then BatchNorm unfrozen at a high rate: back at chance at once.
    epochs = curve([0.930, 0.937, 0.009, 0.010], phases=[1, 1, 2, 2])
    pruned = first_pruned_epoch(
        epochs, 120, validation_images=validation_images, unfreezing_phases=[2]
    )
    assert pruned == (3, "unfreeze_shock")
    # A phase that unfreezes nothing is not "unfreezing": no shock rule there.
    assert first_pruned_epoch(epochs[:3], 120, validation_images=validation_images) is None


def test_a_wrecked_first_fine_tune_epoch_is_pruned_at_once_even_on_few_images() -> None:
    # The demo's BatchNorm unfrozen at 1e-2, on its 80 validation images: even less its noise
    # (±12 points), the drop is 71% of the 76 points the head gained above chance.
    demo = curve([0.800, 0.863, 0.200, 0.100], phases=[1, 1, 2, 2])
    decision = find_collapse(demo[:3], num_classes=10, validation_images=80, unfreezing_phases=[2])
    assert decision is not None and decision.reason == "unfreeze_shock"
    assert decision.evidence == (
        "best 0.863 → 0.200 at epoch 3 (−66.3 pts; noise ±12.0 pts; lost ≥71% of the gain)"
    )
    # A low head that drops most of its small gain, but within noise, is not wrecked: it waits
    # for the next epoch (the far task's fine-tuning often starts this way, then wins).
    low = curve([0.20, 0.20, 0.12, 0.60], phases=[1, 1, 2, 2])
    assert first_pruned_epoch(low, 10, validation_images=240, unfreezing_phases=[2]) is None


def test_a_shock_that_does_not_recover_is_pruned_after_the_patience() -> None:
    # Lost 14 points at the first fine-tune epoch, not near chance: wait one epoch. Still far
    # below the frozen best then: pruned. Recovered instead: it goes on.
    stays_down = curve([0.930, 0.937, 0.80, 0.82, 0.83], phases=[1, 1, 2, 2, 2])
    recovers = curve([0.930, 0.937, 0.80, 0.93, 0.95], phases=[1, 1, 2, 2, 2])
    settings = {"validation_images": GUIDE_VALIDATION, "unfreezing_phases": [2]}
    assert first_pruned_epoch(stays_down, 120, **settings) == (4, "unfreeze_shock")
    assert first_pruned_epoch(recovers, 120, **settings) is None
    # Without a validation count, the rule as it was: the first unfrozen epoch alone decides.
    assert first_pruned_epoch(recovers, 120, unfreezing_phases=[2]) == (3, "unfreeze_shock")
    # A study that wants that back with the noise test on sets no patience.
    impatient = CollapseRules(shock_patience=0)
    assert first_pruned_epoch(recovers, 120, rules=impatient, **settings) == (3, "unfreeze_shock")


@noise_known_or_not
def test_small_dip_after_unfreezing_is_healthy(validation_images: int | None) -> None:
    epochs = curve([0.930, 0.937, 0.925, 0.940, 0.945], phases=[1, 1, 2, 2, 2])
    pruned = first_pruned_epoch(
        epochs, 120, validation_images=validation_images, unfreezing_phases=[2]
    )
    assert pruned is None


# -- low accuracy: the tasks where fine-tuning decides, and where noise is largest ---------------


def test_noise_level_dips_at_low_accuracy_go_on() -> None:
    # The trials: 10 classes, 360 validation images, RandAugment on.
    shock_dip = curve([0.130, 0.150, 0.142, 0.30, 0.55], phases=[1, 1, 2, 2, 2])
    head_dip = curve([0.150, 0.119, 0.125, 0.14], losses=[2.2, 2.2, 2.2, 2.2])
    for epochs in (shock_dip, head_dip):
        pruned = first_pruned_epoch(epochs, 10, validation_images=360, unfreezing_phases=[2])
        assert pruned is None
    # Before the noise test, both were pruned for 3 to 11 images of 360.
    assert first_pruned_epoch(shock_dip, 10, unfreezing_phases=[2]) == (3, "unfreeze_shock")
    assert first_pruned_epoch(head_dip, 10) == (3, "collapse")


def test_a_low_head_that_fine_tuning_may_lift_is_not_chance() -> None:
    # 13% with 10 classes on 360 images: its upper bound (16.6%) is above the chance band
    # (14.5%), so it is not known to be stuck there.
    low_head = curve([0.130, 0.125, 0.130], losses=[2.3, 2.3, 2.3])
    assert first_pruned_epoch(low_head, 10, validation_images=360) is None
    assert first_pruned_epoch(low_head, 10) == (2, "chance")
    # At chance on the same images, it is.
    at_chance = curve([0.100, 0.095, 0.100], losses=[2.3, 2.3, 2.3])
    assert first_pruned_epoch(at_chance, 10, validation_images=360) == (2, "chance")


def test_real_failures_at_low_accuracy_are_still_pruned() -> None:
    ten = {"validation_images": 360, "unfreezing_phases": [2]}
    collapse = curve([0.40, 0.20, 0.15, 0.14], losses=[1.8, 2.2, 2.3, 2.3])
    assert first_pruned_epoch(collapse, 10, **ten) == (3, "collapse")
    shock = curve([0.35, 0.40, 0.22, 0.24], phases=[1, 1, 2, 2])
    assert first_pruned_epoch(shock, 10, **ten) == (4, "unfreeze_shock")
    wrecked = curve([0.35, 0.40, 0.08], phases=[1, 1, 2])
    assert first_pruned_epoch(wrecked, 10, **ten) == (3, "unfreeze_shock")


def test_120_classes_at_one_to_ten_percent() -> None:
    dogs = {"validation_images": GUIDE_VALIDATION, "unfreezing_phases": [2]}
    # A dip of one point at the first fine-tune epoch is within noise (±1.7 points).
    dip = curve([0.080, 0.100, 0.090, 0.12], phases=[1, 1, 2, 2])
    assert first_pruned_epoch(dip, 120, **dogs) is None
    assert first_pruned_epoch(dip, 120, unfreezing_phases=[2]) == (3, "unfreeze_shock")
    # 5.5% and not improving: below the band's 5.8%, but not measurably so.
    low = curve([0.055, 0.052, 0.054], losses=[4.7, 4.7, 4.7])
    assert first_pruned_epoch(low, 120, **dogs) is None
    # A real collapse from 10% is still pruned at its third epoch.
    collapse = curve([0.10, 0.05, 0.03], losses=[4.0, 4.4, 4.6])
    assert first_pruned_epoch(collapse, 120, **dogs) == (3, "collapse")


def test_noise_is_the_binomial_error_of_the_difference() -> None:
    # sqrt(p1(1-p1)/n + p2(1-p2)/n), p smoothed to (k+1)/(n+2), times z.
    assert Noise(360, 2.0).of_difference(0.150, 0.142) == pytest.approx(0.0528, abs=5e-4)
    assert Noise(2400, 2.0).of_difference(0.4310, 0.2444) == pytest.approx(0.0268, abs=5e-4)
    assert Noise(None, 2.0).of_difference(0.5, 0.1) == 0.0
    # A perfect score still carries noise.
    assert Noise(100, 2.0).of_accuracy(1.0) > 0.0


def test_the_evidence_holds_the_numbers_behind_the_decision() -> None:
    shock = curve([0.80, 0.85, 0.55, 0.56], phases=[1, 1, 2, 2])
    decision = find_collapse(shock, num_classes=10, validation_images=360, unfreezing_phases=[2])
    assert decision is not None and decision.reason == "unfreeze_shock"
    assert (
        decision.evidence == "best 0.850 → 0.550, 0.560 at epochs 3–4 (−29.0 pts; noise ±6.5 pts)"
    )
    assert str(decision) == f"unfreeze_shock: {decision.evidence}"
    collapse = curve(GUIDE_COLLAPSE[:3], losses=[2.9, 3.3, 3.7])
    decision = find_collapse(collapse, num_classes=120, validation_images=GUIDE_VALIDATION)
    assert decision is not None
    assert decision.evidence == (
        "peak 0.431 at epoch 1 → 0.244, 0.159 at epochs 2–3 (−27.2 pts; noise ±2.5 pts); "
        "loss 2.900 → 3.700"
    )
    stuck = find_collapse(curve([0.0484, 0.0470]), num_classes=120, validation_images=2400)
    assert stuck is not None
    assert (
        stuck.evidence == "best 0.048 by epoch 2, chance 0.008 (band below 0.058; noise ±0.9 pts)"
    )
    unknown = find_collapse(curve([0.0484, 0.0470]), num_classes=120)
    assert unknown is not None and unknown.evidence.endswith("noise unknown)")


def test_non_finite_values_are_pruned_as_nan_at_once() -> None:
    for bad in (math.nan, math.inf):
        epochs = [*curve([0.5, 0.6]), EpochView(3, 1, bad, 0.6, 1.0)]
        assert first_pruned_epoch(epochs, 10) == (3, "nan")
    decision = find_collapse([EpochView(1, 1, 1.0, math.nan)], num_classes=10)
    assert decision is not None
    assert (decision.reason, decision.evidence) == ("nan", "val_accuracy nan at epoch 1")


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
        {"shock_patience": -1},
        {"shock_wreck_drop": 1.0},
        {"noise_z": -1.0},
    ],
)
def test_invalid_thresholds_are_rejected_with_their_name(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        CollapseRules(**bad)  # type: ignore[arg-type]


def _report(trial: optuna.Trial, accuracies: Sequence[float]) -> None:
    for epoch, accuracy in enumerate(accuracies, start=1):
        trial.report(accuracy, step=epoch)


def _latest(accuracies: Sequence[float]) -> EpochView:
    return curve(accuracies)[-1]


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
    assert find_collapse(curve([0.3, 0.32]), num_classes=10) is None
    decision = pruner_decision(weak, _latest([0.3, 0.32]))
    assert decision is not None
    assert (decision.reason, decision.evidence) == ("median", "0.320 at epoch 2")
    # A trial as good as the others continues.
    fine = study.ask()
    _report(fine, [0.8, 0.86])
    assert pruner_decision(fine, _latest([0.8, 0.86])) is None
    # A trial with no reported epoch yet is never pruned.
    assert pruner_decision(study.ask(), _latest([0.1])) is None
    assert {t.state for t in study.get_trials()} == {TrialState.COMPLETE, TrialState.RUNNING}


def test_the_per_epoch_decision_never_stores_a_non_finite_value_and_rules_come_first() -> None:
    study = optuna.create_study(
        direction="maximize",
        pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0),
    )
    done = study.ask()
    _report(done, [0.9, 0.9])
    study.tell(done, 0.9)
    trial = study.ask()
    # nan: decided by the rules, nothing reported.
    nan_epoch = EpochView(1, 1, math.nan, 0.5, 1.0)
    nan = find_collapse([nan_epoch], num_classes=10)
    assert nan is not None and decide_epoch(trial, nan_epoch, nan) == nan
    assert study.trials[trial.number].intermediate_values == {}
    # A collapse is reported, then wins over the pruner (which would also prune 0.2 < 0.9).
    collapse = PruneDecision("collapse", "evidence")
    assert decide_epoch(trial, _latest([0.2]), collapse) == collapse
    assert study.trials[trial.number].intermediate_values == {1: 0.2}
    # No collapse: the study's pruner, by name.
    decision = decide_epoch(trial, _latest([0.2, 0.25]), None)
    assert decision == PruneDecision("median", "0.250 at epoch 2")
    assert study.trials[trial.number].intermediate_values == {1: 0.2, 2: 0.25}
    # Without a study behind the trial: the rules alone.
    assert decide_epoch(None, _latest([0.2]), None) is None
    assert decide_epoch(None, _latest([0.2]), collapse) == collapse


def test_pruner_names_are_the_reasons_users_filter_on() -> None:
    assert pruner_name(optuna.pruners.MedianPruner()) == "median"
    assert pruner_name(optuna.pruners.SuccessiveHalvingPruner()) == "asha"
    assert pruner_name(optuna.pruners.HyperbandPruner()) == "hyperband"
    assert pruner_name(optuna.pruners.PercentilePruner(25.0)) == "percentile"


@pytest.mark.parametrize("name", ["asha", "hyperband"])
def test_multi_fidelity_rungs_start_after_every_head_phase(name: str) -> None:
    # The demo's warm-up is its longest head phase (3 epochs): the first rung is epoch 4, so a
    # head epoch is never compared with another trial's fine-tune epoch.
    spec = replace(get_study_spec("demo"), pruner=name)
    study = optuna.create_study(direction="maximize", pruner=spec.make_pruner())
    for _ in range(4):
        good = study.ask()
        for epoch, accuracy in enumerate([0.80, 0.85, 0.86, 0.90, 0.92, 0.93], start=1):
            good.report(accuracy, step=epoch)
            # Asked every epoch, as the coordinator does: that is when a trial enters a rung.
            assert pruner_decision(good, EpochView(epoch, 1, 1.0, accuracy)) is None
        study.tell(good, 0.93)
    weak = study.ask()
    for epoch, accuracy in enumerate([0.20, 0.21, 0.22], start=1):
        weak.report(accuracy, step=epoch)
        assert pruner_decision(weak, EpochView(epoch, 1, 1.0, accuracy)) is None, epoch
    weak.report(0.30, step=4)
    decision = pruner_decision(weak, EpochView(4, 2, 1.0, 0.30))
    assert decision is not None and (decision.reason, decision.evidence) == (
        name,
        "0.300 at epoch 4",
    )


def test_a_study_names_its_pruner_from_the_known_ones() -> None:
    demo = get_study_spec("demo")
    # The studies users run take the pruner bench.search_quality chose; smoke keeps the median.
    for name in ("demo", "effnet_b0", "effnet_b4"):
        assert isinstance(get_study_spec(name).make_pruner(), SuccessiveHalvingPruner), name
    assert isinstance(get_study_spec("smoke").make_pruner(), optuna.pruners.MedianPruner)
    assert isinstance(replace(demo, pruner="median").make_pruner(), optuna.pruners.MedianPruner)
    with pytest.raises(
        ValueError, match="unknown pruner 'bogus'; allowed: median, asha, hyperband"
    ):
        replace(demo, pruner="bogus")


def test_nan_is_decided_before_the_number_of_classes_is_known() -> None:
    # The worker reports its first epoch only after loading the data, but a rule that needs
    # chance must never hide a non-finite value.
    decision = find_collapse([EpochView(1, 1, math.nan, 0.5, 1.0)], num_classes=0)
    assert decision is not None and decision.reason == "nan"
    assert find_collapse(curve([0.1, 0.1]), num_classes=0) is None


# -- a fall after a good epoch keeps the best ------------------------------------------------------


def last_decision(epochs: list[EpochView], num_classes: int, **kwargs: object) -> PruneDecision:
    """The decision at the first epoch a rule fires (the test's curves all break one)."""
    pruned = first_pruned_epoch(epochs, num_classes, **kwargs)
    assert pruned is not None
    decision = find_collapse(epochs[: pruned[0]], num_classes=num_classes, **kwargs)  # type: ignore[arg-type]
    assert decision is not None
    return decision


@noise_known_or_not
def test_a_fall_after_a_good_epoch_keeps_its_best(validation_images: int | None) -> None:
    # The guide's collapse fell from 43%, far above chance with 120 classes: that epoch counts.
    guide = curve(GUIDE_COLLAPSE, losses=[2.9, 3.3, 3.7, 3.8])
    decision = last_decision(guide, 120, validation_images=validation_images)
    assert (decision.reason, decision.keeps_best) == ("collapse", True)
    # The guide's BatchNorm failure: a good head, wrecked at the first fine-tune epoch.
    wrecked = curve([0.80, 0.85, 0.02], phases=[1, 1, 2])
    decision = last_decision(
        wrecked, 120, validation_images=validation_images, unfreezing_phases=[2]
    )
    assert (decision.reason, decision.keeps_best) == ("unfreeze_shock", True)


def test_a_fall_from_near_chance_is_pruned() -> None:
    ten = {"validation_images": 2000, "unfreezing_phases": [2]}
    # 15% with 10 classes is above the chance band (14.5%) but not clearly, on 2,000 images.
    near = curve([0.15, 0.11, 0.10, 0.10], losses=[2.2, 2.3, 2.4, 2.4])
    decision = last_decision(near, 10, **ten)
    assert (decision.reason, decision.keeps_best) == ("collapse", False)
    # 18% is clearly above it: the same fall keeps its best.
    above = curve([0.18, 0.11, 0.10, 0.10], losses=[2.2, 2.3, 2.4, 2.4])
    assert last_decision(above, 10, **ten).keeps_best
    # The rules that say nothing was learned, or that the numbers broke, always prune.
    at_chance = curve([0.100, 0.095, 0.100], losses=[2.3, 2.3, 2.3])
    assert not last_decision(at_chance, 10, **ten).keeps_best
    nan = curve([0.6, math.nan])
    assert not last_decision(nan, 10, **ten).keeps_best
