"""A study moved by the command line, and an enqueued config moved onto the study's data.

`with_overrides` applies `--backbone`, `--image-size` and `--weights` to any study, registered
or from a file (they win over the file), and drops the known configs that are no longer points
of the moved space. `study_config` gives an enqueued config (a study file's `enqueue`) the
study's data: its source, hold-out and generated sizes; the rest runs as written.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from search.study.files import local_weights
from search.study.registry import StudySpec
from spaces.finetune import FineTuneSpace
from spaces.generic import retarget
from spaces.parameters import Role
from trainers.config.schema import SYNTHETIC_PREFIX, TrainConfig
from trainers.errors import ConfigError
from trainers.model.backbones import UnknownBackboneError, get_backbone


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
        weights = local_weights(weights, Path.cwd(), "--weights")
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
