"""How a study file changes its base space: the unfreeze ladder, ranges and choices, fixed
values and roles (`search.study.files` reads the file and calls these in that order).

Each function applies the entries that are right and records every one that is wrong in
`Problems`, one line naming its key, so that a file with several mistakes is reported whole.
A check that depends on an entry found wrong is skipped rather than judged against a space the
file did not mean (a ladder step is not checked against a ladder that was refused, a role not
against parameters whose range was): one mistake, one line.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, get_args

from spaces.finetune import FineTuneSpace
from spaces.parameters import Role
from trainers.config.messages import describe_problems
from trainers.config.schema import AugmentationPolicy
from trainers.model.backbones import get_backbone

#: Float ranges a file may override: parameter -> (FineTuneSpace field, log scale).
FLOAT_RANGES: dict[str, tuple[str, bool]] = {
    "head_lr": ("head_lr", True),
    "weight_decay": ("weight_decay", True),
    "head_dropout": ("head_dropout", False),
    "drop_connect_rate": ("drop_connect_rate", False),
    "ft_lr_adamw": ("ft_lr_adamw", True),
    "ft_lr_sgd": ("ft_lr_sgd", True),
    "l2sp_alpha": ("l2sp_alpha", True),
}


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _fraction(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < 1


#: Choices that are fractions: YAML's `0` becomes `0.0`, so that a config's 0.0 is a choice.
FLOAT_CHOICES = frozenset({"label_smoothing", "warmup_frac"})


#: Choices a file may override: parameter -> (FineTuneSpace field, what a choice must be).
CHOICES: dict[str, tuple[str, Any, str]] = {
    "head_epochs": ("head_epochs", _positive_int, "whole numbers >= 1"),
    "batch_size": ("batch_sizes", _positive_int, "whole numbers >= 1"),
    "ft_epochs": ("ft_epochs", _positive_int, "whole numbers >= 1"),
    "augmentation": (
        "augmentations",
        lambda value: value in get_args(AugmentationPolicy),
        ", ".join(get_args(AugmentationPolicy)),
    ),
    "label_smoothing": ("label_smoothing", _fraction, "numbers in [0, 1)"),
    "ft_optimizer": ("ft_optimizers", lambda value: value in ("adamw", "sgd"), "adamw, sgd"),
    "warmup_frac": ("warmup_fractions", _fraction, "numbers in [0, 1)"),
    "freeze_bn": ("freeze_bn_choices", lambda value: isinstance(value, bool), "true, false"),
}

#: Keys that decide which parameters a space has (the ladder whether it fine-tunes, the optional
#: floats whether they exist, the optimizers which rates): after a mistake in one, no role is
#: judged, since the searched parameters are not known.
_SHAPE_KEYS = (
    "backbone",
    "unfreeze_ladder",
    "ranges.ft_optimizer",
    "ranges.l2sp_alpha",
    "ranges.drop_connect_rate",
    "fixed.use_l2sp",
    "fixed.l2sp_alpha",
    "fixed.drop_connect_rate",
)


class Problems:
    """The mistakes found in one study file so far, one line each, in the order found."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._keys: set[str] = set()
        #: Whether a line came from the file's schema (`StudyFileModel`) rather than a check here.
        self._from_schema = False

    def add(self, key: str, message: str) -> None:
        self.add_line(key, f"{key}: {message}")

    def add_line(self, key: str, line: str) -> None:
        """A mistake about `key` whose line is already worded (it names the key itself)."""
        self.lines.append(line)
        self._keys.add(key)

    def add_schema_lines(self, keys: set[str], lines: list[str]) -> None:
        """The schema's refusals (`validation_problems`), about the entries in `keys`."""
        self.lines += lines
        self._keys |= keys
        self._from_schema = True

    def about(self, *keys: str) -> bool:
        """Whether a mistake was found in any of `keys` (`backbone`, `ranges.head_lr`, ...);
        a whole key refused (`ranges`) is a mistake about each of its entries."""
        return any(
            key == found or key.startswith(f"{found}.") for key in keys for found in self._keys
        )

    def describe(self) -> str:
        """The error's message: one check's mistake is its own line (it names its key); the
        schema's, or several, are worded as a config's are (`describe_problems`)."""
        if len(self.lines) == 1 and not self._from_schema:
            return self.lines[0]
        return describe_problems(self.lines, what="study file")


def with_ladder(
    space: FineTuneSpace, ladder: tuple[int, ...] | None, problems: Problems
) -> FineTuneSpace:
    if ladder is None:
        return space
    # On a backbone found wrong, a step can only be checked for being a number of units.
    units = None if problems.about("backbone") else get_backbone(space.backbone).unit_count
    if not ladder or any(step < 0 or (units is not None and step > units) for step in ladder):
        steps = "0 or more" if units is None else f"0..{units} on {space.backbone}"
        problems.add(
            "unfreeze_ladder", f"steps are whole units unfrozen, {steps}; got {list(ladder)}"
        )
        return space
    if any(later <= earlier for earlier, later in itertools.pairwise(ladder)):
        problems.add("unfreeze_ladder", f"steps must increase; got {list(ladder)}")
        return space
    return replace(space, unfreeze_ladder=ladder)


