"""TrainConfig: validation messages, immutability and lossless YAML round trips."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydantic
import pytest

from tests.conftest import REPO, small_config_dict
from trainers.config.schema import ConfigError, TrainConfig, load_config, save_config

EXAMPLE_CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


def _error_for(raw: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        TrainConfig.from_dict(raw)
    return str(caught.value)


def test_example_configs_exist_for_the_seed_recipe_and_a_cpu_job() -> None:
    names = {path.name for path in EXAMPLE_CONFIGS}
    # The issue asks for both: the guide's B4 recipe and a small CPU-sized one.
    assert {"effnet_b4_seed_recipe.yaml", "cpu_small.yaml"} <= names


@pytest.mark.parametrize("path", EXAMPLE_CONFIGS, ids=lambda path: path.name)
def test_yaml_round_trip_is_lossless(path: Path, tmp_path: Path) -> None:
    config = load_config(path)
    written = save_config(config, tmp_path / "again.yaml")
    again = load_config(written)
    # config -> YAML -> config gives an equal config...
    assert again == config
    # ...and the resolved YAML is a fixed point, byte for byte.
    assert again.to_yaml() == written.read_text()


def test_round_trip_keeps_awkward_floats_exactly() -> None:
    raw = small_config_dict(label_smoothing=0.1 + 0.2, l2sp_alpha=1.2345678901234567e-7)
    raw["phases"][1]["learning_rate"] = 3.3333333333333335e-05
    config = TrainConfig.from_dict(raw)
    again = TrainConfig.from_yaml(config.to_yaml())
    # repr-exact floats survive YAML (0.30000000000000004 stays itself).
    assert again.label_smoothing == 0.1 + 0.2
    assert again.phases[1].learning_rate == 3.3333333333333335e-05
    assert again == config


def test_resolved_config_fills_backbone_defaults() -> None:
    raw = small_config_dict()
    raw["model"] = {"backbone": "EfficientNetB4", "weights": "none"}
    del raw["data"]["image_size"]
    config = TrainConfig.from_dict(raw)
    # B4's native resolution and drop-connect rate are written into the config.
    assert config.data.image_size == 380
    assert config.model.drop_connect_rate == 0.2
    # `weights: none` in YAML means no weights, not a file called "none".
    assert config.model.weights is None
    assert "image_size: 380" in config.to_yaml()


def test_config_is_immutable(make_config: Any) -> None:
    config = make_config()
    with pytest.raises(pydantic.ValidationError):
        config.batch_size = 64
    with pytest.raises(pydantic.ValidationError):
        config.phases[0].learning_rate = 1.0


def test_unknown_key_names_the_key_and_the_allowed_keys() -> None:
    raw = small_config_dict()
    raw["model"]["dropuot"] = 0.3
    message = _error_for(raw)
    assert "model.dropuot: unknown key" in message
    assert "head_dropout" in message and "drop_connect_rate" in message


def test_wrong_choice_lists_the_allowed_values() -> None:
    raw = small_config_dict()
    raw["phases"][1]["optimizer"] = "adamx"
    message = _error_for(raw)
    assert "phases[1].optimizer: got 'adamx'" in message
    assert "'adam', 'adamw' or 'sgd'" in message


def test_a_bad_only_phase_is_one_problem_not_two() -> None:
    raw = small_config_dict()
    raw["phases"] = [{"epochs": 2, "learning_rate": 1e-3, "optimizer": "adamx"}]
    # The phase's own mistake is the problem; pydantic's "tuple too short" is noise.
    assert _error_for(raw) == (
        "invalid config: phases[0].optimizer: got 'adamx'; allowed: 'adam', 'adamw' or 'sgd'"
    )
    raw["phases"] = []
    assert "phases: Tuple should have at least 1 item" in _error_for(raw)


def test_out_of_range_names_the_key_and_the_range() -> None:
    raw = small_config_dict()
    raw["phases"][0]["learning_rate"] = -0.1
    message = _error_for(raw)
    assert "phases[0].learning_rate: got -0.1; must be > 0.0" in message
    assert "allowed: 0.0 .. 10.0" in message


def test_wrong_type_says_what_was_expected() -> None:
    message = _error_for(small_config_dict(batch_size="thirty-two"))
    assert "batch_size: got 'thirty-two'; expected an integer" in message


def test_every_problem_is_reported_at_once() -> None:
    raw = small_config_dict(batch_size=0, label_smoothing=2.0)
    raw["data"]["augmentation"] = "fancy"
    message = _error_for(raw)
    # Three independent mistakes, three lines.
    assert "(3 problems)" in message
    for key in ("batch_size", "label_smoothing", "data.augmentation"):
        assert f"\n  {key}:" in message


def test_unknown_backbone_lists_the_registry() -> None:
    raw = small_config_dict()
    raw["model"]["backbone"] = "EfficientNetB9"
    message = _error_for(raw)
    assert "model.backbone: unknown backbone 'EfficientNetB9'" in message
    assert "EfficientNetB0" in message and "ResNet50" in message
    # The placeholder defaults keep that the only complaint, on one line.
    assert message.startswith("invalid config: model.backbone:") and "\n" not in message


def test_first_phase_must_train_the_head_on_a_frozen_backbone() -> None:
    raw = small_config_dict()
    raw["phases"][0]["unfreeze_blocks"] = 1
    assert "phases[0].unfreeze_blocks: phase 1 trains the head" in _error_for(raw)


def test_unfreeze_blocks_is_bounded_by_the_backbone() -> None:
    raw = small_config_dict()
    raw["model"] = {"backbone": "EfficientNetB0", "weights": None}
    raw["phases"][1]["unfreeze_blocks"] = 19
    message = _error_for(raw)
    # B0: top + 16 blocks + stem = 18 units.
    assert "phases[1].unfreeze_blocks: EfficientNetB0 has 18 blocks" in message
    assert "allowed: 0..18" in message


def test_drop_connect_is_rejected_for_backbones_without_it() -> None:
    raw = small_config_dict()
    raw["model"] = {"backbone": "ResNet50", "weights": None, "drop_connect_rate": 0.2}
    assert "model.drop_connect_rate: ResNet50 has no drop-connect" in _error_for(raw)


def test_source_formats_are_checked() -> None:
    raw = small_config_dict()
    raw["data"]["source"] = "synthetic:imagenet"
    message = _error_for(raw)
    assert (
        "synthetic task 'imagenet' is unknown; allowed: synthetic:source, synthetic:target, "
        "synthetic:far, synthetic:orientation" in message
    )
    raw["data"]["source"] = "synthetic:far"
    raw["data"]["synthetic"] = {"classes": 12}
    assert "synthetic.classes: synthetic:far has 10 classes, got 12" in _error_for(raw)
    raw["data"]["synthetic"] = {"classes": 10}
    assert TrainConfig.from_dict(raw).data.source == "synthetic:far"
    raw["data"]["source"] = "synthetic:orientation"
    raw["data"]["synthetic"] = {"classes": 13}
    assert "synthetic.classes: synthetic:orientation has 12 classes, got 13" in _error_for(raw)
    raw["data"]["source"] = "tfds:"
    assert "data.source: 'tfds:' needs a dataset name" in _error_for(raw)
    raw["data"]["source"] = "data/dogs"
    assert "synthetic: applies only to synthetic" in _error_for(raw)


def test_non_finite_numbers_are_rejected() -> None:
    raw = small_config_dict()
    raw["phases"][0]["learning_rate"] = float("nan")
    assert "phases[0].learning_rate" in _error_for(raw)


def test_load_config_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken.yaml: not valid YAML"):
        load_config(broken)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match=r"list.yaml: expected a mapping"):
        load_config(listing)
