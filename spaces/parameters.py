"""What a space searches, described: each parameter's range or choices, scale, condition, role.

A space's `parameters()` lists the `Parameter`s its `sample` may suggest, so that
`python -m search.studies` can print a space without running it and a study file can override a
range by name. Roles (docs/studies.md): *scientific* parameters are what a study is for (how
deep to fine-tune, BatchNorm, the optimizer family, L2-SP), *nuisance* parameters are tuned
away so that the scientific ones are compared at their best, and *fixed* ones are not searched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, Literal


class Role(StrEnum):
    SCIENTIFIC = "scientific"
    NUISANCE = "nuisance"
    FIXED = "fixed"


#: The parameters that are scientific unless a study says otherwise; every other searched
#: parameter is nuisance.
SCIENTIFIC_BY_DEFAULT = frozenset(
    {"unfreeze_level", "freeze_bn", "ft_optimizer", "use_l2sp", "l2sp_alpha"}
)

Kind = Literal["float", "int", "categorical"]


@dataclass(frozen=True)
class Parameter:
    """One parameter a space may suggest."""

    name: str
    kind: Kind
    #: A float or int range (`low`..`high`, `log` scale) ...
    low: float | None = None
    high: float | None = None
    log: bool = False
    #: ... or the choices of a categorical parameter.
    choices: tuple[Any, ...] = ()
    #: When it is sampled, in words; "always" for parameters of every trial.
    condition: str = "always"
    #: The same as data, for engines with conditional spaces (KerasTuner's conditional
    #: scopes): (parent, values) pairs, outermost first; it is sampled when every parent's
    #: value is one of its values.
    active_when: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    role: Role = Role.NUISANCE
    #: The value of a fixed parameter, which is never suggested.
    value: Any = None

    def contains(self, value: Any) -> bool:
        """Whether `value` is a point of this parameter's range or choices."""
        if self.role == Role.FIXED:
            return bool(value == self.value)
        if self.kind == "categorical":
            return any(value == choice and type(value) is type(choice) for choice in self.choices)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        assert self.low is not None and self.high is not None
        within = self.low <= value <= self.high
        return within and (self.kind == "float" or float(value).is_integer())

    def describe(self) -> str:
        """Range or choices and scale, e.g. `1e-06 .. 0.001 log` or `{16, 32, 64}`."""
        if self.role == Role.FIXED:
            return f"= {_show(self.value)}"
        if self.kind == "categorical":
            return "{" + ", ".join(_show(choice) for choice in self.choices) + "}"
        scale = "log" if self.log else "linear"
        return f"{_show(self.low)} .. {_show(self.high)} {scale}"


def _show(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    return f"{value:g}" if isinstance(value, float) else str(value)


def with_roles(
    parameters: Sequence[Parameter], roles: Mapping[str, Role] | None = None
) -> tuple[Parameter, ...]:
    """The default roles (`SCIENTIFIC_BY_DEFAULT`), then `roles` on top; fixed parameters
    stay fixed."""
    chosen = dict(roles or {})
    return tuple(
        parameter
        if parameter.role == Role.FIXED
        else replace(
            parameter,
            role=chosen.get(
                parameter.name,
                Role.SCIENTIFIC if parameter.name in SCIENTIFIC_BY_DEFAULT else Role.NUISANCE,
            ),
        )
        for parameter in parameters
    )
