"""KerasTuner's Hyperband over the project's space, training with the project's trainer.

The competitor of `bench.search_quality`, as a user of KerasTuner would set it up: a generic
`keras_tuner.Hyperband` (its own oracle: random configurations, brackets, rounds, successive
halving), objective `val_accuracy`, given the same space and data as the project's studies. Its
trials run `bench.trials.train`, so an epoch costs the same as the project's:

- the space is the project's own `FineTuneSpace`, asked through `HyperParametersSuggester`, an
  adapter from Optuna-style `suggest_*` calls to `keras_tuner.HyperParameters` (a fine-tune
  parameter is declared when a trial first asks for it, as KerasTuner's dynamic spaces do);
- a trial trains its configuration and stops after `tuner/epochs` global epochs (Hyperband's
  budget for that round); its score is its best validation accuracy, as KerasTuner scores
  epochs;
- a trial that continues an earlier round's trial (`tuner/trial_id`) would, in KerasTuner's own
  Hyperband, reload that trial's checkpoint and train from `tuner/initial_epoch`. The project's
  trainer cannot resume inside a run, so it is trained again from the start with the same seed
  (the same epochs again, then more) and **charged only what the native resume costs**:
  `tuner/epochs - tuner/initial_epoch` epochs and that share of its seconds.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bench.trials import TrainedTrial, TrialData, train
from search.pruning import EpochView
from spaces.finetune import FineTuneSpace
from trainers.config import TrainConfig


class HyperParametersSuggester:
    """Optuna's `suggest_*` calls, answered by a `keras_tuner.HyperParameters`."""

    def __init__(self, hp: Any) -> None:
        self.hp = hp

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float:
        sampling = "log" if log else "linear"
        return float(self.hp.Float(name, low, high, step=step, sampling=sampling))

    def suggest_int(
        self, name: str, low: int, high: int, *, step: int = 1, log: bool = False
    ) -> int:
        return int(self.hp.Int(name, low, high, step=step, sampling="log" if log else "linear"))

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        return self.hp.Choice(name, list(choices))


class _Declaring:
    """Walks the space once, declaring each parameter it asks for in a `HyperParameters` and
    answering so that the walk enters every branch (the deepest unfreeze level, `forced`
    choices, the last choice otherwise)."""

    def __init__(self, hp: Any, forced: dict[str, Any]) -> None:
        self.hp = hp
        self.forced = forced

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float:
        return HyperParametersSuggester(self.hp).suggest_float(name, low, high, step=step, log=log)

    def suggest_int(
        self, name: str, low: int, high: int, *, step: int = 1, log: bool = False
    ) -> int:
        HyperParametersSuggester(self.hp).suggest_int(name, low, high, step=step, log=log)
        return high

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        self.hp.Choice(name, list(choices))
        return self.forced.get(name, choices[-1])


def declare_space(space: FineTuneSpace, data_source: str) -> Any:
    """Every parameter of `space` as a KerasTuner `HyperParameters`, declared up front.

    KerasTuner's oracles sample only what is declared before a trial starts, and a space asks
    for its fine-tune parameters only when blocks are unfrozen; so each is declared here, once
    per fine-tune optimizer (each has its own learning-rate range). All of them are sampled in
    every trial, and a configuration ignores the ones it does not use, as a `build` function
    that declares everything does; Hyperband samples at random, so this biases nothing.
    """
    import keras_tuner

    hp = keras_tuner.HyperParameters()
    for optimizer in space.ft_optimizers:
        space.sample(_Declaring(hp, {"ft_optimizer": optimizer}), data_source)
    return hp


@dataclass(frozen=True)
class HyperbandTrial:
    """One KerasTuner trial as the benchmark counts it."""

    params: dict[str, Any]
    trained: TrainedTrial
    #: Epochs and seconds charged: what KerasTuner's own Hyperband would have spent.
    epochs: int
    seconds: float
    continues: bool

    @property
    def best(self) -> float:
        return self.trained.best


def run_keras_tuner_hyperband(
    space: FineTuneSpace,
    data_source: str,
    *,
    max_epochs: int,
    seed: int,
    factor: int = 3,
    on_trial: Callable[[HyperbandTrial], None] = lambda _trial: None,
) -> list[HyperbandTrial]:
    """Run one Hyperband iteration (every bracket once) and return its trials in order."""
    import keras_tuner

    trials: list[HyperbandTrial] = []

    class ProjectTrainerHyperband(keras_tuner.Hyperband):
        def run_trial(self, trial: Any, *args: Any, **kwargs: Any) -> dict[str, float]:
            hp = trial.hyperparameters
            config: TrainConfig = space.sample(HyperParametersSuggester(hp), data_source)
            until = int(hp.values["tuner/epochs"])
            initial = int(hp.values["tuner/initial_epoch"])

            def stop_at_round_end(epochs: tuple[EpochView, ...], _data: TrialData) -> str | None:
                return "round_end" if len(epochs) >= until else None

            trained = train(config, stop_at_round_end)
            continues = "tuner/trial_id" in hp.values
            run = len(trained.epochs)
            charged = max(0, run - initial) if continues else run
            counted = HyperbandTrial(
                params={k: v for k, v in hp.values.items() if not k.startswith("tuner/")},
                trained=trained,
                epochs=charged,
                seconds=trained.seconds * (charged / run if run else 0.0),
                continues=continues,
            )
            trials.append(counted)
            on_trial(counted)
            return {"val_accuracy": trained.best}

    with tempfile.TemporaryDirectory(prefix="keras-tuner-") as folder:
        tuner = ProjectTrainerHyperband(
            objective=keras_tuner.Objective("val_accuracy", direction="max"),
            hyperparameters=declare_space(space, data_source),
            max_epochs=max_epochs,
            factor=factor,
            hyperband_iterations=1,
            seed=seed,
            directory=folder,
            project_name="bench",
            overwrite=True,
        )
        tuner.search(verbose=0)
    return trials
