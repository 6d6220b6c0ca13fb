"""MLflow params of a config: flattened fields plus the units the job unfreezes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from trainers.tracking import config_params

HEAD_PHASE = {"epochs": 2, "learning_rate": 3e-3}


def test_a_head_only_config_unfreezes_no_units(make_config: Callable[..., Any]) -> None:
    config = make_config(phases=[HEAD_PHASE])
    params = config_params(config)
    assert config.unfrozen_units == 0
    assert params["unfrozen_units"] == "0" and params["phases"] == "1"


def test_unfrozen_units_is_the_phase_2_unit_count(make_config: Callable[..., Any]) -> None:
    fine_tune = {"epochs": 1, "learning_rate": 1e-4, "unfreeze_blocks": 5}
    params = config_params(make_config(phases=[HEAD_PHASE, fine_tune]))
    assert params["unfrozen_units"] == "5" and params["phase2.unfreeze_blocks"] == "5"


def test_unfrozen_units_is_the_deepest_phase_not_the_last(
    make_config: Callable[..., Any],
) -> None:
    phases = [
        HEAD_PHASE,
        {"epochs": 1, "learning_rate": 1e-4, "unfreeze_blocks": 6},
        {"epochs": 1, "learning_rate": 1e-5, "unfreeze_blocks": 1},
    ]
    assert config_params(make_config(phases=phases))["unfrozen_units"] == "6"
