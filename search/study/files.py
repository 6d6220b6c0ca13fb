"""Study files: a study in YAML, `python -m search.run --study path/to/study.yaml`.

A study file names a base space (a registered study's, or `finetune`, the generic space for any
backbone), may move it to another backbone, image size or weights, override any range or
choice, fix parameters, change roles, and enqueue known-good configs (TrainConfig YAML files,
a previous study's `best.yaml` say). Relative paths (weights, data and validation folders,
enqueued configs) are resolved against the file's folder. It is validated like a TrainConfig:
every mistake in it is found, and all are one `ConfigError` naming the file and, a line each,
the keys, raised before anything is written. `resolve_study` turns a `--study` argument, a name
or a file, into a `StudySpec`. How the file changes its base space is
`search.study.space_changes`; the command line's overrides are `search.study.overrides`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from search.pruning.decision import PRUNERS
from search.study.portfolio import NO_PORTFOLIO, SHIPPED, SHIPPED_PORTFOLIO, portfolio_path
from search.study.registry import (
    RECOMMENDED_PRUNER,
    STUDIES,
    EnqueuedTrial,
    StudySpec,
    get_study_spec,
)
from search.study.space_changes import Problems, with_fixed, with_ladder, with_ranges, with_roles
from spaces import effnet_b4
from spaces.finetune import FineTuneSpace
from spaces.generic import for_backbone, retarget
from trainers.config.messages import validation_problems
from trainers.config.schema import SYNTHETIC_PREFIX, TFDS_PREFIX, load_config, read_text_file
from trainers.errors import ConfigError
from trainers.model.backbones import UnknownBackboneError, get_backbone

BaseSpace = Literal["effnet_b4", "effnet_b0", "demo", "smoke", "finetune"]
#: The generic space's name: effnet_b4's ranges on the file's `backbone` (`spaces.generic`).
GENERIC = "finetune"
STUDY_FILE_SUFFIXES = (".yaml", ".yml")
#: Entries of these keys are refused one parameter at a time; other keys are refused whole.
_PER_PARAMETER = ("ranges", "fixed", "roles")
#: Stands in for a name the schema refused, so that the rest of the file is still checked.
_NAME_STAND_IN = "study"


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
    #: `shipped`, `none`, or a portfolio file (`search.study.portfolio`).
    portfolio: str = SHIPPED
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
    #: The portfolio file of recipes tried first; None: none.
    portfolio: Path | None = SHIPPED_PORTFOLIO


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
    problems = Problems()
    model = _validated(raw, problems)
    loaded = None if model is None else _build(model, path.resolve().parent, path, problems)
    if loaded is None:
        raise ConfigError(f"{path}: {problems.describe()}")
    return loaded


def _validated(raw: Mapping[str, Any], problems: Problems) -> StudyFileModel | None:
    """The file's keys, validated; what the schema refuses is recorded and left out, so that
    the rest is still checked. None if what is left is no study file (no `space`, say)."""
    try:
        return StudyFileModel.model_validate(raw)
    except ValidationError as error:
        refused = [tuple(item["loc"]) for item in error.errors(include_url=False)]
        kept, keys = _without(raw, refused)
        problems.add_schema_lines(keys, validation_problems(error, root=StudyFileModel))
    try:
        return StudyFileModel.model_validate({"name": _NAME_STAND_IN, **kept})
    except ValidationError:
        return None


def _without(
    raw: Mapping[str, Any], refused: Sequence[tuple[int | str, ...]]
) -> tuple[dict[str, Any], set[str]]:
    """`raw` without the entries at the `refused` locations, and the keys they were."""
    kept = dict(raw)
    keys = set()
    for location in refused:
        key = str(location[0]) if location else ""
        entries = kept.get(key)
        if key in _PER_PARAMETER and len(location) > 1 and isinstance(entries, Mapping):
            kept[key] = {name: v for name, v in entries.items() if name != location[1]}
            keys.add(f"{key}.{location[1]}")
        else:
            kept.pop(key, None)
            keys.add(key)
    return kept, keys


def _build(
    model: StudyFileModel, folder: Path, path: Path, problems: Problems
) -> LoadedStudy | None:
    """The study the file describes, or None if it has mistakes (all of them in `problems`)."""
    space = _model_space(model, folder, problems)
    space = with_ladder(space, model.unfreeze_ladder, problems)
    space = with_ranges(space, model.ranges, problems)
    space = with_fixed(space, model.fixed, problems)
    space = with_roles(space, model.roles, problems)
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
    if not data and not problems.about("data"):
        problems.add("data", f"required with space: {GENERIC} (a folder, tfds:NAME, ...)")
    enqueued = _enqueued(model.enqueue, folder, problems)
    portfolio = portfolio_path(model.portfolio, folder)
    if portfolio is not None and not portfolio.is_file():
        problems.add(
            "portfolio", f"{portfolio} does not exist ({SHIPPED}, {NO_PORTFOLIO} or a file)"
        )
    if problems.lines:
        return None
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
    return LoadedStudy(spec, model.budget_epochs, model.budget_hours, path, portfolio)


def _model_space(model: StudyFileModel, folder: Path, problems: Problems) -> FineTuneSpace:
    """The base space on the file's backbone, image size and weights. Where the backbone is
    wrong, the base space's own stands in, so that the rest of the file is still checked (the
    checks that depend on the backbone then skip it)."""
    backbone = model.backbone
    if backbone is not None:
        try:
            get_backbone(backbone)
        except UnknownBackboneError as error:
            problems.add("backbone", str(error))
            backbone = None
    weights = None
    if model.weights is not None:
        try:
            weights = local_weights(model.weights, folder, "weights")
        except ConfigError as error:
            problems.add_line("weights", str(error))
    if model.space == GENERIC:
        if model.backbone is None and not problems.about("backbone"):
            problems.add("backbone", f"required with space: {GENERIC}")
        base = for_backbone(backbone) if backbone is not None else effnet_b4.SPACE
    else:
        base_space = get_study_spec(model.space).space
        assert isinstance(base_space, FineTuneSpace)
        base = base_space
    return retarget(base, backbone=backbone, image_size=model.image_size, weights=weights)


def local_weights(weights: str, folder: Path, key: str) -> str:
    """`imagenet`, or the absolute path of a weights file named relative to `folder`; a file
    that does not exist is a `ConfigError` naming `key`."""
    if weights == "imagenet":
        return weights
    resolved = (folder / weights).resolve()
    if not resolved.is_file():
        raise ConfigError(f"{key}: {resolved} does not exist (`imagenet` or a .weights.h5 file)")
    return str(resolved)


def _local(source: str, folder: Path) -> str:
    """A folder named relative to the study file, made absolute; `tfds:`, `synthetic:` and
    TFDS split names stay as they are."""
    if source.startswith((TFDS_PREFIX, SYNTHETIC_PREFIX)):
        return source
    if "/" not in source and not (folder / source).exists():
        return source
    return str((folder / source).resolve())


def _longest_head(space: FineTuneSpace, enqueued: list[EnqueuedTrial]) -> int:
    """The most epochs a trial's head phase may train: the space's, or an enqueued config's."""
    heads = [int(space.fixed.get("head_epochs", max(space.head_epochs)))]
    heads += [known.config.phases[0].epochs for known in enqueued if known.config is not None]
    return max(heads)


def _enqueued(paths: tuple[str, ...], folder: Path, problems: Problems) -> list[EnqueuedTrial]:
    known = []
    for index, name in enumerate(paths):
        key = f"enqueue[{index}]"
        resolved = (folder / name).resolve()
        if not resolved.is_file():
            problems.add(key, f"{resolved} does not exist")
            continue
        try:
            config = load_config(resolved)
        except ConfigError as error:
            problems.add(key, str(error))
            continue
        weights = config.model.weights
        if weights not in (None, "imagenet"):
            # Named relative to the config file, as the study file names its own.
            where = resolved.parent / weights
            if not where.is_file():
                problems.add(key, f"model.weights: {where} does not exist")
                continue
            model = config.model.model_copy(update={"weights": str(where.resolve())})
            config = config.model_copy(update={"model": model})
        # Labelled as the file names it, so that two `best.yaml`s of different folders differ.
        known.append(EnqueuedTrial(name, {}, config.model_copy(update={"provenance": None})))
    return known
