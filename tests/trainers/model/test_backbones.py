"""Backbone registry and block-aligned unfreezing, checked against docs/configs-and-backbones.md."""

from __future__ import annotations

from functools import cache

import keras
import pytest

from tests.conftest import small_config_dict
from trainers.config.schema import TrainConfig
from trainers.model.backbones import (
    BACKBONES,
    build_backbone,
    get_backbone,
    group_layers_into_units,
    units_within_top_layers,
)
from trainers.model.preprocessing import CaffePreprocessing
from trainers.model.surgery import FineTuneModel, build_model, set_trainable_units

# docs/configs-and-backbones.md, "EfficientNet facts": layers (weights=None), BN layers, params,
# blocks.
DESIGN_COUNTS = {
    "EfficientNetB0": (237, 49, 4_049_571, (1, 2, 2, 3, 3, 4, 1)),
    "EfficientNetB4": (474, 96, 17_673_823, (2, 4, 4, 6, 6, 8, 2)),
}


@cache
def _network(backbone: str) -> FineTuneModel:
    raw = small_config_dict()
    raw["data"]["image_size"] = 32
    raw["model"] = {"backbone": backbone, "weights": None}
    return build_model(TrainConfig.from_dict(raw), num_classes=5)


@pytest.mark.parametrize("name", sorted(DESIGN_COUNTS))
def test_efficientnet_structure_matches_design(name: str) -> None:
    layers, batchnorms, params, stages = DESIGN_COUNTS[name]
    backbone = _network(name).backbone
    assert len(backbone.layers) == layers
    assert sum(isinstance(layer, keras.layers.BatchNormalization) for layer in backbone.layers) == (
        batchnorms
    )
    assert backbone.count_params() == params
    units = _network(name).units
    blocks = [unit.name for unit in units if unit.name.startswith("block")]
    # Units are top, the blocks from the top down, then the stem.
    assert len(blocks) == sum(stages)
    assert units[0].name == "top" and units[-1].name == "stem"
    for stage, count in enumerate(stages, start=1):
        assert sum(block.startswith(f"block{stage}") for block in blocks) == count


@pytest.mark.parametrize(
    "name", ["EfficientNetB0", "EfficientNetB4", "ResNet50", "MobileNetV3Small"]
)
def test_every_layer_is_in_exactly_one_unit_and_the_registry_knows_them(name: str) -> None:
    network = _network(name)
    names = [layer.name for layer in network.backbone.layers]
    grouped = [layer for unit in network.units for layer in unit.layer_names]
    assert sorted(grouped) == sorted(names)
    # The static registry (used to validate configs without Keras) agrees with the model.
    assert tuple(unit.name for unit in network.units) == BACKBONES[name].unit_names


def test_efficientnet_top_units_are_the_named_blocks() -> None:
    units = _network("EfficientNetB4").units
    assert [unit.name for unit in units[:4]] == ["top", "block7b", "block7a", "block6h"]
    assert units[0].layer_names == ("top_conv", "top_bn", "top_activation")
    assert all(name.startswith("block7b_") for name in units[1].layer_names)
    # The guide's "last 20 layers" hold 2 whole units on B4 (top + block7b = 18 layers).
    assert units_within_top_layers(units, 20) == 2


def test_b4_trainable_share_grows_as_design_says() -> None:
    network = _network("EfficientNetB4")
    # docs/configs-and-backbones.md: top only 5%, + stage 7: 30%, + stage 6: 79%, + stage 5: 93%.
    expected = {1: 0.05, 3: 0.30, 11: 0.79, 17: 0.93}
    for blocks, share in expected.items():
        summary = set_trainable_units(network, blocks, freeze_batchnorm=False)
        assert summary.trainable_share == pytest.approx(share, abs=0.01), blocks


@pytest.mark.parametrize("name", ["EfficientNetB0", "EfficientNetB4"])
def test_unfreezing_never_cuts_a_block(name: str) -> None:
    network = _network(name)
    layers = {layer.name: layer for layer in network.backbone.layers}
    for blocks in range(len(network.units) + 1):
        set_trainable_units(network, blocks, freeze_batchnorm=False)
        for index, unit in enumerate(network.units):
            weighted = [layers[n] for n in unit.layer_names if layers[n].weights]
            states = {layer.trainable for layer in weighted}
            # A unit is trained whole or not at all, and only the top `blocks` units train.
            assert states <= {index < blocks}, (blocks, unit.name)


def test_freeze_batchnorm_keeps_bn_frozen_inside_unfrozen_blocks() -> None:
    network = _network("EfficientNetB0")
    layers = {layer.name: layer for layer in network.backbone.layers}
    summary = set_trainable_units(network, 3, freeze_batchnorm=True)
    unfrozen = [layers[n] for unit in network.units[:3] for n in unit.layer_names]
    batchnorms = [layer for layer in unfrozen if isinstance(layer, keras.layers.BatchNormalization)]
    # top_bn + block7a (3 BN) + block6d (3 BN) = 7 BatchNorm layers, all kept frozen.
    assert len(batchnorms) == summary.frozen_batchnorm_layers == 7
    assert not any(layer.trainable for layer in batchnorms)
    assert all(layers[n].trainable for n in ("top_conv", "block7a_dwconv", "block6d_project_conv"))
    set_trainable_units(network, 3, freeze_batchnorm=False)
    assert all(layer.trainable for layer in batchnorms)


def test_frozen_phase_leaves_only_the_head_trainable() -> None:
    network = _network("EfficientNetB0")
    set_trainable_units(network, 0, freeze_batchnorm=True)
    assert network.backbone.trainable_weights == []
    head = {weight.path.split("/")[0] for weight in network.model.trainable_weights}
    assert head == {"head_predictions"}


