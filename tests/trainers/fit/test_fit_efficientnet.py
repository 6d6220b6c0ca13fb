"""EfficientNet fine-tuning phases from a weights file: what freezing keeps and what it trains.

Its own file (split from test_fit.py) because its model is the slowest to build: the two test
processes can then run it beside the other trainer tests.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import pytest

from trainers.config.schema import TrainConfig
from trainers.fit.loop import FitResult, fit
from trainers.model.backbones import build_backbone, get_backbone

pytestmark = pytest.mark.slow


def _quiet(_: str) -> None:
    pass


class _BackboneSnapshots(keras.callbacks.Callback):
    """Copies every backbone variable at the end of every epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.epochs: list[dict[str, np.ndarray]] = []

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        backbone = next(layer for layer in self.model.layers if isinstance(layer, keras.Model))
        self.epochs.append({v.path: v.numpy().copy() for v in backbone.weights})


@pytest.fixture(scope="module")
def efficientnet_phases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """B0 at 32 px from a weights file: frozen, then BN frozen, then BN unfrozen (1 epoch each)."""
    keras.utils.set_random_seed(123)
    backbone = build_backbone(get_backbone("EfficientNetB0"), image_size=32, weights=None)
    weights_file = tmp_path_factory.mktemp("weights") / "b0.weights.h5"
    backbone.save_weights(weights_file)
    start = {v.path: v.numpy().copy() for v in backbone.weights}
    raw = {
        "data": {
            "source": "synthetic:target",
            "image_size": 32,
            "synthetic": {"classes": 3, "images_per_class": 16},
        },
        "model": {"backbone": "EfficientNetB0", "weights": str(weights_file)},
        "phases": [
            {"epochs": 1, "learning_rate": 1e-3},
            {"epochs": 1, "learning_rate": 1e-2, "unfreeze_blocks": 3, "freeze_batchnorm": True},
            {"epochs": 1, "learning_rate": 1e-2, "unfreeze_blocks": 3, "freeze_batchnorm": False},
        ],
        "batch_size": 8,
    }
    snapshots = _BackboneSnapshots()
    result = fit(TrainConfig.from_dict(raw), callbacks=[snapshots], log=_quiet)
    units = {unit.name: unit.layer_names for unit in get_backbone_units(result)}
    return {"start": start, "epochs": snapshots.epochs, "units": units}


def get_backbone_units(result: FitResult) -> Any:
    from trainers.model.backbones import group_layers_into_units

    backbone = next(layer for layer in result.model.layers if isinstance(layer, keras.Model))
    return group_layers_into_units(
        get_backbone("EfficientNetB0"), [layer.name for layer in backbone.layers]
    )


def _layer(path: str) -> str:
    return path.split("/")[-2]


def _changed(before: dict[str, np.ndarray], after: dict[str, np.ndarray]) -> set[str]:
    return {path for path in before if not np.array_equal(before[path], after[path])}


def test_file_weights_are_loaded_and_frozen_phase_keeps_backbone_bit_identical(
    efficientnet_phases: dict[str, Any],
) -> None:
    start = list(efficientnet_phases["start"].values())
    after_frozen = list(efficientnet_phases["epochs"][0].values())
    # Variables compare in order: the second model's auto-generated layer names differ.
    assert len(start) == len(after_frozen) == 312
    # Epoch 1 trained only the head: every backbone weight and statistic is bit-identical
    # to the weights file, which also proves the file was loaded.
    assert all(np.array_equal(a, b) for a, b in zip(start, after_frozen, strict=True))


def test_freeze_batchnorm_keeps_moving_statistics_while_blocks_train(
    efficientnet_phases: dict[str, Any],
) -> None:
    before, after = efficientnet_phases["epochs"][0], efficientnet_phases["epochs"][1]
    top_units = {
        name
        for unit in ("top", "block7a", "block6d")
        for name in efficientnet_phases["units"][unit]
    }
    changed_layers = {_layer(path) for path in _changed(before, after)}
    # The fine-tune epoch changed convolutions in the three unfrozen units only...
    assert {"top_conv", "block7a_project_conv", "block6d_expand_conv"} <= changed_layers
    assert changed_layers <= top_units
    # ...and no BatchNorm layer moved: not gamma/beta, not the moving mean/variance.
    assert not any(layer.endswith("bn") for layer in changed_layers)


def test_unfrozen_batchnorm_does_update_its_statistics(efficientnet_phases: dict[str, Any]) -> None:
    before, after = efficientnet_phases["epochs"][1], efficientnet_phases["epochs"][2]
    changed = _changed(before, after)
    moving = {path for path in changed if "moving_" in path}
    # The contrast case: with freeze_batchnorm off, top_bn's statistics follow the batches.
    assert any(_layer(path) == "top_bn" for path in moving)
    # Still nothing below the three unfrozen units moved.
    top_units = {
        name
        for unit in ("top", "block7a", "block6d")
        for name in efficientnet_phases["units"][unit]
    }
    assert {_layer(path) for path in changed} <= top_units
