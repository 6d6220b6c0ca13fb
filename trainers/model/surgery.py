"""Model surgery: backbone + classification head, drop-connect, and block-aligned unfreezing.

The backbone stays a nested Keras model so that its weights can be saved and loaded on their
own (`.weights.h5`, as `trainers.pretrain` writes them). Freezing is per layer: a frozen
BatchNormalization layer (`trainable=False`) also runs in inference mode in Keras 3, so
`freeze_batchnorm` keeps the pretrained statistics intact while the blocks around it train.
Stochastic depth (EfficientNet's `*_drop` layers) is switched off in frozen blocks, so the frozen
part of the network is a fixed function of its input, as the frozen-feature cache requires.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import keras

from trainers.config.schema import TrainConfig
from trainers.errors import ModelBuildError
from trainers.model.backbones import (
    BackboneSpec,
    BlockUnit,
    build_backbone,
    check_weights,
    get_backbone,
    group_layers_into_units,
)
from trainers.model.preprocessing import CaffePreprocessing


@dataclass(frozen=True)
class FineTuneModel:
    model: keras.Model
    backbone: keras.Model
    spec: BackboneSpec
    units: tuple[BlockUnit, ...]
    #: Each stochastic-depth layer's rate while its block trains.
    drop_connect_rates: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainableSummary:
    """What one `set_trainable_units` call left trainable in the backbone."""

    unfrozen_units: tuple[str, ...]
    trainable_layers: int
    frozen_batchnorm_layers: int
    #: Weights that will receive gradients (excludes frozen BatchNorm and moving statistics).
    trainable_parameters: int
    #: All weights of the unfrozen units, moving statistics included
    #: (docs/configs-and-backbones.md).
    unfrozen_parameters: int
    backbone_parameters: int

    @property
    def trainable_share(self) -> float:
        """Share of the backbone's parameters that lives in the unfrozen units."""
        return self.unfrozen_parameters / self.backbone_parameters

    def describe(self) -> str:
        if not self.unfrozen_units:
            return "backbone frozen, training the head"
        shown = ", ".join(self.unfrozen_units[:4])
        if len(self.unfrozen_units) > 4:
            shown += f", ... {self.unfrozen_units[-1]}"
        return (
            f"unfrozen {len(self.unfrozen_units)} blocks ({shown}): "
            f"{self.trainable_layers} layers, "
            f"{self.trainable_share:.1%} of backbone parameters; "
            f"{self.frozen_batchnorm_layers} BatchNorm layers in them kept frozen"
        )


def _drop_connect_layers(backbone: keras.Model) -> list[keras.layers.Dropout]:
    return [
        layer
        for layer in backbone.layers
        if isinstance(layer, keras.layers.Dropout) and layer.name.endswith("_drop")
    ]


def set_drop_connect_rate(backbone: keras.Model, spec: BackboneSpec, rate: float) -> None:
    """Rescale EfficientNet's stochastic-depth (block `*_drop`) rates to a new maximum.

    keras.applications' EfficientNetB0-B7 constructors fix drop_connect_rate at 0.2 and grow
    each block's rate linearly with depth; keep that shape and change only its scale.
    """
    if spec.default_drop_connect_rate is None:
        return
    for layer in _drop_connect_layers(backbone):
        layer.rate = layer.rate / spec.default_drop_connect_rate * rate


def build_model(config: TrainConfig, num_classes: int) -> FineTuneModel:
    """Backbone (with its own preprocessing) -> global average pool -> dropout -> softmax."""
    spec = get_backbone(config.model.backbone)
    weights = check_weights(config.model.weights)
    size = config.data.image_size
    try:
        backbone = build_backbone(spec, image_size=size, weights=weights)
    except ValueError as error:
        raise ModelBuildError(
            f"cannot build {spec.name} at {size}px with weights={config.model.weights!r}: {error}"
        ) from None
    set_drop_connect_rate(backbone, spec, config.model.drop_connect_rate)
    inputs = keras.Input((size, size, 3), name="pixels")
    features = (
        CaffePreprocessing(name="caffe_preprocessing")(inputs)
        if spec.preprocessing == "caffe"
        else inputs
    )
    features = backbone(features)
    features = keras.layers.GlobalAveragePooling2D(name="head_pool")(features)
    features = keras.layers.Dropout(config.model.head_dropout, name="head_dropout")(features)
    # float32 output even under mixed precision, for a numerically stable softmax and loss.
    outputs = keras.layers.Dense(
        num_classes, activation="softmax", dtype="float32", name="head_predictions"
    )(features)
    model = keras.Model(inputs, outputs, name=f"{spec.name.lower()}_classifier")
    units = group_layers_into_units(spec, [layer.name for layer in backbone.layers])
    rates = {layer.name: float(layer.rate) for layer in _drop_connect_layers(backbone)}
    return FineTuneModel(model, backbone, spec, units, rates)


def set_trainable_units(
    network: FineTuneModel, unfreeze_blocks: int, *, freeze_batchnorm: bool
) -> TrainableSummary:
    """Make the top `unfreeze_blocks` whole units trainable and freeze everything below.

    The head is always trainable; stochastic depth runs only in the unfrozen blocks. Takes
    effect at the next `model.compile`.
    """
    backbone = network.backbone
    # Setting `trainable` on a model propagates to all its layers; the loop then narrows it.
    backbone.trainable = unfreeze_blocks > 0
    trainable_layers = 0
    frozen_batchnorm = 0
    unfrozen_parameters = 0
    if unfreeze_blocks > 0:
        layers = {layer.name: layer for layer in backbone.layers}
        for index, unit in enumerate(network.units):
            unfrozen = index < unfreeze_blocks
            for name in unit.layer_names:
                layer = layers[name]
                unfrozen_parameters += layer.count_params() if unfrozen else 0
                is_batchnorm = isinstance(layer, keras.layers.BatchNormalization)
                keep_frozen = is_batchnorm and freeze_batchnorm
                layer.trainable = unfrozen and not keep_frozen
                frozen_batchnorm += int(unfrozen and keep_frozen)
                trainable_layers += int(layer.trainable and bool(layer.weights))
    training = {name for unit in network.units[:unfreeze_blocks] for name in unit.layer_names}
    for layer in _drop_connect_layers(backbone):
        # Stochastic depth only in blocks that train: a frozen block must compute a fixed
        # function (the frozen-feature cache relies on it), as its BatchNorm already does.
        layer.rate = network.drop_connect_rates[layer.name] if layer.name in training else 0.0
    trainable_parameters = sum(int(weight.numpy().size) for weight in backbone.trainable_weights)
    return TrainableSummary(
        unfrozen_units=tuple(unit.name for unit in network.units[:unfreeze_blocks]),
        trainable_layers=trainable_layers,
        frozen_batchnorm_layers=frozen_batchnorm,
        trainable_parameters=trainable_parameters,
        unfrozen_parameters=unfrozen_parameters,
        backbone_parameters=backbone.count_params(),
    )
