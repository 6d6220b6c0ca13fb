"""The two-phase fine-tuning space of DESIGN.md, parameterised by backbone and ranges.

Phase 1 trains the head on the frozen backbone; phase 2, when the chosen step unfreezes any
units, fine-tunes the top blocks with its own optimizer, learning rate, warmup and BatchNorm
policy. The sampled `unfreeze_level` is ordinal: a step on the space's `unfreeze_ladder`, which
maps it to the config field `phases[].unfreeze_blocks`, a count of whole units (on effnet_b4
level 8 unfreezes 23 units). Parameters that only matter for phase 2 are sampled only when
blocks are unfrozen, and each optimizer has its own learning-rate range (and parameter name),
since sgd with momentum needs a ~30x larger rate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from trainers.config import TrainConfig

FloatRange = tuple[float, float]


class Suggester(Protocol):
    """The part of `optuna.Trial` a space uses."""

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = ..., log: bool = ...
    ) -> float: ...

    def suggest_int(
        self, name: str, low: int, high: int, *, step: int = ..., log: bool = ...
    ) -> int: ...

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any: ...


@dataclass(frozen=True)
class FineTuneSpace:
    """Ranges and fixed values; `sample` turns one trial into a TrainConfig."""

    backbone: str
    image_size: int
    weights: str | None
    head_lr: FloatRange
    head_epochs: tuple[int, ...]
    #: The unfreeze ladder: whole units unfrozen at each step. The sampled `unfreeze_level`
    #: (ordinal 0, 1, 2, ...) picks a step; `unfreeze_ladder[unfreeze_level]` becomes the
    #: config's `unfreeze_blocks`. Fine steps near the top (surgical fine-tuning), whole stages
    #: further down.
    unfreeze_ladder: tuple[int, ...]
    ft_lr_adamw: FloatRange
    ft_lr_sgd: FloatRange
    ft_epochs: tuple[int, ...]
    batch_sizes: tuple[int, ...]
    head_dropout: FloatRange
    ft_optimizers: tuple[str, ...] = ("adamw", "sgd")
    warmup_fractions: tuple[float, ...] = (0.0, 0.05, 0.2)
    #: None fixes the value at the config default instead of searching it.
    weight_decay: FloatRange | None = None
    l2sp_alpha: FloatRange | None = None
    drop_connect_rate: FloatRange | None = None
    label_smoothing: tuple[float, ...] = (0.0,)
    augmentations: tuple[str, ...] = ("none",)
    validation: float = 0.2
    synthetic: dict[str, int] | None = None
    seed: int = 0

    def sample(self, trial: Suggester, data_source: str) -> TrainConfig:
        """Draw one configuration. Deterministic in the trial's answers; no side effects."""
        head_lr = trial.suggest_float("head_lr", *self.head_lr, log=True)
        head_epochs = trial.suggest_categorical("head_epochs", self.head_epochs)
        unfreeze_level = trial.suggest_int("unfreeze_level", 0, len(self.unfreeze_ladder) - 1)
        unfreeze_blocks = self.unfreeze_ladder[unfreeze_level]
        batch_size = trial.suggest_categorical("batch_size", self.batch_sizes)
        weight_decay = (
            trial.suggest_float("weight_decay", *self.weight_decay, log=True)
            if self.weight_decay
            else 0.0
        )
        model: dict[str, Any] = {
            "backbone": self.backbone,
            "weights": self.weights,
            "head_dropout": trial.suggest_float("head_dropout", *self.head_dropout),
        }
        if self.drop_connect_rate:
            model["drop_connect_rate"] = trial.suggest_float(
                "drop_connect_rate", *self.drop_connect_rate
            )
        data: dict[str, Any] = {
            "source": data_source,
            "image_size": self.image_size,
            "validation": self.validation,
            "augmentation": _choose(trial, "augmentation", self.augmentations),
        }
        if self.synthetic is not None and data_source.startswith("synthetic:"):
            data["synthetic"] = dict(self.synthetic)
        phases: list[dict[str, Any]] = [
            {
                "epochs": head_epochs,
                "optimizer": "adam",
                "learning_rate": head_lr,
                "weight_decay": weight_decay,
            }
        ]
        l2sp_alpha = 0.0
        if unfreeze_blocks > 0:
            phases.append(self._fine_tune_phase(trial, unfreeze_blocks, weight_decay))
            if self.l2sp_alpha and trial.suggest_categorical("use_l2sp", (False, True)):
                l2sp_alpha = trial.suggest_float("l2sp_alpha", *self.l2sp_alpha, log=True)
        return TrainConfig.from_dict(
            {
                "data": data,
                "model": model,
                "phases": phases,
                "batch_size": batch_size,
                "label_smoothing": _choose(trial, "label_smoothing", self.label_smoothing),
                "l2sp_alpha": l2sp_alpha,
                "seed": self.seed,
            }
        )

    def _fine_tune_phase(
        self, trial: Suggester, unfreeze_blocks: int, weight_decay: float
    ) -> dict[str, Any]:
        optimizer = _choose(trial, "ft_optimizer", self.ft_optimizers)
        lr_range = self.ft_lr_sgd if optimizer == "sgd" else self.ft_lr_adamw
        return {
            "epochs": trial.suggest_categorical("ft_epochs", self.ft_epochs),
            "optimizer": optimizer,
            "learning_rate": trial.suggest_float(f"ft_lr_{optimizer}", *lr_range, log=True),
            "momentum": 0.9,
            "schedule": "cosine",
            "warmup_fraction": _choose(trial, "warmup_frac", self.warmup_fractions),
            "weight_decay": weight_decay,
            "unfreeze_blocks": unfreeze_blocks,
            "freeze_batchnorm": trial.suggest_categorical("freeze_bn", (True, False)),
        }


def _choose(trial: Suggester, name: str, choices: tuple[Any, ...]) -> Any:
    """A categorical parameter, or the fixed value when there is only one choice."""
    return choices[0] if len(choices) == 1 else trial.suggest_categorical(name, choices)