def _unknown(problems: Problems, key: str, name: str) -> None:
    names = sorted({*FLOAT_RANGES, *CHOICES})
    hint = "; the ladder is `unfreeze_ladder`" if name == "unfreeze_level" else ""
    problems.add(f"{key}.{name}", f"unknown parameter{hint}; parameters: {', '.join(names)}")


def _without_stochastic_depth(space: FineTuneSpace, key: str, problems: Problems) -> bool:
    """Whether `key` sets drop-connect on a backbone that has none (recorded); a backbone
    found wrong is not judged."""
    if problems.about("backbone") or get_backbone(space.backbone).supports_drop_connect:
        return False
    problems.add(key, f"{space.backbone} has no stochastic depth to set")
    return True


def with_ranges(
    space: FineTuneSpace, ranges: Mapping[str, tuple[Any, ...]], problems: Problems
) -> FineTuneSpace:
    changes: dict[str, Any] = {}
    for name, values in ranges.items():
        key = f"ranges.{name}"
        if name in FLOAT_RANGES:
            field_name, log = FLOAT_RANGES[name]
            low_high = _float_range(key, values, log=log, problems=problems)
            if low_high is None:
                continue
            if name == "drop_connect_rate" and _without_stochastic_depth(space, key, problems):
                continue
            changes[field_name] = low_high
        elif name in CHOICES:
            field_name, valid, allowed = CHOICES[name]
            bad = [value for value in values if not valid(value)]
            if not values:
                problems.add(key, "needs at least one choice")
            elif bad:
                problems.add(key, f"got {bad[0]!r}; choices must be {allowed}")
            elif len(set(map(repr, values))) != len(values):
                problems.add(key, f"a choice is listed twice: {list(values)}")
            else:
                changes[field_name] = tuple(
                    float(v) if name in FLOAT_CHOICES else v for v in values
                )
        else:
            _unknown(problems, "ranges", name)
    return replace(space, **changes)


def _float_range(
    key: str, values: tuple[Any, ...], *, log: bool, problems: Problems
) -> tuple[float, float] | None:
    """`values` as a (low, high) range, or None if it is not one (recorded)."""
    numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    if len(values) != 2 or len(numbers) != 2:
        problems.add(key, f"a range is [low, high]; got {list(values)}")
        return None
    low, high = float(numbers[0]), float(numbers[1])
    if low > high:
        problems.add(key, f"low {low:g} is above high {high:g}")
    elif log and low <= 0:
        problems.add(key, f"the range is on a log scale, so low must be above 0; got {low:g}")
    elif low < 0:
        problems.add(key, f"must be 0 or more; got {low:g}")
    else:
        return low, high
    return None


def with_fixed(space: FineTuneSpace, fixed: Mapping[str, Any], problems: Problems) -> FineTuneSpace:
    values: dict[str, Any] = {}
    for name, value in fixed.items():
        key = f"fixed.{name}"
        if name == "unfreeze_level":
            if problems.about("unfreeze_ladder"):
                continue  # a step of a ladder that was refused
            top = len(space.unfreeze_ladder) - 1
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= top:
                problems.add(key, f"a step of the unfreeze ladder, 0..{top}; got {value!r}")
                continue
        elif name == "use_l2sp":
            if not isinstance(value, bool):
                problems.add(key, f"true or false; got {value!r}")
                continue
            no_alpha = not space.l2sp_alpha and "l2sp_alpha" not in fixed
            if value and no_alpha and not problems.about("ranges.l2sp_alpha"):
                problems.add(key, "this space has no l2sp_alpha; set ranges.l2sp_alpha")
                continue
        elif name in FLOAT_RANGES:
            low_high = _float_range(
                key, (value, value), log=FLOAT_RANGES[name][1], problems=problems
            )
            if low_high is None:
                continue
            if name == "drop_connect_rate" and _without_stochastic_depth(space, key, problems):
                continue
            value = low_high[0]
        elif name in CHOICES:
            _, valid, allowed = CHOICES[name]
            if not valid(value):
                problems.add(key, f"got {value!r}; must be one of {allowed}")
                continue
            value = float(value) if name in FLOAT_CHOICES else value
        else:
            _unknown(problems, "fixed", name)
            continue
        values[name] = value
    return replace(space, fixed={**space.fixed, **values})


def with_roles(space: FineTuneSpace, roles: Mapping[str, str], problems: Problems) -> FineTuneSpace:
    if problems.about(*_SHAPE_KEYS):
        return space  # which parameters are searched is not known
    searched = {p.name for p in space.parameters() if p.role != Role.FIXED}
    for name in roles:
        if name not in searched and not problems.about(f"ranges.{name}", f"fixed.{name}"):
            problems.add(
                f"roles.{name}",
                f"not a searched parameter of this space; searched: {', '.join(sorted(searched))}",
            )
    known = {name: Role(role) for name, role in roles.items() if name in searched}
    return replace(space, roles={**space.roles, **known})
