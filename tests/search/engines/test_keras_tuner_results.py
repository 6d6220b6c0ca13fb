"""What the KerasTuner engine tells its oracle, and how it plans Hyperband's rounds."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState, create_trial

from search.engines.keras_tuner import FixedValuesSampler
from search.engines.oracle_results import oracle_result, recorded_result
from search.engines.rounds import HyperbandRound, hyperband_round, round_plan
from search.trial.files import BEST_WEIGHTS
from search.vocabulary import Reason, TrialAttr
from trainers.errors import TrainerInputError
from trainers.fit.window import EpochWindow


def _trial(
    number: int,
    state: TrialState,
    *,
    value: float | None = None,
    curve: dict[int, float] | None = None,
    **attrs: object,
) -> FrozenTrial:
    trial = create_trial(
        state=state,
        value=value,
        intermediate_values=curve or {},
        user_attrs={TrialAttr.KERAS_TUNER_TRIAL.value: f"{number:04d}", **attrs},
    )
    trial.number = number
    return trial


def test_a_round_is_read_from_hyperbands_values() -> None:
    # Oracles without rounds (random, bayesian) train the whole config.
    assert hyperband_round({"head_lr": 0.01}) is None
    # A first-round trial trains up to its round's epochs.
    first = {"tuner/epochs": 2, "tuner/initial_epoch": 0, "tuner/bracket": 1, "tuner/round": 0}
    assert hyperband_round(first) == HyperbandRound(epochs=2)
    assert HyperbandRound(epochs=2).window(None) == EpochWindow(until_epoch=2)
    # A continuation trains on after the epochs its earlier trial trained, from its weights.
    later = {**first, "tuner/epochs": 5, "tuner/initial_epoch": 2, "tuner/trial_id": "0003"}
    continuation = hyperband_round(later)
    assert continuation == HyperbandRound(epochs=5, initial_epoch=2, trial_id="0003")
    weights = Path("0003.weights.h5")
    assert continuation.window(weights) == EpochWindow(2, 5, weights)
    # Without them it trains from the start.
    assert continuation.window(None) == EpochWindow(until_epoch=5)


def test_a_continuation_starts_from_its_earlier_trials_weights(tmp_path: Path) -> None:
    earlier = _trial(3, TrialState.COMPLETE, value=0.6)
    (tmp_path / "trial-0003").mkdir()
    (tmp_path / "trial-0003" / BEST_WEIGHTS).write_bytes(b"weights")
    round_ = HyperbandRound(epochs=5, initial_epoch=2, trial_id="0003")
    planned = round_plan(round_, [earlier], tmp_path)
    # It loads the earlier trial's best-epoch weights and trains epochs 3 to 5.
    assert planned.window == EpochWindow(
        after_epoch=2, until_epoch=5, initial_weights=tmp_path / "trial-0003" / BEST_WEIGHTS
    )
    assert planned.continued == 3
    # With nothing left to train it would be closed with the earlier trial's result.
    assert planned.inherited is not None and planned.inherited.state == TrialState.COMPLETE
    assert planned.inherited.value == 0.6 and planned.inherited_best == 0.6


def test_a_continuation_of_a_pruned_trial_inherits_the_prune(tmp_path: Path) -> None:
    earlier = _trial(
        1, TrialState.PRUNED, curve={1: 0.4, 2: 0.3}, prune_reason=Reason.COLLAPSE.value
    )
    (tmp_path / "trial-0001").mkdir()
    (tmp_path / "trial-0001" / BEST_WEIGHTS).write_bytes(b"weights")
    planned = round_plan(HyperbandRound(3, 2, "0001"), [earlier], tmp_path)
    # Pruned stays pruned, with its reason; its best epoch so far is what the oracle hears.
    assert planned.inherited is not None and planned.inherited.state == TrialState.PRUNED
    assert planned.inherited.reason == Reason.COLLAPSE and planned.inherited_best == 0.4


def test_a_continuation_whose_weights_are_gone_trains_from_the_start(tmp_path: Path) -> None:
    round_ = HyperbandRound(epochs=5, initial_epoch=2, trial_id="0003")
    from_start = EpochWindow(until_epoch=5)
    # No weights file, or an earlier trial that never finished: epochs 1 to 5, from scratch.
    assert round_plan(round_, [_trial(3, TrialState.COMPLETE, value=0.6)], tmp_path).window == (
        from_start
    )
    failed = _trial(3, TrialState.FAIL)
    (tmp_path / "trial-0003").mkdir()
    (tmp_path / "trial-0003" / BEST_WEIGHTS).write_bytes(b"weights")
    planned = round_plan(round_, [failed], tmp_path)
    assert planned.window == from_start and planned.continued is None


@pytest.mark.parametrize(
    ("state", "reason", "value", "told"),
    [
        (TrialState.COMPLETE, "", 0.7, ("COMPLETED", 0.7)),
        # A pruned trial is scored by its best epoch so far, as an EarlyStopping callback.
        (TrialState.PRUNED, Reason.UNFREEZE_SHOCK, 0.5, ("COMPLETED", 0.5)),
        # Out of GPU memory, or no finite epoch: nothing to score.
        (TrialState.PRUNED, Reason.GPU_OOM, 0.5, ("FAILED", None)),
        (TrialState.PRUNED, Reason.NAN, None, ("FAILED", None)),
        # A crash is INVALID (the oracle runs it again); bad input FAILED.
        (TrialState.FAIL, Reason.WORKER_DIED, None, ("INVALID", None)),
        (TrialState.FAIL, Reason.HOST_OOM, None, ("INVALID", None)),
        (TrialState.FAIL, Reason.INPUT, None, ("FAILED", None)),
    ],
)
def test_what_the_oracle_is_told(
    state: TrialState, reason: str, value: float | None, told: tuple[str, float | None]
) -> None:
    result = oracle_result(state, reason, value, "detail")
    assert (result.status, result.value) == told


def test_a_recorded_result_is_told_once_and_a_crash_runs_again() -> None:
    # A finished trial's result is what the oracle hears when it hands the trial out again.
    complete = recorded_result(_trial(0, TrialState.COMPLETE, value=0.8))
    assert complete is not None and (complete.status, complete.value) == ("COMPLETED", 0.8)
    pruned = recorded_result(
        _trial(1, TrialState.PRUNED, curve={1: 0.2, 2: 0.5}, prune_reason="asha")
    )
    assert pruned is not None and (pruned.status, pruned.value) == ("COMPLETED", 0.5)
    failed = recorded_result(_trial(2, TrialState.FAIL, fail_reason=Reason.INPUT.value))
    assert failed is not None and failed.status == "FAILED"
    # A trial killed with its coordinator (no reason recorded), crashed or interrupted runs
    # again: nothing to tell.
    for reason in (None, Reason.WORKER_DIED, Reason.INTERRUPTED):
        attrs = {} if reason is None else {"fail_reason": reason.value}
        assert recorded_result(_trial(3, TrialState.FAIL, **attrs)) is None


def test_the_fixed_values_sampler_answers_only_what_the_oracle_chose() -> None:
    sampler = FixedValuesSampler()
    study = optuna.create_study(sampler=sampler)
    sampler.values = {"head_lr": 0.01}
    trial = study.ask()
    # The Optuna trial records exactly the oracle's value ...
    assert trial.suggest_float("head_lr", 1e-4, 1e-1, log=True) == 0.01
    assert trial.distributions["head_lr"] == FloatDistribution(1e-4, 1e-1, log=True)
    # ... and a parameter the oracle did not choose is an error, never a silent draw.
    with pytest.raises(TrainerInputError, match="'ft_lr_sgd'"):
        trial.suggest_float("ft_lr_sgd", 1e-4, 1e-1, log=True)
