"""Study files: a study in YAML, `python -m search.run --study path/to/study.yaml`.

A study file names a base space (a registered study's, or `finetune`, the generic space for any
backbone), may move it to another backbone, image size or weights, override any range or
choice, fix parameters, change roles, and enqueue known-good configs (TrainConfig YAML files,
a previous study's `best.yaml` say). Relative paths (weights, data and validation folders,
enqueued configs) are resolved against the file's folder. It is validated like a TrainConfig:
every problem is one `ConfigError` naming the file and the key, raised before anything is
written. `resolve_study` turns a `--study` argument, a name or a file, into a `StudySpec`.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from search.pruning.decision import PRUNERS
from search.study.registry import (
    RECOMMENDED_PRUNER,
    STUDIES,
    EnqueuedTrial,
    StudySpec,
    get_study_spec,
)
from spaces.finetune import FineTuneSpace
from spaces.generic import for_backbone, retarget
from spaces.parameters import Role
from trainers.config.messages import describe_validation_error
from trainers.config.schema import (
    SYNTHETIC_PREFIX,
    TFDS_PREFIX,
    AugmentationPolicy,
    TrainConfig,
    load_config,
    read_text_file,
)
from trainers.errors import ConfigError
from trainers.model.backbones import UnknownBackboneError, get_backbone

BaseSpace = Literal["effnet_b4", "effnet_b0", "demo", "smoke", "finetune"]
#: The generic space's name: effnet_b4's ranges on the file's `backbone` (`spaces.generic`).
GENERIC = "finetune"
STUDY_FILE_SUFFIXES = (".yaml", ".yml")

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


class StudyFileModel(BaseModel):
    """The keys of a study file; what they mean is in docs/studies.md ("Study files")."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    space: BaseSpace
    backbone: str | None = None
    #: `imagenet`, or a `.weights.h5` file (relative to the study file).
    weights: str | None = None
    image_size: int | None = Field(None, ge=32, le=2048)
    data: str | None = None
    validation: float | str | None = None
    n_trials: int | None = Field(None, ge=1)
    budget_epochs: int | None = Field(None, ge=1)
    budget_hours: float | None = Field(None, gt=0)
    pruner: str | None = None
    unfreeze_ladder: tuple[int, ...] | None = None
    ranges: dict[str, tuple[Any, ...]] = {}
    fixed: dict[str, Any] = {}
    roles: dict[str, Literal["scientific", "nuisance"]] = {}
    enqueue: tuple[str, ...] = ()
    seed: int = 0

    @field_validator("pruner")
    @classmethod
    def _known_pruner(cls, value: str | None) -> str | None:
        if value is not None and value not in PRUNERS:
            raise ValueError(f"got {value!r}; allowed: {', '.join(PRUNERS)}")
        return value


@dataclass(frozen=True)
class LoadedStudy:
    """A `--study` argument resolved: the spec, and the budgets a study file sets."""

    spec: StudySpec
    budget_epochs: int | None = None
    budget_hours: float | None = None
    #: The study file, or None for a registered study.
    path: Path | None = None


def is_study_file(argument: str) -> bool:
    return argument.endswith(STUDY_FILE_SUFFIXES) or Path(argument).is_file()


def resolve_study(argument: str) -> LoadedStudy:
    """A registered study's name, or a study file's path."""
    if is_study_file(argument):
        return load_study_file(Path(argument))
    return LoadedStudy(get_study_spec(argument))


def load_study_file(path: Path) -> LoadedStudy:
    text = read_text_file(path, "study")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path}: expected a mapping with keys name, space, ...")
    try:
        model = StudyFileModel.model_validate(raw)
    except ValidationError as error:
        message = describe_validation_error(error, root=StudyFileModel, what="study file")
        raise ConfigError(f"{path}: {message}") from None
    try:
        return _build(model, path.resolve().parent, path)
    except _KeyError as error:
        raise ConfigError(f"{path}: {error.key}: {error.message}") from None