def test_resnet50_gets_caffe_preprocessing_inside_the_model() -> None:
    network = _network("ResNet50")
    assert get_backbone("ResNet50").preprocessing == "caffe"
    assert any(isinstance(layer, CaffePreprocessing) for layer in network.model.layers)
    # Stages are the units for ResNet.
    assert [unit.name for unit in network.units] == ["conv5", "conv4", "conv3", "conv2", "conv1"]


def test_efficientnet_and_mobilenet_take_raw_pixels_without_an_added_layer() -> None:
    for name in ("EfficientNetB0", "MobileNetV3Small"):
        assert get_backbone(name).preprocessing == "built_in"
        assert not any(
            isinstance(layer, CaffePreprocessing) for layer in _network(name).model.layers
        )


def _drop_rates(model: keras.Model) -> dict[str, float]:
    return {layer.name: layer.rate for layer in model.layers if layer.name.endswith("_drop")}


def _efficientnet_b0(drop_connect_rate: float) -> FineTuneModel:
    raw = small_config_dict()
    raw["data"]["image_size"] = 32
    raw["model"] = {
        "backbone": "EfficientNetB0",
        "weights": None,
        "drop_connect_rate": drop_connect_rate,
    }
    return build_model(TrainConfig.from_dict(raw), num_classes=3)


def test_drop_connect_rate_rescales_efficientnet_stochastic_depth() -> None:
    network = _efficientnet_b0(0.4)
    default_rates = _efficientnet_b0(0.2).drop_connect_rates
    # Keras' default is 0.2, growing with depth; 0.4 doubles every block's rate.
    assert network.drop_connect_rates == pytest.approx(
        {name: 2 * rate for name, rate in default_rates.items()}
    )
    assert _drop_rates(network.backbone) == pytest.approx(network.drop_connect_rates)
    # The deepest residual block (block6d, block 15 of 16) gets 0.4 * 14/16.
    assert max(network.drop_connect_rates.values()) == pytest.approx(0.4 * 14 / 16)


def test_stochastic_depth_runs_only_in_unfrozen_blocks() -> None:
    network = _efficientnet_b0(0.2)
    configured = network.drop_connect_rates
    set_trainable_units(network, 0, freeze_batchnorm=True)
    # A frozen backbone computes a fixed function: no block drops its residual branch.
    assert set(_drop_rates(network.backbone).values()) == {0.0}
    # Top 4 units: top, block7a, block6d and block6c, the last two with stochastic depth.
    set_trainable_units(network, 4, freeze_batchnorm=True)
    rates = _drop_rates(network.backbone)
    training = {name for name, rate in rates.items() if rate > 0}
    assert training == {"block6d_drop", "block6c_drop"}
    assert {name: rates[name] for name in training} == {n: configured[n] for n in training}
    assert all(rate == 0.0 for name, rate in rates.items() if name not in training)
    # Freezing again switches them off again.
    set_trainable_units(network, 1, freeze_batchnorm=True)
    assert set(_drop_rates(network.backbone).values()) == {0.0}


def test_unknown_backbone_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="valid: EfficientNetB0"):
        get_backbone("VGG16")


def test_grouping_rejects_a_structure_the_registry_does_not_know() -> None:
    spec = get_backbone("EfficientNetB0")
    with pytest.raises(ValueError, match="block9a"):
        group_layers_into_units(spec, ["input", "stem_conv", "block9a_dwconv", "top_conv"])


def test_build_backbone_accepts_weights_none() -> None:
    backbone = build_backbone(get_backbone("MobileNetV3Small"), image_size=32, weights=None)
    assert backbone.input_shape == (None, 32, 32, 3)


def test_weights_file_is_loaded_into_the_backbone(tmp_path: object) -> None:
    import numpy as np

    from tests.conftest import PRETRAINED_WEIGHTS

    raw = small_config_dict()
    pretrained = build_model(TrainConfig.from_dict(raw), num_classes=6).backbone
    raw["model"]["weights"] = None
    random_init = build_model(TrainConfig.from_dict(raw), num_classes=6).backbone
    reference = build_backbone(get_backbone("MobileNetV3Small"), image_size=64, weights=None)
    reference.load_weights(PRETRAINED_WEIGHTS)
    # Every weight equals the file's, and the file's are not what a fresh model starts with.
    assert all(
        np.array_equal(a, b)
        for a, b in zip(pretrained.get_weights(), reference.get_weights(), strict=True)
    )
    assert not all(
        np.array_equal(a, b)
        for a, b in zip(pretrained.get_weights(), random_init.get_weights(), strict=True)
    )


def test_a_wrong_weights_file_is_a_clear_error(tmp_path: object) -> None:
    from pathlib import Path

    from trainers.errors import ModelBuildError

    raw = small_config_dict()
    raw["model"]["weights"] = str(Path(str(tmp_path)) / "missing.weights.h5")
    with pytest.raises(ModelBuildError, match="no such weights file"):
        build_model(TrainConfig.from_dict(raw), num_classes=6)
    from tests.conftest import PRETRAINED_WEIGHTS

    raw["model"] = {"backbone": "EfficientNetB0", "weights": str(PRETRAINED_WEIGHTS)}
    # MobileNetV3 weights do not fit EfficientNet: one error naming backbone and file.
    with pytest.raises(ModelBuildError, match="cannot build EfficientNetB0"):
        build_model(TrainConfig.from_dict(raw), num_classes=6)
