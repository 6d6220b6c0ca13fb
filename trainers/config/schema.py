"""The validated, immutable description of one fine-tuning job, and its YAML form.

A `TrainConfig` holds data, model, an ordered list of phases and the job-wide settings. Unknown
keys, wrong types and out-of-range values raise `ConfigError`, whose message names the key and
the allowed values (worded by `trainers.config.messages`). Loading fills in backbone defaults
(image size, drop-connect rate), so the YAML written back is the resolved config, and
YAML -> config -> YAML is a fixed point.

Imports neither TensorFlow nor Keras: the spaces and the search coordinator use this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from trainers.config.messages import describe_validation_error
from trainers.data.synthetic import FAR_CLASSES, ORIENTATION_CLASSES
from trainers.errors import ConfigError
from trainers.model.backbones import BACKBONES, get_backbone

__all__ = [
    "STUDY_FILE_KEYS",
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "PhaseConfig",
    "Provenance",
    "SyntheticData",
    "TrainConfig",
    "load_config",
    "read_text_file",
    "save_config",
]

AugmentationPolicy = Literal["none", "basic", "randaugment"]
ClassWeighting = Literal["none", "balanced"]
OptimizerName = Literal["adam", "adamw", "sgd"]
ScheduleName = Literal["constant", "cosine"]
SyntheticTask = Literal["source", "target", "far", "orientation"]

TFDS_PREFIX = "tfds:"
SYNTHETIC_PREFIX = "synthetic:"


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class SyntheticData(_Frozen):
    """Size of a generated dataset (only for `synthetic:` sources)."""

    classes: int = Field(8, ge=2, le=120)
    images_per_class: int = Field(60, ge=4, le=100_000)


class DataConfig(_Frozen):
    """Where the images come from and how they are split and augmented."""

    #: A directory of class subfolders, `tfds:NAME`, or `synthetic:source|target|far`.
    source: str = Field(min_length=1)
    #: Square input size in pixels; defaults to the backbone's native resolution.
    image_size: int = Field(ge=32, le=2048)
    #: A fraction of the training images held out (stratified, by `seed`), or a separate
    #: validation folder (directory sources) / split name such as "test" (tfds sources).
    validation: float | str = 0.2
    #: Seeds the train/validation split, so every trial of a study sees the same split.
    seed: int = 0
    augmentation: AugmentationPolicy = "none"
    class_weighting: ClassWeighting = "none"
    #: Keep decoded, resized images in memory after the first epoch.
    cache: bool = False
    synthetic: SyntheticData | None = None

    @field_validator("validation")
    @classmethod
    def _validation_is_fraction_or_name(cls, value: float | str) -> float | str:
        if isinstance(value, str):
            if not value.strip():
                raise ValueError("must be a fraction in (0, 0.9] or a folder / split name")
            return value
        if not 0.0 < value <= 0.9:
            raise ValueError(f"the held-out fraction must be in (0, 0.9], got {value}")
        return value

    @model_validator(mode="after")
    def _source_is_well_formed(self) -> DataConfig:
        if self.source.startswith(TFDS_PREFIX) and not self.source[len(TFDS_PREFIX) :]:
            raise ValueError("source: 'tfds:' needs a dataset name, e.g. tfds:stanford_dogs")
        if self.source.startswith(SYNTHETIC_PREFIX):
            task = self.source[len(SYNTHETIC_PREFIX) :]
            if task not in get_args(SyntheticTask):
                raise ValueError(
                    f"source: synthetic task {task!r} is unknown; allowed: "
                    + ", ".join(f"synthetic:{name}" for name in get_args(SyntheticTask))
                )
            if isinstance(self.validation, str):
                raise ValueError("validation: synthetic sources take a held-out fraction")
            most = {"far": len(FAR_CLASSES), "orientation": ORIENTATION_CLASSES}.get(task)
            if most is not None and self.synthetic and self.synthetic.classes > most:
                raise ValueError(
                    f"synthetic.classes: synthetic:{task} has {most} classes, "
                    f"got {self.synthetic.classes}"
                )
        elif self.synthetic is not None:
            raise ValueError("synthetic: applies only to synthetic: sources")
        return self

    @property
    def source_kind(self) -> Literal["directory", "tfds", "synthetic"]:
        if self.source.startswith(TFDS_PREFIX):
            return "tfds"
        if self.source.startswith(SYNTHETIC_PREFIX):
            return "synthetic"
        return "directory"


class ModelConfig(_Frozen):
    """Backbone, its starting weights and the regularisation inside the network."""

    backbone: str
    #: "imagenet" (Keras' download), a path to a headless `.weights.h5` file, or null (random).
    weights: str | None = "imagenet"
    head_dropout: float = Field(0.2, ge=0.0, lt=1.0)
    #: Stochastic-depth rate of EfficientNet blocks; defaults to the backbone's own (0.2).
    drop_connect_rate: float = Field(ge=0.0, lt=1.0)

    @field_validator("backbone")
    @classmethod
    def _backbone_is_registered(cls, value: str) -> str:
        get_backbone(value)
        return value

    @field_validator("weights")
    @classmethod
    def _none_string_means_no_weights(cls, value: str | None) -> str | None:
        # YAML authors write `weights: none`; treat it as null rather than as a file name.
        if value is not None and value.strip().lower() in {"none", "null", ""}:
            return None
        return value


class PhaseConfig(_Frozen):
    """One training phase: which blocks train, and with what optimizer and schedule."""

    epochs: int = Field(ge=1, le=10_000)
    optimizer: OptimizerName = "adam"
    learning_rate: float = Field(gt=0.0, le=10.0)
    #: Used by sgd only (Li et al. 2020: the effective learning rate depends on it).
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    schedule: ScheduleName = "constant"
    #: Share of the phase's steps spent warming the learning rate up linearly from 0.
    warmup_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    #: Decoupled weight decay of the optimizer (applied to trainable variables only).
    weight_decay: float = Field(0.0, ge=0.0, lt=1.0)
    #: Whole units unfrozen from the top (see trainers.model.backbones); 0 = frozen backbone.
    unfreeze_blocks: int = Field(0, ge=0)
    #: Keep BatchNorm layers frozen, which in Keras 3 also runs them on moving statistics.
    freeze_batchnorm: bool = True


class Confirmation(_Frozen):
    """The exported trial's config re-trained with other seeds, and what they reached
    (`python -m search.export --confirm K`)."""

    #: How many of the study's best trials were re-trained; this one won by its mean.
    candidates: int = Field(ge=1)
    seeds: tuple[int, ...]
    values: tuple[float, ...]
    mean: float
    #: The standard error of `mean`: the standard deviation of `values` over sqrt(n).
    stderr: float
    #: The re-runs' MLflow run ids, children of the study's parent run.
    mlflow_runs: tuple[str, ...] = ()


class Provenance(_Frozen):
    """Where an exported config came from; carried along, never used for training."""

    study: str
    trial_number: int
    value: float
    best_epoch: int | None = None
    storage: str
    exported_at: str
    #: What chose the trial (`optuna`, `keras-tuner hyperband`, ...) and, for an engine with
    #: trial ids of its own, the trial's there (KerasTuner's `trial_id`).
    engine: str | None = None
    engine_trial: str | None = None
    confirmation: Confirmation | None = None


class TrainConfig(_Frozen):
    """A whole fine-tuning job. Build it with `TrainConfig.from_dict` or `load_config`."""

    data: DataConfig
    model: ModelConfig
    phases: tuple[PhaseConfig, ...] = Field(min_length=1)
    batch_size: int = Field(32, ge=1, le=8192)
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    #: L2-SP strength: pulls unfrozen backbone weights toward their starting values.
    l2sp_alpha: float = Field(0.0, ge=0.0, le=100.0)
    #: Seeds weight init, shuffling, augmentation and dropout.
    seed: int = 0
    #: mixed_float16 compute; only worth it on GPUs with tensor cores.
    mixed_precision: bool = False
    provenance: Provenance | None = None

    @model_validator(mode="before")
    @classmethod
    def _fill_backbone_defaults(cls, raw: Any) -> Any:
        # Defaults that depend on the backbone are written into the config itself, so the
        # saved, resolved config says exactly what ran.
        if not isinstance(raw, Mapping):
            return raw
        model = raw.get("model")
        data = raw.get("data")
        if not isinstance(model, Mapping):
            return raw
        name = model.get("backbone")
        spec = BACKBONES.get(name) if isinstance(name, str) else None
        # An unknown backbone is reported by its own validator; the placeholders below keep
        # that the only error instead of adding "missing key" noise.
        default_size = spec.default_image_size if spec else 224
        default_rate = (spec.default_drop_connect_rate or 0.0) if spec else 0.0
        resolved = dict(raw)
        if "drop_connect_rate" not in model:
            resolved["model"] = {**model, "drop_connect_rate": default_rate}
        if isinstance(data, Mapping):
            data = dict(data)
            data.setdefault("image_size", default_size)
            source = data.get("source")
            if isinstance(source, str) and source.startswith(SYNTHETIC_PREFIX):
                data.setdefault("synthetic", {})
            resolved["data"] = data
        return resolved

    @model_validator(mode="after")
    def _phases_fit_the_backbone(self) -> TrainConfig:
        spec = get_backbone(self.model.backbone)
        if self.phases[0].unfreeze_blocks != 0:
            raise ValueError(
                "phases[0].unfreeze_blocks: phase 1 trains the head on a frozen backbone, "
                f"so it must be 0, got {self.phases[0].unfreeze_blocks}"
            )
        for index, phase in enumerate(self.phases):
            if phase.unfreeze_blocks > spec.unit_count:
                raise ValueError(
                    f"phases[{index}].unfreeze_blocks: {spec.name} has {spec.unit_count} "
                    f"blocks ({', '.join(spec.unit_names[:3])}, ... {spec.unit_names[-1]}), "
                    f"got {phase.unfreeze_blocks}; allowed: 0..{spec.unit_count}"
                )
        if self.model.drop_connect_rate > 0 and not spec.supports_drop_connect:
            raise ValueError(
                f"model.drop_connect_rate: {spec.name} has no drop-connect; allowed: 0"
            )
        return self

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> TrainConfig:
        """Validate a plain mapping (e.g. parsed YAML); raise ConfigError naming each bad key."""
        try:
            return cls.model_validate(raw)
        except ValidationError as error:
            raise ConfigError(describe_validation_error(error, root=cls)) from None

    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML-ready data; `from_dict(to_dict())` equals `self`."""
        data = self.model_dump(mode="json")
        if data["provenance"] is None:
            del data["provenance"]
        return data

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    @classmethod
    def from_yaml(cls, text: str, *, origin: str = "<string>") -> TrainConfig:
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ConfigError(f"{origin}: not valid YAML{_yaml_problem(error)}") from None
        if not isinstance(raw, Mapping):
            raise ConfigError(
                f"{origin}: expected a mapping with keys data, model, phases, ...; "
                f"got {type(raw).__name__}"
            )
        try:
            return cls.from_dict(raw)
        except ConfigError as error:
            raise ConfigError(f"{origin}: {error}") from None

    def without_provenance(self) -> TrainConfig:
        """The training-relevant part; two configs that train identically compare equal."""
        return self.model_copy(update={"provenance": None})

    @property
    def total_epochs(self) -> int:
        return sum(phase.epochs for phase in self.phases)

    @property
    def unfrozen_units(self) -> int:
        """Whole backbone units the job unfreezes at its deepest; 0 for a linear probe."""
        return max(phase.unfreeze_blocks for phase in self.phases)

    @property
    def unfreezing_phases(self) -> tuple[int, ...]:
        """Numbers (from 1) of the phases that unfreeze backbone units."""
        return tuple(n for n, phase in enumerate(self.phases, 1) if phase.unfreeze_blocks > 0)


