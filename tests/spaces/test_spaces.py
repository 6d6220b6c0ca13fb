"""Spaces: pure functions of a trial, bounds and conditionals, under FixedTrial and samplers."""

from __future__ import annotations

from typing import Any

import optuna
import pytest
from optuna.trial import FixedTrial

from search.study.registry import EFFNET_B4_RECIPE, STUDIES
from spaces import demo, effnet_b0, effnet_b4, smoke

LINEAR_PROBE = {
    "head_lr": 2e-3,
    "head_epochs": 5,
    "unfreeze_level": 0,
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
        "unfreeze_level": 3,
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
        assert space.head_dropout[0] <= config.model.head_dropout <= space.head_dropout[1]
        # Ranges a space leaves out are fixed at the config default, not sampled.
        _check_optional_range(space.weight_decay, "weight_decay", head.weight_decay, params)
        _check_optional_range(
            space.drop_connect_rate, "drop_connect_rate", config.model.drop_connect_rate, params
        )
        assert config.label_smoothing in space.label_smoothing
        assert config.data.augmentation in space.augmentations
        level = params["unfreeze_level"]
        seen_unfreeze.add(level)
        blocks = space.unfreeze_ladder[level]
        assert "unfreeze_blocks" not in params  # the config field's name, never a parameter
        assert config.unfrozen_units == blocks
        # The phase the collapse rules watch for an unfreeze shock: the fine-tune phase, if any.
        assert config.unfreezing_phases == ((2,) if blocks else ())
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
            assert phase.warmup_fraction in space.warmup_fractions
            assert ("warmup_frac" in params) == (len(space.warmup_fractions) > 1)
            assert phase.weight_decay == head.weight_decay
            if space.l2sp_alpha is None:
                assert "use_l2sp" not in params and config.l2sp_alpha == 0.0
            elif params["use_l2sp"]:
                assert space.l2sp_alpha[0] <= config.l2sp_alpha <= space.l2sp_alpha[1]
            else:
                # The strength is sampled only when L2-SP is on.
                assert "l2sp_alpha" not in params and config.l2sp_alpha == 0.0
        study.tell(trial, 0.5)
    assert seen_unfreeze == set(range(len(space.unfreeze_ladder)))


def _check_optional_range(
    bounds: tuple[float, float] | None, name: str, value: float, params: dict[str, Any]
) -> None:
    if bounds is None:
        assert name not in params
    else:
        assert bounds[0] <= value <= bounds[1]


@pytest.mark.parametrize("module", [effnet_b4, demo], ids=lambda m: m.__name__)
def test_spaces_work_under_tpe_with_conditionals(module: Any) -> None:
    # The sampler the module's study makes: multivariate, grouped TPE, which sees the
    # conditional parameters as separate groups.
    sampler = STUDIES[module.__name__.removeprefix("spaces.")].make_sampler()
    study = optuna.create_study(direction="maximize", sampler=sampler)
    fine_tuned = 0
    for _ in range(25):
        trial = study.ask()
        config = module.space(trial, module.DEFAULT_DATA)
        unfrozen = config.phases[-1].unfreeze_blocks
        # Fine-tune parameters exist exactly when blocks are unfrozen, under TPE's own draws.
        assert ("ft_optimizer" in trial.params) == (unfrozen > 0)
        assert ("freeze_bn" in trial.params) == (unfrozen > 0)
        assert len(config.phases) == (2 if unfrozen else 1)
        fine_tuned += unfrozen > 0
        # A deterministic objective that favours fine-tuning, so TPE has something to learn.
        study.tell(trial, float(unfrozen > 0) + config.phases[0].learning_rate)
    assert 0 < fine_tuned < 25
    completed = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(completed) == 25


def test_spaces_are_pure() -> None:
    # A space is a function of its trial alone (that it imports no Keras is checked in
    # tests/test_repository.py): the same trial gives the same config.
    params = dict(EFFNET_B4_RECIPE.params)
    assert effnet_b4.space(FixedTrial(params)) == effnet_b4.space(FixedTrial(params))


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
    from trainers.model.backbones import get_backbone

    params = {**LINEAR_PROBE, "unfreeze_level": level, "ft_optimizer": "adamw", "ft_epochs": 5}
    params |= {"ft_lr_adamw": 1e-5, "warmup_frac": 0.0, "freeze_bn": True, "use_l2sp": False}
    config = module.space(FixedTrial(params), "data/dogs")
    units = get_backbone(config.model.backbone).unit_names
    # The deepest unfrozen unit is the first block of its stage: no stage is cut.
    assert units[config.phases[1].unfreeze_blocks - 1] == last_unit
