"""Spaces: pure functions of a trial, bounds and conditionals, under FixedTrial and samplers."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import optuna
import pytest
from optuna.trial import FixedTrial

from search.studies import EFFNET_B4_RECIPE
from spaces import demo, effnet_b0, effnet_b4, smoke
from tests.conftest import REPO

LINEAR_PROBE = {
    "head_lr": 2e-3,
    "head_epochs": 5,
    "unfreeze_blocks": 0,
    "batch_size": 32,
    "weight_decay": 1e-4,
    "head_dropout": 0.3,
    "drop_connect_rate": 0.1,
    "augmentation": "basic",
    "label_smoothing": 0.1,
}


def test_seed_recipe_becomes_the_guides_two_phase_config() -> None:
    config = effnet_b4.space(FixedTrial(dict(EFFNET_B4_RECIPE.params)), "data/dogs")
    head, fine_tune = config.phases
    assert config.model.backbone == "EfficientNetB4" and config.data.image_size == 380
    assert config.model.weights == "imagenet" and config.data.source == "data/dogs"
    # Frozen phase at 1e-3, then the top 2 units at 1e-5 with BatchNorm frozen, batch 16.
    assert (head.unfreeze_blocks, head.learning_rate, head.optimizer) == (0, 1e-3, "adam")
    assert (fine_tune.unfreeze_blocks, fine_tune.learning_rate) == (2, 1e-5)
    assert fine_tune.freeze_batchnorm and config.batch_size == 16
    assert config.l2sp_alpha == 0.0


def test_fine_tune_parameters_are_not_sampled_for_a_linear_probe() -> None:
    # FixedTrial raises if the space asks for a parameter it was not given: so a linear probe
    # never asks for ft_lr, ft_optimizer, freeze_bn, warmup or L2-SP.
    config = effnet_b4.space(FixedTrial(LINEAR_PROBE), "data/dogs")
    assert len(config.phases) == 1
    assert config.data.augmentation == "basic" and config.label_smoothing == 0.1
    assert config.model.drop_connect_rate == 0.1


def test_each_optimizer_has_its_own_learning_rate_parameter() -> None:
    params: dict[str, Any] = {
        **LINEAR_PROBE,
        "unfreeze_blocks": 3,
        "ft_optimizer": "sgd",
        "ft_epochs": 10,
        "ft_lr_sgd": 1e-2,
        "warmup_frac": 0.05,
        "freeze_bn": False,
        "use_l2sp": True,
        "l2sp_alpha": 1e-3,
    }
    config = effnet_b4.space(FixedTrial(params), "tfds:stanford_dogs")
    phase = config.phases[1]
    assert (phase.optimizer, phase.learning_rate, phase.momentum) == ("sgd", 1e-2, 0.9)
    assert phase.schedule == "cosine" and phase.warmup_fraction == 0.05
    assert not phase.freeze_batchnorm and config.l2sp_alpha == 1e-3


@pytest.mark.parametrize("module", [effnet_b4, effnet_b0, demo, smoke], ids=lambda m: m.__name__)
def test_sampled_configs_respect_bounds_and_conditionals(module: Any) -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    space = module.SPACE
    seen_unfreeze = set()
    for _ in range(150):
        trial = study.ask()
        config = module.space(trial, module.DEFAULT_DATA)
        params = trial.params
        head = config.phases[0]
        assert space.head_lr[0] <= head.learning_rate <= space.head_lr[1]
        assert head.unfreeze_blocks == 0 and head.epochs in space.head_epochs
        assert config.batch_size in space.batch_sizes
        level = params["unfreeze_blocks"]
        seen_unfreeze.add(level)
        blocks = space.unfreeze_levels[level]
        fine_tune_params = {"ft_optimizer", "ft_epochs", "freeze_bn"}
        if blocks == 0:
            # Conditional parameters exist only when blocks are unfrozen.
            assert len(config.phases) == 1
            assert not fine_tune_params & set(params)
            conditional = {"ft_lr_adamw", "ft_lr_sgd", "warmup_frac", "use_l2sp", "l2sp_alpha"}
            assert not conditional & set(params)
        else:
            phase = config.phases[1]
            assert fine_tune_params <= set(params)
            low, high = space.ft_lr_sgd if phase.optimizer == "sgd" else space.ft_lr_adamw
            assert low <= phase.learning_rate <= high
            assert phase.unfreeze_blocks == blocks
            # Only the chosen optimizer's rate is sampled.
            other = "ft_lr_adamw" if phase.optimizer == "sgd" else "ft_lr_sgd"
            assert other not in params
        study.tell(trial, 0.5)
    assert seen_unfreeze == set(range(len(space.unfreeze_levels)))


def test_spaces_work_under_tpe_with_conditionals() -> None:
    sampler = optuna.samplers.TPESampler(seed=0, n_startup_trials=5, multivariate=True, group=True)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for _ in range(15):
        trial = study.ask()
        config = demo.space(trial, demo.DEFAULT_DATA)
        study.tell(trial, float(len(config.phases)))
    assert len(study.trials) == 15


def test_spaces_import_no_keras_and_are_pure() -> None:
    code = (
        "import sys; from optuna.trial import FixedTrial; import spaces.effnet_b4 as s;"
        "from search.studies import EFFNET_B4_RECIPE as r;"
        "a = s.space(FixedTrial(dict(r.params))); b = s.space(FixedTrial(dict(r.params)));"
        "assert a == b;"
        "bad = [m for m in ('tensorflow', 'keras') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


@pytest.mark.parametrize(
    ("module", "level", "last_unit"),
    [
        (effnet_b4, 3, "block7a"),  # all of stage 7
        (effnet_b4, 6, "block6a"),  # all of stage 6
        (effnet_b4, 8, "block4a"),  # down to stage 4
        (effnet_b0, 2, "block7a"),
        (effnet_b0, 8, "block3a"),
    ],
)
def test_the_unfreeze_ladder_ends_on_whole_stages(module: Any, level: int, last_unit: str) -> None:
    from trainers.backbones import get_backbone

    params = {**LINEAR_PROBE, "unfreeze_blocks": level, "ft_optimizer": "adamw", "ft_epochs": 5}
    params |= {"ft_lr_adamw": 1e-5, "warmup_frac": 0.0, "freeze_bn": True, "use_l2sp": False}
    config = module.space(FixedTrial(params), "data/dogs")
    units = get_backbone(config.model.backbone).unit_names
    # The deepest unfrozen unit is the first block of its stage: no stage is cut.
    assert units[config.phases[1].unfreeze_blocks - 1] == last_unit
