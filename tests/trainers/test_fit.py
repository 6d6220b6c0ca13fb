"""End-to-end fine-tuning runs on generated data: phases, freezing, reporting, stopping."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import small_config_dict
from trainers.backbones import build_backbone, get_backbone
from trainers.config import TrainConfig
from trainers.data import Datasets, load_datasets
from trainers.fit import FitResult, fit

pytestmark = pytest.mark.slow


def _quiet(_: str) -> None:
    pass


class _Reports:
    """A report hook that records its calls and can ask to stop at one epoch."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.calls: list[tuple[int, dict[str, float]]] = []
        self.stop_at = stop_at

    def __call__(self, epoch: int, metrics: Mapping[str, float]) -> str | None:
        self.calls.append((epoch, dict(metrics)))
        return "pruned: test asked to stop" if epoch == self.stop_at else None


@pytest.fixture(scope="module")
def two_phase() -> tuple[TrainConfig, FitResult, _Reports]:
    raw = small_config_dict(l2sp_alpha=0.01)
    raw["phases"][1]["schedule"] = "cosine"
    raw["phases"][1]["warmup_fraction"] = 0.2
    config = TrainConfig.from_dict(raw)
    reports = _Reports()
    return config, fit(config, report=reports, log=_quiet), reports


def test_two_phase_run_beats_chance_clearly(two_phase: Any) -> None:
    config, result, _ = two_phase
    chance = 1 / config.data.synthetic.classes
    assert result.stop_reason == "completed"
    # Pretrained on the source task, fine-tuned on the target task: far above 1/6.
    assert result.best_val_accuracy > max(0.6, 3 * chance)


def test_epochs_are_global_across_phases_and_records_are_complete(two_phase: Any) -> None:
    _, result, reports = two_phase
    history = result.history
    assert history.series("epoch") == [1, 2, 3, 4]
    # Phase 2 starts at the epoch after phase 1 ends.
    assert history.series("phase") == [1, 1, 2, 2]
    assert history.phase_starts() == {1: 1, 2: 3}
    expected = {"loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "phase"}
    # Six classes, so top-5 accuracy is recorded too.
    expected |= {"top5_accuracy", "val_top5_accuracy"}
    for record in history.records:
        assert expected <= set(record)
    # The hook saw every epoch, with that epoch's metrics.
    assert [epoch for epoch, _ in reports.calls] == [1, 2, 3, 4]
    assert reports.calls[2][1]["val_accuracy"] == history.records[2]["val_accuracy"]


def test_learning_rate_is_recorded_per_phase(two_phase: Any) -> None:
    _, result, _ = two_phase
    rates = result.history.series("learning_rate")
    assert rates[:2] == pytest.approx([3e-3, 3e-3])
    # Phase 2: cosine from 1e-4 after a warmup, ending near zero.
    assert 0 < rates[2] <= 1e-4 and rates[3] < rates[2]


def test_best_epoch_weights_are_restored(two_phase: Any) -> None:
    config, result, _ = two_phase
    datasets = load_datasets(config)
    _, accuracy, *_ = result.model.evaluate(datasets.validation, verbose=0)
    assert result.best_epoch == result.history.best_epoch
    assert accuracy == pytest.approx(result.best_val_accuracy, abs=1e-6)


def test_report_hook_stop_ends_training_at_the_requested_epoch(make_config: Any) -> None:
    reports = _Reports(stop_at=2)
    result = fit(make_config(), report=reports, log=_quiet)
    assert result.stop_reason == "requested"
    assert result.stop_detail == "pruned: test asked to stop"
    # Stopped after epoch 2: phase 2 never ran and no further epoch was reported.
    assert result.history.series("epoch") == [1, 2]
    assert [epoch for epoch, _ in reports.calls] == [1, 2]


def test_non_finite_loss_stops_at_once(make_config: Any) -> None:
    config = make_config()
    images = np.random.default_rng(0).uniform(0, 255, (16, 64, 64, 3)).astype("float32")
    labels = np.full((16, 6), np.nan, dtype="float32")  # fault injection: NaN targets
    broken = tf.data.Dataset.from_tensor_slices((images, labels)).batch(4)
    reports = _Reports()
    result = fit(
        config,
        report=reports,
        datasets=Datasets(broken, broken, tuple("abcdef"), 16, 16),
        log=_quiet,
    )
    assert result.stop_reason == "non_finite_loss"
    assert "loss" in (result.stop_detail or "")
    # Stopped during epoch 1, and the hook still got that epoch (with its NaN loss).
    assert result.history.series("epoch") == [1]
    assert [epoch for epoch, _ in reports.calls] == [1]
    assert np.isnan(reports.calls[0][1]["loss"])
    assert result.best_epoch is None


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
    from trainers.backbones import group_layers_into_units

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