def _yaml_problem(error: yaml.YAMLError) -> str:
    """One line: where the YAML broke and why (PyYAML's own message spans several lines)."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{where}: {problem}"


#: Top-level keys of a study file (`search.study.files`) that no TrainConfig has. A config that
#: fails to load and has one is a study file given to a training command: it is told where to
#: go instead of getting a list of unknown keys. (trainers imports no search code, so the keys
#: are written out here; a test checks them against the study file's schema.)
STUDY_FILE_KEYS = frozenset(
    {
        "space",
        "ranges",
        "fixed",
        "roles",
        "enqueue",
        "unfreeze_ladder",
        "n_trials",
        "budget_epochs",
        "budget_hours",
        "pruner",
    }
)


def load_config(path: str | Path) -> TrainConfig:
    """Read a YAML config file; every problem is a ConfigError that names the file, and a study
    file is one line saying how to run it."""
    text = read_text_file(Path(path), "config")
    try:
        return TrainConfig.from_yaml(text, origin=str(path))
    except ConfigError:
        if _is_study_file(text):
            raise ConfigError(
                f"{path} is a study file; run it with python -m search.run --study {path}"
            ) from None
        raise


def _is_study_file(text: str) -> bool:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError:
        return False
    return isinstance(raw, Mapping) and not STUDY_FILE_KEYS.isdisjoint(raw)


def read_text_file(path: Path, what: str) -> str:
    """The text of a config-like file; a missing or unreadable one is a ConfigError naming it
    (`what` says what kind: "config", "study")."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such {what} file") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read {what} file: {error}") from None


def save_config(config: TrainConfig, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(config.to_yaml(), encoding="utf-8")
    return path
