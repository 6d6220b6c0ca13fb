"""MLflow params of a config (flattened fields plus the units the job unfreezes), and where a
new experiment keeps its artifacts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from trainers.tracking import artifact_location, config_params

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


def test_a_sqlite_store_keeps_artifacts_beside_it_one_folder_per_experiment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "stores" / "mlflow.db"
    assert artifact_location(f"sqlite:///{store}", "effnet_b4") == str(
        tmp_path / "stores" / "mlartifacts" / "effnet_b4"
    )
    # A relative store is relative to the working folder; a name is made a safe folder name.
    monkeypatch.chdir(tmp_path)
    assert artifact_location("sqlite:///mlflow.db?timeout=30", "my study/v2") == str(
        tmp_path / "mlartifacts" / "my_study_v2"
    )
    assert artifact_location("sqlite:///mlflow.db", "..") == str(
        tmp_path / "mlartifacts" / "experiment"
    )


@pytest.mark.parametrize(
    "uri",
    [
        "http://127.0.0.1:5000",  # the server applies its own artifact root
        "https://user:secret@mlflow.example.com",
        "file:///srv/mlruns",  # a file store keeps artifacts in its own folder
        "postgresql://user@db/mlflow",
    ],
)
def test_servers_and_other_stores_decide_for_themselves(uri: str) -> None:
    assert artifact_location(uri, "effnet_b4") is None
