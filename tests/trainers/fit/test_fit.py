"""End-to-end fine-tuning runs on generated data: phases, freezing, reporting, stopping."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import small_config_dict
from trainers.config.schema import TrainConfig
from trainers.data.pipelines import Datasets, load_datasets
from trainers.fit.loop import FitResult, fit

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