class _KeyError(Exception):
    """A problem with one key of a study file."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


def _build(model: StudyFileModel, folder: Path, path: Path) -> LoadedStudy:
    space = _model_space(model, folder)
    space = _with_ladder(space, model.unfreeze_ladder)
    space = _with_ranges(space, model.ranges)
    space = _with_fixed(space, model.fixed)
    space = _with_roles(space, model.roles)
    if model.validation is not None:
        validation = model.validation
        space = replace(
            space,
            validation=_local(validation, folder) if isinstance(validation, str) else validation,
        )
    base = STUDIES.get(model.space) or StudySpec(
        name=GENERIC,
        description="",
        space=space,
        default_data="",
        n_trials=60,
        pruner=RECOMMENDED_PRUNER,
    )
    data = _local(model.data, folder) if model.data is not None else base.default_data
    if not data:
        raise _KeyError("data", f"required with space: {GENERIC} (a folder, tfds:NAME, ...)")
    enqueued = _enqueued(model.enqueue, folder)
    changes_head = "head_epochs" in model.ranges or "head_epochs" in model.fixed or bool(enqueued)
    spec = replace(
        base,
        name=model.name,
        description=model.description or f"{model.space} space, study file {path}",
        space=space,
        default_data=data,
        n_trials=model.n_trials or base.n_trials,
        enqueued=tuple(enqueued),
        pruner=model.pruner or base.pruner,
        # The Optuna pruner waits for the longest head phase (StudySpec).
        pruner_warmup_epochs=_longest_head(space, enqueued)
        if changes_head
        else base.pruner_warmup_epochs,
        seed=model.seed,
    )
    return LoadedStudy(spec, model.budget_epochs, model.budget_hours, path)


def _model_space(model: StudyFileModel, folder: Path) -> FineTuneSpace:
    if model.backbone is not None:
        try:
            get_backbone(model.backbone)
        except UnknownBackboneError as error:
            raise _KeyError("backbone", str(error)) from None
    weights = None if model.weights is None else local_weights(model.weights, folder, "weights")
    if model.space == GENERIC:
        if model.backbone is None:
            raise _KeyError("backbone", f"required with space: {GENERIC}")
        base = for_backbone(model.backbone)
    else:
        base_space = get_study_spec(model.space).space
        assert isinstance(base_space, FineTuneSpace)
        base = base_space
    return retarget(base, backbone=model.backbone, image_size=model.image_size, weights=weights)


def local_weights(weights: str, folder: Path, key: str) -> str:
    """`imagenet`, or the absolute path of a weights file named relative to `folder`."""
    if weights == "imagenet":
        return weights
    resolved = (folder / weights).resolve()
    if not resolved.is_file():
        raise _KeyError(key, f"{resolved} does not exist (`imagenet` or a .weights.h5 file)")
    return str(resolved)


def _local(source: str, folder: Path) -> str:
    """A folder named relative to the study file, made absolute; `tfds:`, `synthetic:` and
    TFDS split names stay as they are."""
    if source.startswith((TFDS_PREFIX, SYNTHETIC_PREFIX)):
        return source
    if "/" not in source and not (folder / source).exists():
        return source
    return str((folder / source).resolve())


def _with_ladder(space: FineTuneSpace, ladder: tuple[int, ...] | None) -> FineTuneSpace:
    if ladder is None:
        return space
    units = get_backbone(space.backbone).unit_count
    if not ladder or any(step < 0 or step > units for step in ladder):
        raise _KeyError(
            "unfreeze_ladder",
            f"steps are whole units unfrozen, 0..{units} on {space.backbone}; got {list(ladder)}",
        )
    if any(later <= earlier for earlier, later in itertools.pairwise(ladder)):
        raise _KeyError("unfreeze_ladder", f"steps must increase; got {list(ladder)}")
    return replace(space, unfreeze_ladder=ladder)


def _unknown(key: str, name: str) -> _KeyError:
    names = sorted({*FLOAT_RANGES, *CHOICES})
    hint = "; the ladder is `unfreeze_ladder`" if name == "unfreeze_level" else ""
    return _KeyError(f"{key}.{name}", f"unknown parameter{hint}; parameters: {', '.join(names)}")


def _with_ranges(space: FineTuneSpace, ranges: Mapping[str, tuple[Any, ...]]) -> FineTuneSpace:
    changes: dict[str, Any] = {}
    for name, values in ranges.items():
        key = f"ranges.{name}"
        if name in FLOAT_RANGES:
            field_name, log = FLOAT_RANGES[name]
            changes[field_name] = _float_range(key, values, log=log)
            backbone = get_backbone(space.backbone)
            if name == "drop_connect_rate" and not backbone.supports_drop_connect:
                raise _KeyError(key, f"{space.backbone} has no stochastic depth to set")
        elif name in CHOICES:
            field_name, valid, allowed = CHOICES[name]
            if not values:
                raise _KeyError(key, "needs at least one choice")
            bad = [value for value in values if not valid(value)]
            if bad:
                raise _KeyError(key, f"got {bad[0]!r}; choices must be {allowed}")
            if len(set(map(repr, values))) != len(values):
                raise _KeyError(key, f"a choice is listed twice: {list(values)}")
            changes[field_name] = tuple(float(v) if name in FLOAT_CHOICES else v for v in values)
        else:
            raise _unknown("ranges", name)
    return replace(space, **changes)


def _float_range(key: str, values: tuple[Any, ...], *, log: bool) -> tuple[float, float]:
    numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    if len(values) != 2 or len(numbers) != 2:
        raise _KeyError(key, f"a range is [low, high]; got {list(values)}")
    low, high = float(numbers[0]), float(numbers[1])
    if low > high:
        raise _KeyError(key, f"low {low:g} is above high {high:g}")
    if log and low <= 0:
        raise _KeyError(key, f"the range is on a log scale, so low must be above 0; got {low:g}")
    if low < 0:
        raise _KeyError(key, f"must be 0 or more; got {low:g}")
    return low, high


def _with_fixed(space: FineTuneSpace, fixed: Mapping[str, Any]) -> FineTuneSpace:
    values: dict[str, Any] = {}
    for name, value in fixed.items():
        key = f"fixed.{name}"
        if name == "unfreeze_level":
            top = len(space.unfreeze_ladder) - 1
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= top:
                raise _KeyError(key, f"a step of the unfreeze ladder, 0..{top}; got {value!r}")
        elif name == "use_l2sp":
            if not isinstance(value, bool):
                raise _KeyError(key, f"true or false; got {value!r}")
            if value and not space.l2sp_alpha and "l2sp_alpha" not in fixed:
                raise _KeyError(key, "this space has no l2sp_alpha; set ranges.l2sp_alpha")
        elif name in FLOAT_RANGES:
            value = _float_range(key, (value, value), log=FLOAT_RANGES[name][1])[0]
            backbone = get_backbone(space.backbone)
            if name == "drop_connect_rate" and not backbone.supports_drop_connect:
                raise _KeyError(key, f"{space.backbone} has no stochastic depth to set")
        elif name in CHOICES:
            _, valid, allowed = CHOICES[name]
            if not valid(value):
                raise _KeyError(key, f"got {value!r}; must be one of {allowed}")
            value = float(value) if name in FLOAT_CHOICES else value
        else:
            raise _unknown("fixed", name)
        values[name] = value
    return replace(space, fixed={**space.fixed, **values})


def _with_roles(space: FineTuneSpace, roles: Mapping[str, str]) -> FineTuneSpace:
    searched = {p.name for p in space.parameters() if p.role != Role.FIXED}
    for name in roles:
        if name not in searched:
            raise _KeyError(
                f"roles.{name}",
                f"not a searched parameter of this space; searched: {', '.join(sorted(searched))}",
            )
    return replace(space, roles={**space.roles, **{k: Role(v) for k, v in roles.items()}})


def _longest_head(space: FineTuneSpace, enqueued: list[EnqueuedTrial]) -> int:
    """The most epochs a trial's head phase may train: the space's, or an enqueued config's."""
    heads = [int(space.fixed.get("head_epochs", max(space.head_epochs)))]
    heads += [known.config.phases[0].epochs for known in enqueued if known.config is not None]
    return max(heads)


