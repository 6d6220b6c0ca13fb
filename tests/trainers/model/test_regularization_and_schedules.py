"""L2-SP penalty and per-phase learning-rate schedules, without training."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tests.conftest import small_config_dict
from trainers.config.schema import PhaseConfig, TrainConfig
from trainers.model.optimization import learning_rate_schedule, make_optimizer
from trainers.model.regularization import attach_l2sp
from trainers.model.surgery import build_model, set_trainable_units


def _penalty(model: keras.Model) -> float:
    return float(sum(float(keras.ops.convert_to_numpy(loss)) for loss in model.losses))


def test_l2sp_pulls_only_trainable_unfrozen_weights_toward_their_start() -> None:
    network = build_model(TrainConfig.from_dict(small_config_dict()), num_classes=6)
    # MobileNetV3Small's top unit: conv_1 kernel plus conv_1_bn gamma and beta.
    assert attach_l2sp(network, 0.5, unfreeze_blocks=1) == 3
    set_trainable_units(network, 1, freeze_batchnorm=True)
    # At the starting weights the penalty is zero.
    assert _penalty(network.model) == 0.0
    kernel = next(v for v in network.backbone.weights if v.path == "conv_1/kernel")
    kernel.assign(kernel.numpy() + 0.1)
    # alpha/2 * sum((w - w0)^2) = 0.25 * 0.01 * size
    assert _penalty(network.model) == pytest.approx(0.25 * 0.01 * kernel.numpy().size, rel=1e-4)
    # Frozen again, the same moved weights cost nothing: only trainable variables count.
    set_trainable_units(network, 0, freeze_batchnorm=True)
    assert _penalty(network.model) == 0.0


def _rate(schedule: object, step: int) -> float:
    if isinstance(schedule, float):
        return schedule
    return float(keras.ops.convert_to_numpy(schedule(step)))  # type: ignore[operator]


def test_constant_schedule_without_warmup_is_a_plain_rate() -> None:
    phase = PhaseConfig(epochs=2, learning_rate=1e-3)
    assert learning_rate_schedule(phase, steps_per_epoch=10) == 1e-3


def test_constant_schedule_with_warmup_ramps_then_holds() -> None:
    phase = PhaseConfig(epochs=2, learning_rate=1e-3, warmup_fraction=0.25)
    schedule = learning_rate_schedule(phase, steps_per_epoch=10)  # 20 steps, 5 of warmup
    assert _rate(schedule, 0) == 0.0
    assert _rate(schedule, 5) == pytest.approx(1e-3)
    assert _rate(schedule, 19) == pytest.approx(1e-3)


def test_cosine_schedule_decays_to_zero_after_warmup() -> None:
    phase = PhaseConfig(epochs=1, learning_rate=2e-3, schedule="cosine", warmup_fraction=0.2)
    schedule = learning_rate_schedule(phase, steps_per_epoch=10)  # 10 steps, 2 of warmup
    assert _rate(schedule, 1) == pytest.approx(1e-3)
    assert _rate(schedule, 2) == pytest.approx(2e-3)
    assert _rate(schedule, 6) == pytest.approx(1e-3)  # half-way through the decay
    assert _rate(schedule, 10) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("adam", keras.optimizers.Adam),
        ("adamw", keras.optimizers.AdamW),
        ("sgd", keras.optimizers.SGD),
    ],
)
def test_optimizer_choice_momentum_and_weight_decay(name: str, cls: type) -> None:
    phase = PhaseConfig(
        epochs=1,
        learning_rate=1e-3,
        optimizer=name,
        weight_decay=1e-4,
        momentum=0.8,  # type: ignore[arg-type]
    )
    optimizer = make_optimizer(phase, steps_per_epoch=5)
    assert type(optimizer) is cls
    assert optimizer.weight_decay == pytest.approx(1e-4)
    if name == "sgd":
        assert optimizer.momentum == pytest.approx(0.8)


def test_history_csv_round_trip(tmp_path: object) -> None:
    from pathlib import Path

    from trainers.fit.history import TrainingHistory

    history = TrainingHistory.from_records(
        [
            {
                "epoch": 1,
                "phase": 1,
                "loss": 1.5,
                "accuracy": 0.4,
                "val_loss": 1.2,
                "val_accuracy": 0.5,
                "learning_rate": 1e-3,
                "seconds": 2.0,
            },
            {
                "epoch": 2,
                "phase": 2,
                "loss": np.nan,
                "accuracy": 0.4,
                "val_loss": 1.0,
                "val_accuracy": 0.9,
                "learning_rate": 1e-5,
                "seconds": 2.5,
            },
            {
                "epoch": 3,
                "phase": 2,
                "loss": 0.9,
                "accuracy": 0.7,
                "val_loss": 0.8,
                "val_accuracy": 0.6,
                "learning_rate": 1e-5,
                "seconds": 2.5,
            },
        ]
    )
    path = history.to_csv(Path(str(tmp_path)) / "history.csv")
    again = TrainingHistory.from_csv(path)
    assert again.series("val_accuracy") == [0.5, 0.9, 0.6]
    assert again.series("epoch") == [1, 2, 3]
    # Epoch 2 has the highest val_accuracy but a NaN loss: it is never the best epoch.
    assert again.best_epoch == 3
    assert again.phase_starts() == {1: 1, 2: 2}
    assert path.read_text().splitlines()[0] == (
        "epoch,phase,loss,accuracy,val_loss,val_accuracy,learning_rate,seconds"
    )
