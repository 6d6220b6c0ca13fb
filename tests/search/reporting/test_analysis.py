"""search.reporting.analysis on an in-memory study: the sampled ladder step and the units it
unfroze."""

from __future__ import annotations

from typing import Any

import optuna
import pandas as pd
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from search.reporting.analysis import stopped_trials, strategy_table, trials_frame, unfrozen_units
from search.vocabulary import TrialAttr
from tests.conftest import small_config_dict
from trainers.config.schema import TrainConfig

HEAD_ONLY = [{"epochs": 2, "learning_rate": 3e-3}]


def _config_yaml(*fine_tune_units: int) -> str:
    phases = HEAD_ONLY + [
        {"epochs": 1, "learning_rate": 1e-4, "unfreeze_blocks": units} for units in fine_tune_units
    ]
    return TrainConfig.from_dict(small_config_dict(phases=phases)).to_yaml()


def _trial(
    params: dict[str, Any],
    value: float | None,
    config_yaml: str | None,
    state: TrialState = TrialState.COMPLETE,
    user_attrs: dict[str, Any] | None = None,
) -> optuna.trial.FrozenTrial:
    distributions = {
        name: CategoricalDistribution((True, False))
        if name == "freeze_bn"
        else IntDistribution(0, 8)
        for name in params
    }
    return create_trial(
        state=state,
        value=value,
        params=params,
        distributions=distributions,
        user_attrs=({} if config_yaml is None else {TrialAttr.CONFIG_YAML: config_yaml})
        | (user_attrs or {}),
    )


def _study() -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    # Level 1 of some ladder unfroze 2 units; level 0 is the linear probe.
    study.add_trial(_trial({"unfreeze_level": 1, "freeze_bn": True}, 0.9, _config_yaml(2)))
    study.add_trial(_trial({"unfreeze_level": 0}, 0.6, _config_yaml()))
    # A trial from before the rename: the ladder step was sampled as `unfreeze_blocks`.
    study.add_trial(_trial({"unfreeze_blocks": 3, "freeze_bn": False}, 0.8, _config_yaml(5)))
    # A trial that failed before its config was recorded.
    study.add_trial(_trial({"unfreeze_level": 2}, None, None, state=TrialState.FAIL))
    # A pruned trial, with the numbers behind the decision.
    evidence = "best 0.850 → 0.550, 0.560 at epochs 3–4 (−29.0 pts; noise ±6.5 pts)"
    pruned_attrs = {TrialAttr.PRUNE_REASON: "unfreeze_shock", TrialAttr.PRUNE_EVIDENCE: evidence}
    study.add_trial(
        _trial({"unfreeze_level": 2}, None, None, TrialState.PRUNED, user_attrs=pruned_attrs)
    )
    return study


def test_trials_frame_records_the_units_each_trial_unfroze() -> None:
    frame = trials_frame(_study())
    assert frame.loc[[0, 1, 2], "unfrozen_units"].tolist() == [2, 0, 5]
    assert frame.loc[3, "unfrozen_units"] is pd.NA
    assert frame.loc[3, "outcome"].startswith("FAIL")


def test_an_old_studys_unfreeze_blocks_parameter_shows_as_unfreeze_level() -> None:
    frame = trials_frame(_study())
    assert "unfreeze_blocks" not in frame.columns
    assert frame["unfreeze_level"].tolist() == [1, 0, 3, 2, 2]


def test_stopped_trials_show_their_reason_and_evidence() -> None:
    study = _study()
    # A fall after a good epoch: completed with that epoch's value, its reason kept.
    kept = {TrialAttr.STOP_REASON: "collapse", TrialAttr.STOP_EVIDENCE: "peak 0.700 at epoch 2"}
    study.add_trial(_trial({"unfreeze_level": 0}, 0.7, _config_yaml(), user_attrs=kept))
    frame = trials_frame(study)
    stopped = stopped_trials(frame)
    assert stopped.index.tolist() == [4, 5]
    assert stopped.loc[4, "outcome"] == "PRUNED: unfreeze_shock"
    assert stopped.loc[4, "evidence"].startswith("best 0.850 → 0.550, 0.560 at epochs 3–4")
    assert stopped.loc[5, "outcome"] == "COMPLETE (stopped: collapse)"
    assert stopped.loc[5, "evidence"] == "peak 0.700 at epoch 2"
    assert pd.isna(frame.loc[0, "evidence"])
    # It counts as completed where strategies are compared.
    assert strategy_table(frame).loc[(0, 0, "n/a (frozen)"), "count"] == 2


def test_the_deepest_phase_counts_not_the_last() -> None:
    study = optuna.create_study()
    study.add_trial(_trial({"unfreeze_level": 4}, 0.5, _config_yaml(4, 1)))
    assert trials_frame(study).loc[0, "unfrozen_units"] == 4


def test_strategy_table_groups_by_level_units_and_batchnorm() -> None:
    table = strategy_table(trials_frame(_study()))
    assert list(table.index.names) == ["unfreeze_level", "unfrozen_units", "freeze_bn"]
    # Best first; the failed trial is left out; a linear probe has no BatchNorm policy.
    assert list(table.index) == [(1, 2, True), (3, 5, False), (0, 0, "n/a (frozen)")]
    assert table["max"].tolist() == [0.9, 0.8, 0.6]
    assert table["count"].tolist() == [1, 1, 1]


def test_an_unreadable_recorded_config_leaves_the_cell_empty() -> None:
    broken = _trial({"unfreeze_level": 1}, 0.5, "phases: [")
    assert unfrozen_units(broken) is None
    assert unfrozen_units(_trial({"unfreeze_level": 1}, 0.5, None)) is None