def _enqueued(paths: tuple[str, ...], folder: Path) -> list[EnqueuedTrial]:
    known = []
    for index, name in enumerate(paths):
        resolved = (folder / name).resolve()
        if not resolved.is_file():
            raise _KeyError(f"enqueue[{index}]", f"{resolved} does not exist")
        try:
            config = load_config(resolved)
        except ConfigError as error:
            raise _KeyError(f"enqueue[{index}]", str(error)) from None
        weights = config.model.weights
        if weights not in (None, "imagenet"):
            # Named relative to the config file, as the study file names its own.
            where = resolved.parent / weights
            if not where.is_file():
                raise _KeyError(f"enqueue[{index}]", f"model.weights: {where} does not exist")
            model = config.model.model_copy(update={"weights": str(where.resolve())})
            config = config.model_copy(update={"model": model})
        # Labelled as the file names it, so that two `best.yaml`s of different folders differ.
        known.append(EnqueuedTrial(name, {}, config.model_copy(update={"provenance": None})))
    return known


def study_config(config: TrainConfig, space: FineTuneSpace, data_source: str) -> TrainConfig:
    """An enqueued config on the study's data: its source, hold-out and generated sizes."""
    raw = config.to_dict()
    raw["data"] |= {"source": data_source, "validation": space.validation}
    raw["data"].pop("synthetic", None)
    if space.synthetic is not None and data_source.startswith(SYNTHETIC_PREFIX):
        raw["data"]["synthetic"] = dict(space.synthetic)
    return TrainConfig.from_dict(raw)


