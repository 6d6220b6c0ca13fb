"""The two-phase fine-tuning space (docs/studies.md), parameterised by backbone and ranges.

Phase 1 trains the head on the frozen backbone; phase 2, when the chosen step unfreezes any
units, fine-tunes the top blocks with its own optimizer, learning rate, warmup and BatchNorm
policy. The sampled `unfreeze_level` is ordinal: a step on the space's `unfreeze_ladder`, which
maps it to the config field `phases[].unfreeze_blocks`, a count of whole units (on effnet_b4
level 8 unfreezes 23 units). Parameters that only matter for phase 2 are sampled only when
blocks are unfrozen, and each optimizer has its own learning-rate range (and parameter name),
since sgd with momentum needs a ~30x larger rate.

A space can hold `fixed` values (never suggested) and `roles` (`spaces.parameters`);
`parameters()` describes what `sample` may suggest, and `params_of` inverts `sample`: the
parameters that reproduce a config, if it is a point of the space.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from spaces.parameters import Parameter, Role, with_roles
from trainers.config.schema import TrainConfig

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
    freeze_bn_choices: tuple[bool, ...] = (True, False)
    #: A held-out fraction, or a validation folder / TFDS split.
    validation: float | str = 0.2
    synthetic: dict[str, int] | None = None
    seed: int = 0
    #: Parameters not searched: name -> the value every trial uses.
    fixed: Mapping[str, Any] = field(default_factory=dict)
    #: Roles other than the defaults (`spaces.parameters.SCIENTIFIC_BY_DEFAULT`).
    roles: Mapping[str, Role] = field(default_factory=dict)

    def __call__(self, trial: Suggester, data_source: str) -> TrainConfig:
        return self.sample(trial, data_source)

    def sample(self, trial: Suggester, data_source: str) -> TrainConfig:
        """Draw one configuration. Deterministic in the trial's answers; no side effects."""
        head_lr = self._float(trial, "head_lr", self.head_lr, log=True)
        head_epochs = self._categorical(trial, "head_epochs", self.head_epochs)
        unfreeze_level = (
            self.fixed["unfreeze_level"]
            if "unfreeze_level" in self.fixed
            else trial.suggest_int("unfreeze_level", 0, len(self.unfreeze_ladder) - 1)
        )
        unfreeze_blocks = self.unfreeze_ladder[unfreeze_level]
        batch_size = self._categorical(trial, "batch_size", self.batch_sizes)
        weight_decay = (
            self._float(trial, "weight_decay", self.weight_decay, log=True)
            if self._has("weight_decay", self.weight_decay)
            else 0.0
        )
        model: dict[str, Any] = {
            "backbone": self.backbone,
            "weights": self.weights,
            "head_dropout": self._float(trial, "head_dropout", self.head_dropout),
        }
        if self._has("drop_connect_rate", self.drop_connect_rate):
            model["drop_connect_rate"] = self._float(
                trial, "drop_connect_rate", self.drop_connect_rate
            )
        data: dict[str, Any] = {
            "source": data_source,
            "image_size": self.image_size,
            "validation": self.validation,
            "augmentation": self._choose(trial, "augmentation", self.augmentations),
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
            if self._has("l2sp_alpha", self.l2sp_alpha) and self._choose(
                trial, "use_l2sp", (False, True)
            ):
                l2sp_alpha = self._float(trial, "l2sp_alpha", self.l2sp_alpha, log=True)
        return TrainConfig.from_dict(
            {
                "data": data,
                "model": model,
                "phases": phases,
                "batch_size": batch_size,
                "label_smoothing": self._choose(trial, "label_smoothing", self.label_smoothing),
                "l2sp_alpha": l2sp_alpha,
                "seed": self.seed,
            }
        )

    def _fine_tune_phase(
        self, trial: Suggester, unfreeze_blocks: int, weight_decay: float
    ) -> dict[str, Any]:
        optimizer = self._choose(trial, "ft_optimizer", self.ft_optimizers)
        lr_range = self.ft_lr_sgd if optimizer == "sgd" else self.ft_lr_adamw
        return {
            "epochs": self._categorical(trial, "ft_epochs", self.ft_epochs),
            "optimizer": optimizer,
            "learning_rate": self._float(trial, f"ft_lr_{optimizer}", lr_range, log=True),
            "momentum": 0.9,
            "schedule": "cosine",
            "warmup_fraction": self._choose(trial, "warmup_frac", self.warmup_fractions),
            "weight_decay": weight_decay,
            "unfreeze_blocks": unfreeze_blocks,
            "freeze_batchnorm": self._categorical(trial, "freeze_bn", self.freeze_bn_choices),
        }

    def _has(self, name: str, bounds: FloatRange | None) -> bool:
        """Whether an optional float parameter is searched or fixed (else the config default)."""
        return bounds is not None or name in self.fixed

    def _float(
        self, trial: Suggester, name: str, bounds: FloatRange | None, *, log: bool = False
    ) -> Any:
        if name in self.fixed:
            return self.fixed[name]
        assert bounds is not None, f"{name} is neither searched nor fixed"
        return trial.suggest_float(name, *bounds, log=log)

    def _categorical(self, trial: Suggester, name: str, choices: Sequence[Any]) -> Any:
        """A categorical parameter, suggested even with one choice (as studies always did)."""
        if name in self.fixed:
            return self.fixed[name]
        return trial.suggest_categorical(name, choices)

    def _choose(self, trial: Suggester, name: str, choices: Sequence[Any]) -> Any:
        """A categorical parameter; the fixed value when it is fixed or has only one choice."""
        if name in self.fixed:
            return self.fixed[name]
        return choices[0] if len(choices) == 1 else trial.suggest_categorical(name, choices)

    def parameters(self) -> tuple[Parameter, ...]:
        """Every parameter `sample` may suggest or fixes, in the order it asks for them."""
        fine_tune = "unfreeze_level >= 1"
        unfrozen_levels = tuple(level for level, units in enumerate(self.unfreeze_ladder) if units)
        in_fine_tune = (("unfreeze_level", unfrozen_levels),)
        described = [
            _range("head_lr", self.head_lr, log=True),
            _choices("head_epochs", self.head_epochs),
            Parameter(
                "unfreeze_level", "int", low=0, high=len(self.unfreeze_ladder) - 1, log=False
            ),
            _choices("batch_size", self.batch_sizes),
            _range("weight_decay", self.weight_decay, log=True, otherwise=0.0),
            _range("head_dropout", self.head_dropout),
        ]
        if self._has("drop_connect_rate", self.drop_connect_rate):
            described.append(_range("drop_connect_rate", self.drop_connect_rate))
        described += [
            _choices("augmentation", self.augmentations),
            _choices("label_smoothing", self.label_smoothing),
        ]
        if any(step > 0 for step in self.unfreeze_ladder):
            described.append(
                _choices("ft_optimizer", self.ft_optimizers, fine_tune, in_fine_tune)
            )
            described += [
                _range(
                    f"ft_lr_{name}",
                    lr_range,
                    log=True,
                    condition=f"ft_optimizer == {name}",
                    active_when=(*in_fine_tune, ("ft_optimizer", (name,))),
                )
                for name, lr_range in (("adamw", self.ft_lr_adamw), ("sgd", self.ft_lr_sgd))
                if name in self.ft_optimizers
            ]
            described += [
                _choices("ft_epochs", self.ft_epochs, fine_tune, in_fine_tune),
                _choices("warmup_frac", self.warmup_fractions, fine_tune, in_fine_tune),
                _choices("freeze_bn", self.freeze_bn_choices, fine_tune, in_fine_tune),
            ]
            if self._has("l2sp_alpha", self.l2sp_alpha):
                described.append(_choices("use_l2sp", (False, True), fine_tune, in_fine_tune))
                if self.fixed.get("use_l2sp", True):
                    described.append(
                        _range(
                            "l2sp_alpha",
                            self.l2sp_alpha,
                            log=True,
                            condition="use_l2sp",
                            active_when=(*in_fine_tune, ("use_l2sp", (True,))),
                        )
                    )
        with_defaults = with_roles(described, self.roles)
        return tuple(
            Parameter(
                parameter.name,
                parameter.kind,
                condition=parameter.condition,
                active_when=parameter.active_when,
                role=Role.FIXED,
                value=self.fixed[parameter.name],
            )
            if parameter.name in self.fixed
            else parameter
            for parameter in with_defaults
        )

    def params_of(self, config: TrainConfig) -> dict[str, Any] | None:
        """The searched parameters whose `sample` gives `config` (its data aside), or None if
        `config` is not a point of this space."""
        head, *rest = config.phases
        if len(rest) > 1 or any(phase.unfreeze_blocks == 0 for phase in rest):
            return None
        unfrozen = rest[0].unfreeze_blocks if rest else 0
        if unfrozen not in self.unfreeze_ladder:
            return None
        values: dict[str, Any] = {
            "head_lr": head.learning_rate,
            "head_epochs": head.epochs,
            "unfreeze_level": self.unfreeze_ladder.index(unfrozen),
            "batch_size": config.batch_size,
            "weight_decay": head.weight_decay,
            "head_dropout": config.model.head_dropout,
            "drop_connect_rate": config.model.drop_connect_rate,
            "augmentation": config.data.augmentation,
            "label_smoothing": config.label_smoothing,
        }
        if rest:
            fine_tune = rest[0]
            values |= {
                "ft_optimizer": fine_tune.optimizer,
                f"ft_lr_{fine_tune.optimizer}": fine_tune.learning_rate,
                "ft_epochs": fine_tune.epochs,
                "warmup_frac": fine_tune.warmup_fraction,
                "freeze_bn": fine_tune.freeze_batchnorm,
                "use_l2sp": config.l2sp_alpha > 0,
            }
            if config.l2sp_alpha > 0:
                values["l2sp_alpha"] = config.l2sp_alpha
        params: dict[str, Any] = {}
        for parameter in self.parameters():
            if parameter.name not in values:
                continue  # an sgd learning rate of an adamw config, say
            if not parameter.contains(values[parameter.name]):
                return None
            if parameter.role != Role.FIXED:
                params[parameter.name] = values[parameter.name]
        # What the checks above do not see (a fine-tune weight decay unlike the head's, a
        # schedule, class weighting...) shows in the config these parameters give.
        replayed = self.sample(_Replay(params), config.data.source)
        # Where the images come from and how they are held out is the study's, not the space's.
        study_data = {"validation": replayed.data.validation, "synthetic": replayed.data.synthetic}
        comparable = config.model_copy(
            update={"data": config.data.model_copy(update=study_data), "provenance": None}
        )
        return params if comparable == replayed else None


class _Replay:
    """A Suggester that answers from a dict of parameter values."""

    def __init__(self, params: Mapping[str, Any]) -> None:
        self.params = params

    def suggest_float(self, name: str, low: float, high: float, **_: Any) -> float:
        return float(self.params[name])

    def suggest_int(self, name: str, low: int, high: int, **_: Any) -> int:
        return int(self.params[name])

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        # `sample` asks even for a one-choice parameter, which is not searched.
        return choices[0] if len(choices) == 1 else self.params[name]


Conditions = tuple[tuple[str, tuple[Any, ...]], ...]


def _range(
    name: str,
    bounds: FloatRange | None,
    *,
    log: bool = False,
    condition: str = "always",
    active_when: Conditions = (),
    otherwise: float | None = None,
) -> Parameter:
    if bounds is None:
        return Parameter(
            name,
            "float",
            role=Role.FIXED,
            value=otherwise,
            condition=condition,
            active_when=active_when,
        )
    return Parameter(
        name,
        "float",
        low=bounds[0],
        high=bounds[1],
        log=log,
        condition=condition,
        active_when=active_when,
    )


def _choices(
    name: str, choices: Sequence[Any], condition: str = "always", active_when: Conditions = ()
) -> Parameter:
    if len(choices) == 1:  # nothing to search
        return Parameter(
            name,
            "categorical",
            condition=condition,
            active_when=active_when,
            role=Role.FIXED,
            value=choices[0],
        )
    return Parameter(
        name, "categorical", choices=tuple(choices), condition=condition, active_when=active_when
    )
