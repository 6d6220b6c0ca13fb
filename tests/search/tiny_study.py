"""A study small enough for tests: MobileNetV3Small at 32 px on 4 generated classes.

Its trials are real: spawned workers, real Keras training, a real SQLite storage and a real
MLflow store. Which weights a trial uses is a parameter, so enqueued trials can steer
outcomes: pretrained weights complete, random weights sit at chance (pruned), a missing file
fails before training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from search.study.registry import EnqueuedTrial, StudySpec
from search.study.setup import RunSettings
from spaces.finetune import Suggester
from tests.conftest import PRETRAINED_WEIGHTS
from trainers.config.schema import TrainConfig

WEIGHTS = {
    "pretrained": str(PRETRAINED_WEIGHTS),
    "random": None,
    "missing": "/nonexistent/b.weights.h5",
}


def tiny_space(trial: Suggester, data_source: str) -> TrainConfig:
    weights = trial.suggest_categorical("weights", list(WEIGHTS))
    head_lr = trial.suggest_float("head_lr", 1e-3, 1e-2, log=True)
    unfreeze_level = trial.suggest_int("unfreeze_level", 0, 1)
    phases: list[dict[str, Any]] = [{"epochs": 2, "learning_rate": head_lr}]
    if unfreeze_level:
        phases.append({"epochs": 1, "learning_rate": 1e-4, "unfreeze_blocks": 1})
    return TrainConfig.from_dict(
        {
            "data": {
                "source": data_source,
                "image_size": 32,
                "synthetic": {"classes": 4, "images_per_class": 12},
            },
            "model": {"backbone": "MobileNetV3Small", "weights": WEIGHTS[weights]},
            "phases": phases,
            "batch_size": 16,
        }
    )


def enqueued(label: str, weights: str, unfreeze_level: int, head_lr: float = 3e-3) -> EnqueuedTrial:
    return EnqueuedTrial(
        label, {"weights": weights, "head_lr": head_lr, "unfreeze_level": unfreeze_level}
    )


def tiny_spec(name: str, *first_trials: EnqueuedTrial) -> StudySpec:
    return StudySpec(
        name=name,
        description="test study",
        space=tiny_space,
        default_data="synthetic:target",
        n_trials=3,
        enqueued=first_trials,
        # Only the collapse rules decide here; the median pruner would need many trials.
        pruner_startup_trials=100,
        sampler_startup_trials=100,
    )


def settings(folder: Path, n_trials: int, **overrides: Any) -> RunSettings:
    values: dict[str, Any] = {
        "n_trials": n_trials,
        "storage": f"sqlite:///{folder / 'optuna.db'}",
        "data_source": "synthetic:target",
        "tracking_uri": f"sqlite:///{folder / 'mlflow.db'}",
        "output_dir": folder / "runs",
        "heartbeat_interval": 1,
        "grace_period": 5,
    }
    values.update(overrides)
    return RunSettings(**values)