def with_overrides(
    spec: StudySpec,
    *,
    backbone: str | None = None,
    image_size: int | None = None,
    weights: str | None = None,
) -> StudySpec:
    """`spec` moved by `--backbone`, `--image-size` and `--weights` (a weights path relative to
    the working directory). Known configs that are no longer points of the space are dropped."""
    if backbone is None and image_size is None and weights is None:
        return spec
    space = spec.space
    if not isinstance(space, FineTuneSpace):
        raise ConfigError(
            f"--backbone, --image-size, --weights: study {spec.name!r} has a space written as "
            "a function; change it in its code"
        )
    if backbone is not None:
        try:
            get_backbone(backbone)
        except UnknownBackboneError as error:
            raise ConfigError(f"--backbone: {error}") from None
    if image_size is not None and not 32 <= image_size <= 2048:
        raise ConfigError(f"--image-size: got {image_size}; must be 32..2048 pixels")
    if weights is not None:
        try:
            weights = local_weights(weights, Path.cwd(), "--weights")
        except _KeyError as error:
            raise ConfigError(str(error)) from None
    moved = retarget(space, backbone=backbone, image_size=image_size, weights=weights)
    parameters = {p.name: p for p in moved.parameters() if p.role != Role.FIXED}
    kept = tuple(
        known
        for known in spec.enqueued
        if (known.config is not None and _same_model(known.config, moved))
        or (
            known.config is None
            and all(
                parameters[name].contains(value)
                for name, value in known.params.items()
                if name in parameters
            )
        )
    )
    return replace(spec, space=moved, enqueued=kept)


def _same_model(config: TrainConfig, space: FineTuneSpace) -> bool:
    """Whether a config trains the backbone, weights and image size the space does."""
    model = (config.model.backbone, config.model.weights, config.data.image_size)
    return model == (space.backbone, space.weights, space.image_size)
