"""Registry of keras.applications backbones: resolution, preprocessing and block structure.

A backbone is split into *units* counted from the top: for EfficientNet `top` (top_conv, top_bn,
top_activation), then block7b, block7a, block6h, ... down to `stem`; for ResNet50 the stages
conv5 ... conv1; for MobileNetV3 `top`, then its expanded_conv blocks, then `stem`. "Unfreeze N
blocks" means the top N units, never part of one, because cutting a block in half leaves a
residual branch half-trained (on B4, "the last 20 layers" splits block7a:
docs/configs-and-backbones.md).

The registry itself imports no Keras: `trainers.config.schema` validates backbone names and
`unfreeze_blocks` against it inside the search coordinator, which must not load TensorFlow.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from trainers.errors import ModelBuildError

if TYPE_CHECKING:
    import keras

Preprocessing = Literal["built_in", "caffe"]

#: Value range every backbone here receives from the input pipeline: raw pixels. Normalisation
#: happens inside the model (built into EfficientNet and MobileNetV3, added for ResNet's caffe
#: mode), so a pipeline that normalises is always a bug (the guide's 1%-accuracy failure).
INPUT_RANGE = (0.0, 255.0)


@dataclass(frozen=True)
class BlockUnit:
    """One unfreezable unit of a built backbone and the names of the layers it owns."""

    name: str
    layer_names: tuple[str, ...]


@dataclass(frozen=True)
class BackboneSpec:
    """What the trainer must know about one keras.applications backbone."""

    name: str
    family: Literal["efficientnet", "resnet", "mobilenetv3"]
    default_image_size: int
    preprocessing: Preprocessing
    #: Units from the top down; `len(unit_names)` is the largest valid `unfreeze_blocks`.
    unit_names: tuple[str, ...]
    #: None where the architecture has no stochastic depth (drop-connect) to configure.
    default_drop_connect_rate: float | None
    #: Keyword arguments the keras.applications constructor always gets here.
    constructor_options: tuple[tuple[str, object], ...] = ()

    @property
    def unit_count(self) -> int:
        return len(self.unit_names)

    @property
    def supports_drop_connect(self) -> bool:
        return self.default_drop_connect_rate is not None


def _efficientnet_unit_names(blocks_per_stage: Sequence[int]) -> tuple[str, ...]:
    blocks = [
        f"block{stage}{string.ascii_lowercase[index]}"
        for stage, count in enumerate(blocks_per_stage, start=1)
        for index in range(count)
    ]
    return ("top", *reversed(blocks), "stem")


def _mobilenetv3_unit_names(block_count: int) -> tuple[str, ...]:
    blocks = ["expanded_conv"] + [f"expanded_conv_{index}" for index in range(1, block_count)]
    return ("top", *reversed(blocks), "stem")


# Blocks per stage and default resolutions as in keras.applications
# (docs/configs-and-backbones.md, "EfficientNet facts").
_EFFICIENTNET_VARIANTS = {
    "EfficientNetB0": (224, (1, 2, 2, 3, 3, 4, 1)),
    "EfficientNetB1": (240, (2, 3, 3, 4, 4, 5, 2)),
    "EfficientNetB2": (260, (2, 3, 3, 4, 4, 5, 2)),
    "EfficientNetB3": (300, (2, 3, 3, 5, 5, 6, 2)),
    "EfficientNetB4": (380, (2, 4, 4, 6, 6, 8, 2)),
    "EfficientNetB5": (456, (3, 5, 5, 7, 7, 9, 3)),
    "EfficientNetB6": (528, (3, 6, 6, 8, 8, 11, 3)),
    "EfficientNetB7": (600, (4, 7, 7, 10, 10, 13, 4)),
}

BACKBONES: dict[str, BackboneSpec] = {
    **{
        name: BackboneSpec(
            name=name,
            family="efficientnet",
            default_image_size=size,
            preprocessing="built_in",
            unit_names=_efficientnet_unit_names(stages),
            default_drop_connect_rate=0.2,
        )
        for name, (size, stages) in _EFFICIENTNET_VARIANTS.items()
    },
    "ResNet50": BackboneSpec(
        name="ResNet50",
        family="resnet",
        default_image_size=224,
        preprocessing="caffe",
        unit_names=("conv5", "conv4", "conv3", "conv2", "conv1"),
        default_drop_connect_rate=None,
    ),
    "MobileNetV3Small": BackboneSpec(
        name="MobileNetV3Small",
        family="mobilenetv3",
        default_image_size=224,
        preprocessing="built_in",
        unit_names=_mobilenetv3_unit_names(11),
        default_drop_connect_rate=None,
        constructor_options=(("include_preprocessing", True),),
    ),
    "MobileNetV3Large": BackboneSpec(
        name="MobileNetV3Large",
        family="mobilenetv3",
        default_image_size=224,
        preprocessing="built_in",
        unit_names=_mobilenetv3_unit_names(15),
        default_drop_connect_rate=None,
        constructor_options=(("include_preprocessing", True),),
    ),
}


class UnknownBackboneError(ValueError):
    """Raised for a backbone name that is not in the registry."""


def check_weights(weights: str | None) -> str | None:
    """`model.weights` as Keras takes it: None, "imagenet", or the path of a `.h5` file that is
    there; ModelBuildError otherwise. Needs no Keras, so a command checks it before it
    imports TensorFlow."""
    if weights is None or weights == "imagenet":
        return weights
    path = Path(weights)
    if not path.is_file():
        raise ModelBuildError(f"model.weights: no such weights file: {weights}")
    if not path.name.endswith(".h5"):
        raise ModelBuildError(f"model.weights: expected a Keras .weights.h5 file, got {weights}")
    return str(path)


def get_backbone(name: str) -> BackboneSpec:
    """Return the registry entry for `name`, or raise with the list of valid names."""
    try:
        return BACKBONES[name]
    except KeyError:
        valid = ", ".join(BACKBONES)
        raise UnknownBackboneError(f"unknown backbone {name!r}; valid: {valid}") from None


_UNIT_PATTERNS: dict[str, tuple[tuple[re.Pattern[str], str], ...]] = {
    "efficientnet": (
        (re.compile(r"^(block\d[a-z])_"), r"\1"),
        (re.compile(r"^top_"), "top"),
        (re.compile(r"^stem_"), "stem"),
    ),
    "resnet": ((re.compile(r"^(conv\d)_"), r"\1"), (re.compile(r"^pool1_"), "conv1")),
    "mobilenetv3": (
        (re.compile(r"^(expanded_conv(?:_\d+)?)_"), r"\1"),
        (re.compile(r"^conv_1(?:_bn)?$"), "top"),
        (re.compile(r"^conv(?:_bn)?$"), "stem"),
    ),
}


def _unit_of(layer_name: str, family: str) -> str | None:
    for pattern, replacement in _UNIT_PATTERNS[family]:
        match = pattern.match(layer_name)
        if match:
            return match.expand(replacement)
    return None


def group_layers_into_units(
    spec: BackboneSpec, layer_names: Sequence[str]
) -> tuple[BlockUnit, ...]:
    """Assign every backbone layer to a unit, returned from the top down.

    `layer_names` must be in the model's topological order (`[l.name for l in model.layers]`).
    Layers whose names carry no block prefix (MobileNetV3's auto-named `re_lu_13`, the input and
    rescaling layers) belong to the unit of the layer before them, or to the bottom unit.
    """
    bottom_unit = spec.unit_names[-1]
    members: dict[str, list[str]] = {name: [] for name in spec.unit_names}
    current = bottom_unit
    for layer_name in layer_names:
        unit = _unit_of(layer_name, spec.family)
        if unit is not None:
            current = unit
        if current not in members:
            raise ValueError(
                f"{spec.name}: layer {layer_name!r} belongs to unit {current!r}, which the "
                f"registry does not list; the keras.applications structure has changed"
            )
        members[current].append(layer_name)
    empty = [name for name, layers in members.items() if not layers]
    if empty:
        raise ValueError(f"{spec.name}: registry units {empty} have no layers in the built model")
    return tuple(BlockUnit(name, tuple(members[name])) for name in spec.unit_names)


def units_within_top_layers(units: Sequence[BlockUnit], layer_count: int) -> int:
    """The most whole units that fit in the top `layer_count` layers.

    Translates recipes written as "unfreeze the last N layers" (the seed guide's 20) into a
    block-aligned `unfreeze_blocks`, rounding down so no block is cut.
    """
    whole_units = 0
    remaining = layer_count
    for unit in units:
        if len(unit.layer_names) > remaining:
            break
        remaining -= len(unit.layer_names)
        whole_units += 1
    return whole_units


def build_backbone(spec: BackboneSpec, *, image_size: int, weights: str | None) -> keras.Model:
    """Instantiate the headless backbone; `weights` is "imagenet", a weights file, or None.

    "imagenet" downloads Keras' published weights on first use (cached in ~/.keras/models);
    a path loads a `.weights.h5` file saved from the same headless architecture.
    """
    import keras

    constructor = getattr(keras.applications, spec.name)
    return constructor(
        include_top=False,
        weights=weights,
        input_shape=(image_size, image_size, 3),
        **dict(spec.constructor_options),
    )
