"""The portfolio: a few fine-tuning recipes every study tries first, moved onto its space.

A study's first trials used to be random draws from a large space, so whether it met a good
recipe early was luck. The portfolio (docs/studies.md, "The portfolio") is a small set of
recipes chosen offline by `python -m bench.portfolio` from configurations trained to completion
on several generated tasks, near and far from pretraining, and shipped as
`search/study/portfolio.yaml`. Each recipe is written so that it moves to any backbone, budget
and range:

- unfreezing as a share of the backbone's units (0: the linear probe), placed on the study's
  unfreeze ladder at the step nearest that share of its backbone (a fine-tune stays one);
- phase lengths as a position between the study's shortest (0) and longest (1) choice;
- learning rates, dropout and batch size as values, clipped into the study's ranges or moved
  to the nearest choice;
- the optimizer family and BatchNorm policy as they are: a recipe whose family or policy the
  study does not allow is skipped, with one line saying why, as is one that lands on the same
  point as an earlier trial.

What a recipe does not say (weight decay, drop-connect, augmentation, label smoothing, L2-SP)
takes the space's mildest value: the least decay, drop-connect 0.2, no augmentation, no
smoothing, no L2-SP.

`with_portfolio` puts the placed recipes before a study's own enqueued trials, in the file's
order (best first), and sizes the sampler's start-up to all of them, so TPE models from their
results on instead of from random draws. First, because the portfolio is what makes a study
good early on any task: its best recipe is done within the first few epochs of the budget
(`bench.search_quality` on a held-out task), and the study's own configs run right after.
Only the Optuna engine runs enqueued trials; a KerasTuner oracle proposes its own.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from search.study.registry import EnqueuedTrial, StudySpec
from spaces.finetune import FineTuneSpace
from trainers.config.messages import validation_problems
from trainers.config.schema import read_text_file
from trainers.errors import ConfigError
from trainers.model.backbones import get_backbone

#: The portfolio the project ships, rebuilt by `python -m bench.portfolio`.
SHIPPED_PORTFOLIO = Path(__file__).with_name("portfolio.yaml")
#: The values of `portfolio` (study file) and `--portfolio` besides a file's path: the shipped
#: portfolio (the default), and none.
SHIPPED = "shipped"
NO_PORTFOLIO = "none"
#: Trial label prefix of a portfolio recipe (user attribute `enqueued`).
LABEL_PREFIX = "portfolio:"

#: Values for what a recipe does not say: the mildest of each.
_DROP_CONNECT = 0.2


class Recipe(BaseModel):
    """One recipe, independent of backbone and ranges (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: str = Field(pattern=r"^[a-z0-9_]+$")
    #: Where it comes from: its scores on the tasks it was chosen on.
    why: str = ""
    head_lr: float = Field(gt=0)
    #: 0: the study's shortest head phase; 1: its longest.
    head_epochs: float = Field(ge=0, le=1)
    batch_size: int = Field(ge=1)
    head_dropout: float = Field(ge=0, lt=1)
    #: Share of the backbone's units unfrozen; 0 is the linear probe.
    unfreeze_share: float = Field(ge=0, le=1)
    ft_optimizer: str | None = None
    ft_lr: float | None = Field(None, gt=0)
    ft_epochs: float | None = Field(None, ge=0, le=1)
    warmup_frac: float | None = Field(None, ge=0, lt=1)
    freeze_bn: bool | None = None

    @property
    def fine_tunes(self) -> bool:
        return self.unfreeze_share > 0


class PortfolioFile(BaseModel):
    """The file `bench.portfolio` writes: where the recipes come from, and the recipes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str = ""
    recipes: tuple[Recipe, ...] = Field(min_length=1)


def portfolio_path(choice: str, folder: Path = Path()) -> Path | None:
    """The portfolio file `choice` names: `shipped`, `none` (None), or a path relative to
    `folder` (a study file's)."""
    if choice == NO_PORTFOLIO:
        return None
    if choice == SHIPPED:
        return SHIPPED_PORTFOLIO
    return (folder / choice).resolve()


def load_portfolio(path: Path | None) -> tuple[Recipe, ...]:
    """The recipes of the portfolio file `path` (None: no portfolio); a missing or bad file
    is one `ConfigError`."""
    if path is None:
        return ()
    text = read_text_file(path, "portfolio")
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    try:
        return PortfolioFile.model_validate(loaded).recipes
    except ValidationError as error:
        problems = "\n".join(
            f"  {problem}" for problem in validation_problems(error, root=PortfolioFile)
        )
        raise ConfigError(f"{path}: not a portfolio file:\n{problems}") from None


@dataclass(frozen=True)
class Placement:
    """A recipe on one study's space: its trial's parameters, or why it is skipped."""

    recipe: Recipe
    params: Mapping[str, Any] | None
    skipped: str = ""
    #: The recipe's values the space moved (clipped, or to the nearest choice or step).
    moved: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return f"{LABEL_PREFIX}{self.recipe.name}"

    def describe(self) -> str:
        """One line: the recipe's parameters on this space, or why it is skipped."""
        if self.params is None:
            return f"{self.recipe.name}: skipped: {self.skipped}"
        shown = ", ".join(f"{name} {_show(value)}" for name, value in self.params.items())
        moved = f" (moved: {', '.join(self.moved)})" if self.moved else ""
        return f"{self.recipe.name}: {shown}{moved}"


class _SkipError(Exception):
    """The recipe has no point in this space."""


def place(recipe: Recipe, space: FineTuneSpace) -> Placement:
    """`recipe` moved onto `space` (see the module docstring)."""
    try:
        wanted = _wanted(recipe, space)
        recorder = _Placer(wanted)
        space.sample(recorder, "synthetic:target")
    except _SkipError as skip:
        return Placement(recipe, None, str(skip))
    return Placement(recipe, recorder.params, moved=tuple(recorder.moved))


def place_all(
    recipes: Sequence[Recipe], space: FineTuneSpace, taken: Sequence[Mapping[str, Any]] = ()
) -> tuple[Placement, ...]:
    """Every recipe placed on `space`; one that lands where another first trial is (one of
    `taken`, the study's own, or a recipe before it) is skipped."""
    seen = [dict(params) for params in taken]
    placed = []
    for recipe in recipes:
        placement = place(recipe, space)
        params = placement.params
        if params is not None:
            if dict(params) in seen:
                placement = Placement(
                    recipe, None, "the same trial as another the study runs first"
                )
            else:
                seen.append(dict(params))
        placed.append(placement)
    return tuple(placed)


def with_portfolio(
    spec: StudySpec, portfolio: Path | None
) -> tuple[StudySpec, tuple[Placement, ...]]:
    """`spec` with the portfolio's recipes before its own enqueued trials and a sampler that
    starts modelling once they are all done, and where each recipe landed (or why not).
    No portfolio, or a space other than a `FineTuneSpace`, leaves `spec` as it is."""
    recipes = load_portfolio(portfolio)
    if not recipes or not isinstance(spec.space, FineTuneSpace):
        return spec, ()
    own = [known.params for known in spec.enqueued if known.config is None]
    placements = place_all(recipes, spec.space, own)
    added = tuple(
        EnqueuedTrial(placement.label, placement.params)
        for placement in placements
        if placement.params is not None
    )
    enqueued = (*added, *spec.enqueued)
    # TPE counts enqueued trials as start-up trials: with the portfolio it models from their
    # results on, instead of after random draws.
    started = replace(spec, enqueued=enqueued, sampler_startup_trials=max(1, len(enqueued)))
    return started, placements


def ladder_level(share: float, space: FineTuneSpace) -> int:
    """The step of `space`'s ladder nearest `share` of its backbone's units; a fine-tune
    share never lands on the linear probe, nor 0 on a fine-tune."""
    units = get_backbone(space.backbone).unit_count
    steps = [
        (level, count)
        for level, count in enumerate(space.unfreeze_ladder)
        if (count > 0) == (share > 0)
    ]
    if not steps:
        what = "fine-tunes no units" if share > 0 else "has no linear-probe step"
        raise _SkipError(f"the study's unfreeze ladder {what}")
    return min(steps, key=lambda step: abs(step[1] - share * units))[0]


def _wanted(recipe: Recipe, space: FineTuneSpace) -> dict[str, Any]:
    """The parameter values the recipe asks of `space`, before clipping."""
    wanted: dict[str, Any] = {
        "head_lr": recipe.head_lr,
        "head_epochs": _position(space.head_epochs, recipe.head_epochs),
        "unfreeze_level": ladder_level(recipe.unfreeze_share, space),
        "batch_size": recipe.batch_size,
        "head_dropout": recipe.head_dropout,
        "weight_decay": space.weight_decay[0] if space.weight_decay else 0.0,
        "drop_connect_rate": _DROP_CONNECT,
        "augmentation": "none",
        "label_smoothing": 0.0,
        "use_l2sp": False,
    }
    if recipe.fine_tunes:
        optimizer = recipe.ft_optimizer or space.ft_optimizers[0]
        wanted |= {
            "ft_optimizer": optimizer,
            f"ft_lr_{optimizer}": recipe.ft_lr,
            "ft_epochs": _position(space.ft_epochs, recipe.ft_epochs or 0.0),
            "warmup_frac": recipe.warmup_frac or 0.0,
            "freeze_bn": True if recipe.freeze_bn is None else recipe.freeze_bn,
        }
    # The optimizer family and the BatchNorm policy make the recipe what it is: they are not
    # moved, and a study that does not allow them skips it.
    for name, choices in (
        ("ft_optimizer", space.ft_optimizers),
        ("freeze_bn", space.freeze_bn_choices),
    ):
        if name not in wanted:
            continue
        value = wanted[name]
        if name in space.fixed and space.fixed[name] != value:
            raise _SkipError(f"{name} {_show(value)} is fixed to {_show(space.fixed[name])} here")
        if name not in space.fixed and value not in choices:
            allowed = ", ".join(_show(choice) for choice in choices)
            raise _SkipError(f"{name} {_show(value)} is not among the study's choices ({allowed})")
    return wanted


def _position(choices: Sequence[int], position: float) -> int:
    """The choice nearest `position` of the way from the shortest to the longest."""
    low, high = min(choices), max(choices)
    target = low + position * (high - low)
    return min(choices, key=lambda choice: abs(choice - target))


#: The recipe's own values: a move of one of these is worth telling (epochs and unfreezing are
#: placed by position and share, and what the recipe leaves open is the space's to choose).
_VALUES = frozenset({"head_lr", "batch_size", "head_dropout", "warmup_frac"})


class _Placer:
    """A `Suggester` that answers the recipe's values, moved into what `sample` asks for."""

    def __init__(self, wanted: Mapping[str, Any]) -> None:
        self.wanted = wanted
        self.params: dict[str, Any] = {}
        self.moved: list[str] = []

    def _answer(self, name: str, value: Any, placed: Any) -> Any:
        if placed != value and (name in _VALUES or name.startswith("ft_lr_")):
            self.moved.append(f"{name} {_show(value)} → {_show(placed)}")
        self.params[name] = placed
        return placed

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float:
        value = self.wanted.get(name)
        if value is None:
            value = math.sqrt(low * high) if log else (low + high) / 2
        return float(self._answer(name, value, min(max(float(value), low), high)))

    def suggest_int(
        self, name: str, low: int, high: int, *, step: int = 1, log: bool = False
    ) -> int:
        value = int(self.wanted.get(name, low))
        return int(self._answer(name, value, min(max(value, low), high)))

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        value = self.wanted.get(name, choices[0])
        if any(value == choice and type(value) is type(choice) for choice in choices):
            return self._answer(name, value, value)
        numeric = [
            choice
            for choice in choices
            if isinstance(choice, int | float) and not isinstance(choice, bool)
        ]
        if numeric and isinstance(value, int | float) and not isinstance(value, bool):
            return self._answer(name, value, min(numeric, key=lambda c: abs(c - value)))
        # A choice the recipe leaves open (augmentation, say) that the space lacks: its first.
        return self._answer(name, value, choices[0])


def _show(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    return f"{value:.3g}" if isinstance(value, float) else str(value)
