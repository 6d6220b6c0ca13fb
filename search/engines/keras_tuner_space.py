"""A search space as KerasTuner declares it, and a Suggester that answers from a KerasTuner trial.

`declare_space` turns a space's `parameters()` into a `keras_tuner.HyperParameters`, each
conditional parameter inside the conditional scopes its `active_when` names (the fine-tune
parameters under `unfreeze_level`, each optimizer's learning rate under `ft_optimizer`,
`l2sp_alpha` under `use_l2sp`), so that KerasTuner's oracles never sample a parameter that does
not apply. `KerasTunerSuggester` is the `Suggester` a space samples from: it answers each
`suggest_*` with the trial's value, so every space runs unchanged under KerasTuner.

`keras_tuner` imports Keras and so TensorFlow: this module is used by the oracle process
(`search.engines.oracle`), tests and benchmarks, never by the coordinator.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from spaces.parameters import Parameter, Role
from trainers.config.schema import TrainConfig

if TYPE_CHECKING:
    import keras_tuner


class DescribedSpace(Protocol):
    """A space that lists its parameters (`spaces.finetune.FineTuneSpace`)."""

    def parameters(self) -> tuple[Parameter, ...]: ...

    def __call__(self, trial: Any, data_source: str) -> TrainConfig: ...


class SpaceMismatchError(ValueError):
    """The space asked for a parameter its declaration does not make active: a bug in the
    space's `parameters()`."""


def active_scopes(
    parameter: Parameter, described: Mapping[str, Parameter]
) -> list[tuple[str, tuple[Any, ...]]] | None:
    """The conditional scopes `parameter` is declared in, its fixed parents resolved away;
    None when a fixed parent keeps it from ever being sampled."""
    scopes = []
    for parent, values in parameter.active_when:
        known = described.get(parent)
        if known is not None and known.role == Role.FIXED:
            if known.value not in values:
                return None
            continue  # always true: a fixed parent is no condition
        scopes.append((parent, values))
    return scopes


def declare_space(space: DescribedSpace) -> keras_tuner.HyperParameters:
    """Every searched parameter of `space`, declared for KerasTuner's oracles."""
    import keras_tuner

    hp = keras_tuner.HyperParameters()
    described = {parameter.name: parameter for parameter in space.parameters()}
    for parameter in described.values():
        if parameter.role == Role.FIXED:
            continue
        scopes = active_scopes(parameter, described)
        if scopes is None:
            continue
        with contextlib.ExitStack() as stack:
            for parent, values in scopes:
                stack.enter_context(hp.conditional_scope(parent, list(values)))
            _declare(hp, parameter)
    return hp


def _declare(hp: keras_tuner.HyperParameters, parameter: Parameter) -> None:
    if parameter.kind == "categorical":
        hp.Choice(parameter.name, list(parameter.choices))
        return
    assert parameter.low is not None and parameter.high is not None
    sampling = "log" if parameter.log else "linear"
    if parameter.kind == "int":
        hp.Int(parameter.name, int(parameter.low), int(parameter.high), sampling=sampling)
    else:
        hp.Float(parameter.name, float(parameter.low), float(parameter.high), sampling=sampling)


class KerasTunerSuggester:
    """Optuna's `suggest_*` calls, answered from a KerasTuner trial's `HyperParameters`.

    `used` collects every value it gave, one-choice categoricals included: the parameters an
    Optuna trial needs to reproduce the same config.
    """

    def __init__(self, hp: keras_tuner.HyperParameters) -> None:
        self.hp = hp
        self.used: dict[str, Any] = {}

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float:
        # Clipped: a value computed on a log scale may land a rounding error outside.
        value = min(max(float(self._value(name)), low), high)
        self.used[name] = value
        return value

    def suggest_int(
        self, name: str, low: int, high: int, *, step: int = 1, log: bool = False
    ) -> int:
        value = int(self._value(name))
        if not low <= value <= high:
            raise SpaceMismatchError(f"{name}={value} is outside {low}..{high}")
        self.used[name] = value
        return value

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        # A one-choice parameter is not searched (the space lists it as fixed).
        value = choices[0] if len(choices) == 1 else self._value(name)
        # KerasTuner hands booleans back as 0 and 1: answer with the choice itself.
        equal = [choice for choice in choices if choice == value]
        if not equal:
            raise SpaceMismatchError(f"{name}={value!r} is not one of {list(choices)}")
        chosen = next((choice for choice in equal if type(choice) is type(value)), equal[0])
        self.used[name] = chosen
        return chosen

    def _value(self, name: str) -> Any:
        try:
            return self.hp.get(name)
        except ValueError:
            raise SpaceMismatchError(
                f"the space asked for {name!r}, which its KerasTuner declaration makes "
                "inactive here"
            ) from None
        except KeyError:
            raise SpaceMismatchError(
                f"the space asked for {name!r}, which its KerasTuner declaration lacks"
            ) from None
