"""The study registry: a name -> space, data, sampler, pruner, objective, budget, first trials.

Add a study by adding a space module under `spaces/` and an entry here, or write a study file
(`search.study.files`) instead. Names are looked up by `python -m search.run --study NAME` and
`python -m search.export --study NAME`; `python -m search.studies [NAME_OR_FILE]` lists them or
prints one's space (`search.studies`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import optuna

from search.pruning.collapse import CollapseRules
from search.pruning.decision import NO_PRUNER, PRUNERS
from spaces import demo, effnet_b0, effnet_b4, smoke
from spaces.finetune import Suggester
from trainers.config.schema import TrainConfig
from trainers.fit.history import TrainingHistory

Space = Callable[[Suggester, str], TrainConfig]


def best_validation_accuracy(history: TrainingHistory) -> float | None:
    """The objective: best validation accuracy over all epochs, not the last."""
    return history.best_val_accuracy


@dataclass(frozen=True)
class EnqueuedTrial:
    """A known configuration the study tries first: sampled parameter values, or a whole
    config (from a study file's `enqueue`), which its trial runs exactly, on the study's data."""

    label: str
    params: Mapping[str, Any]
    config: TrainConfig | None = None


@dataclass(frozen=True)
class StudySpec:
    name: str
    description: str
    space: Space
    default_data: str
    n_trials: int
    enqueued: tuple[EnqueuedTrial, ...] = ()
    rules: CollapseRules = field(default_factory=CollapseRules)
    #: The Optuna pruner asked after the collapse rules: one of `PRUNERS`, or `NO_PRUNER`.
    pruner: str = "median"
    #: Trials that finish before the median pruner starts comparing.
    pruner_startup_trials: int = 5
    #: Epochs before the Optuna pruner may act: at least the longest head phase, so it
    #: compares fine-tuning strategies rather than how fast heads warm up.
    pruner_warmup_epochs: int = 8
    #: Random trials before TPE models the space (enqueued trials count).
    sampler_startup_trials: int = 8
    seed: int = 0
    objective: Callable[[TrainingHistory], float | None] = best_validation_accuracy
    #: The study whose best trials this one re-trains with other seeds
    #: (`search.runner.confirmation`): its runs are MLflow children of that study's parent run.
    confirms: str | None = None

    def make_sampler(self, seed: int | None = None) -> optuna.samplers.BaseSampler:
        # multivariate + group: TPE models the conditional fine-tune parameters jointly, only
        # over trials where they exist. constant_liar: trials running in parallel (other
        # workers, other coordinators) count as bad guesses, so they are not proposed twice.
        # All three are "experimental" in Optuna; we rely on them.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(
                seed=self.seed if seed is None else seed,
                n_startup_trials=self.sampler_startup_trials,
                multivariate=True,
                group=True,
                constant_liar=True,
            )

    def __post_init__(self) -> None:
        if self.pruner not in PRUNERS and self.pruner != NO_PRUNER:
            raise ValueError(f"unknown pruner {self.pruner!r}; allowed: {', '.join(PRUNERS)}")

    def make_pruner(self) -> optuna.pruners.BasePruner:
        """The study's Optuna pruner, asked after the collapse rules (`rules`) let a trial go
        on. A plain Optuna pruner, not a wrapper, so that Optuna sees what it is (Hyperband's
        per-bracket sampling depends on it).

        The resource of `asha` and `hyperband` is the global epoch, and their first rung is the
        first epoch after the warm-up: rungs never compare a head-only epoch of one trial with
        a fine-tune epoch of another, since every trial's head phase ends within the warm-up
        (a head-only trial ends there and is never compared at a rung)."""
        if self.pruner == NO_PRUNER:
            return optuna.pruners.NopPruner()
        if self.pruner == "median":
            return optuna.pruners.MedianPruner(
                n_startup_trials=self.pruner_startup_trials,
                n_warmup_steps=self.pruner_warmup_epochs,
            )
        first_rung = self.pruner_warmup_epochs + 1
        if self.pruner == "asha":
            return optuna.pruners.SuccessiveHalvingPruner(
                min_resource=first_rung, reduction_factor=3
            )
        return optuna.pruners.HyperbandPruner(min_resource=first_rung, reduction_factor=3)


#: The seed guide's known-good recipe (docs/seed-guide.md): frozen phase at Adam 1e-3, then the top
#: blocks at 1e-5 with BatchNorm frozen, batch 16. The guide's "top 20 layers" is 2 whole
#: units on B4 (top + block7b), step 2 of its unfreeze ladder; its Adam becomes adamw at the
#: smallest decay in the space. `unfreeze_level` values below are ladder steps, not unit counts.
EFFNET_B4_RECIPE = EnqueuedTrial(
    "seed_guide_recipe",
    {
        "head_lr": 1e-3,
        "head_epochs": 8,
        "unfreeze_level": 2,
        "batch_size": 16,
        "weight_decay": 1e-6,
        "head_dropout": 0.2,
        "drop_connect_rate": 0.2,
        "augmentation": "none",
        "label_smoothing": 0.0,
        "ft_optimizer": "adamw",
        "ft_lr_adamw": 1e-5,
        "ft_epochs": 20,
        "warmup_frac": 0.0,
        "freeze_bn": True,
        "use_l2sp": False,
    },
)

DEMO_RECIPE = EnqueuedTrial(
    "known_good",
    {
        "head_lr": 3e-3,
        "head_epochs": 2,
        "unfreeze_level": 4,
        "batch_size": 16,
        "head_dropout": 0.2,
        "ft_optimizer": "adamw",
        "ft_lr_adamw": 1e-3,
        "ft_epochs": 3,
        "warmup_frac": 0.0,
        "freeze_bn": True,
    },
)

#: The guide's failed fine-tune (attempt 4: BatchNorm unfrozen, learning rate too high), so the
#: demo shows the pruner catching it within one epoch of unfreezing.
DEMO_BATCHNORM_UNFROZEN = EnqueuedTrial(
    "guide_attempt_4_batchnorm_unfrozen",
    {
        "head_lr": 3e-3,
        "head_epochs": 2,
        "unfreeze_level": 6,
        "batch_size": 32,
        "head_dropout": 0.2,
        "ft_optimizer": "adamw",
        "ft_lr_adamw": 1e-2,
        "ft_epochs": 3,
        "warmup_frac": 0.0,
        "freeze_bn": False,
    },
)

#: The pruner of the studies users run. `python -m bench.search_quality` (docs/benchmarks.md,
#: "Search quality"): at KerasTuner Hyperband's budget, over 3 seeds, the demo study reached 0.794 ±
#: 0.060 with `asha` or `hyperband` and 0.758 ± 0.011 with `median`, and `asha` got to
#: KerasTuner's best fastest (a median of 77% of its epochs).
RECOMMENDED_PRUNER = "asha"

STUDIES: dict[str, StudySpec] = {
    spec.name: spec
    for spec in (
        StudySpec(
            name="effnet_b4",
            description="EfficientNetB4 @380px fine-tuning strategies (Stanford Dogs)",
            space=effnet_b4.SPACE,
            default_data=effnet_b4.DEFAULT_DATA,
            n_trials=60,
            enqueued=(EFFNET_B4_RECIPE,),
            pruner=RECOMMENDED_PRUNER,
        ),
        StudySpec(
            name="effnet_b0",
            description="EfficientNetB0 @224px fine-tuning strategies",
            space=effnet_b0.SPACE,
            default_data=effnet_b0.DEFAULT_DATA,
            n_trials=60,
            pruner=RECOMMENDED_PRUNER,
        ),
        StudySpec(
            name="demo",
            description="MobileNetV3Small @64px on generated data; minutes on a CPU",
            space=demo.SPACE,
            default_data=demo.DEFAULT_DATA,
            n_trials=8,
            enqueued=(DEMO_RECIPE, DEMO_BATCHNORM_UNFROZEN),
            pruner=RECOMMENDED_PRUNER,
            pruner_startup_trials=3,
            pruner_warmup_epochs=3,
            sampler_startup_trials=6,
        ),
        StudySpec(
            name="smoke",
            description="the smallest real study: checks an installation in about a minute",
            space=smoke.SPACE,
            default_data=smoke.DEFAULT_DATA,
            n_trials=4,
            pruner_warmup_epochs=3,
        ),
    )
}


class UnknownStudyError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def get_study_spec(name: str) -> StudySpec:
    try:
        return STUDIES[name]
    except KeyError:
        raise UnknownStudyError(
            f"unknown study {name!r}; valid studies: {', '.join(sorted(STUDIES))}"
        ) from None
