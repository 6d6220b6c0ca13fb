"""The epoch window, the one TensorFlow-free type for which of a config's epochs a run trains."""

from __future__ import annotations

from pathlib import Path

from trainers.config.schema import TrainConfig
from trainers.fit.window import EpochWindow


def test_a_window_plans_only_the_epochs_it_may_train() -> None:
    config = TrainConfig.from_dict(
        {
            "data": {"source": "synthetic:target", "image_size": 32},
            "model": {"backbone": "MobileNetV3Small", "weights": None},
            "phases": [
                {"epochs": 2, "learning_rate": 1e-3},
                {"epochs": 3, "learning_rate": 1e-5, "unfreeze_blocks": 1},
            ],
        }
    )
    # What an epoch budget keeps for a running trial: its window, within its config.
    weights = Path("w.weights.h5")
    assert EpochWindow().epochs_of(config) == 5
    assert EpochWindow(until_epoch=2).epochs_of(config) == 2
    assert EpochWindow(after_epoch=2, until_epoch=9, initial_weights=weights).epochs_of(config) == 3
    assert EpochWindow(after_epoch=5, until_epoch=9, initial_weights=weights).epochs_of(config) == 0
