"""Optimizer and learning-rate schedule for one phase.

Each phase compiles a fresh optimizer, so its step counter and warmup start at zero when the
phase starts. Weight decay is Keras 3's decoupled decay (for adam and sgd as well as adamw),
applied to the variables trainable in that phase only.
"""

from __future__ import annotations

from typing import TypeAlias

import keras

from trainers.config.schema import PhaseConfig

LearningRate: TypeAlias = "float | keras.optimizers.schedules.LearningRateSchedule"


def learning_rate_schedule(phase: PhaseConfig, steps_per_epoch: int) -> LearningRate:
    """Linear warmup from 0 over `warmup_fraction` of the phase, then constant or cosine to 0."""
    total_steps = max(1, phase.epochs * steps_per_epoch)
    warmup_steps = round(phase.warmup_fraction * total_steps)
    if phase.schedule == "constant" and warmup_steps == 0:
        return phase.learning_rate
    # CosineDecay with alpha=1 never decays: a constant rate that can still have a warmup.
    floor = 1.0 if phase.schedule == "constant" else 0.0
    decay_steps = max(1, total_steps - warmup_steps)
    if warmup_steps == 0:
        return keras.optimizers.schedules.CosineDecay(phase.learning_rate, decay_steps, alpha=floor)
    return keras.optimizers.schedules.CosineDecay(
        0.0,
        decay_steps,
        alpha=floor,
        warmup_target=phase.learning_rate,
        warmup_steps=warmup_steps,
    )


def make_optimizer(phase: PhaseConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    rate = learning_rate_schedule(phase, steps_per_epoch)
    decay = phase.weight_decay or None
    if phase.optimizer == "adamw":
        return keras.optimizers.AdamW(learning_rate=rate, weight_decay=phase.weight_decay)
    if phase.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate=rate, momentum=phase.momentum, weight_decay=decay)
    return keras.optimizers.Adam(learning_rate=rate, weight_decay=decay)


def current_learning_rate(optimizer: keras.optimizers.Optimizer) -> float:
    """The rate the optimizer's schedule gives at its current step."""
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))
