"""Where a study's trials come from: Optuna's sampler and pruner, or a KerasTuner oracle.

Whatever the engine, the coordinator runs a trial the same way: a spawned worker with the
project's trainer, the collapse rules on every epoch, the Optuna study as the record (budget,
liveness, export, analysis) and the same MLflow runs. An engine decides the rest:

- `ask`: the next trial and its config, or that none may start now (`WAIT`) or ever (None);
- `pruner`: the study's Optuna pruner, which judges every epoch the collapse rules let pass
  (`search.pruning.decision`; KerasTuner's oracles have none: Hyperband gives each trial its
  epochs up front);
- `told`: what follows once a trial is told (a KerasTuner oracle hears the result, and queues
  a crashed trial again itself, so the study queues no re-run of its own).

`search.engines.optuna_engine` and `search.engines.keras_tuner` are the two engines;
`search.engines.factory` makes the one a run's settings choose.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Final, Literal, Protocol

import optuna

from search.trial.closing import Ending, Verdict
from trainers.config.schema import TrainConfig
from trainers.errors import TrainerInputError
from trainers.fit.window import EVERY_EPOCH, EpochWindow

ENGINES = ("optuna", "keras-tuner")

#: `Engine.ask`'s answer when no trial may start until a running one ends (Hyperband waiting
#: for the rest of a round).
WAIT: Final = "wait"
Wait = Literal["wait"]


@dataclass(frozen=True)
class EngineChoice:
    """`--engine` and, for KerasTuner, `--oracle`."""

    name: str = "optuna"
    oracle: str = "hyperband"

    def __post_init__(self) -> None:
        if self.name not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {self.name=}")

    @property
    def label(self) -> str:
        """As recorded on the study: `optuna`, or `keras-tuner hyperband` and the like."""
        return self.name if self.name == "optuna" else f"{self.name} {self.oracle}"

    @property
    def options(self) -> str:
        """The command-line options that select it."""
        oracle = "" if self.name == "optuna" else f" --oracle {self.oracle}"
        return f"--engine {self.name}{oracle}"


@dataclass(frozen=True)
class Proposal:
    """A trial to run: the Optuna trial that records it, and its config (or why the space
    could not make one)."""

    trial: optuna.Trial
    config: TrainConfig | TrainerInputError
    #: Which of the config's epochs the worker trains, and from which weights.
    window: EpochWindow = EVERY_EPOCH
    #: Whether the worker keeps its best epoch's weights (a Hyperband round continues an
    #: earlier round's trial from them).
    save_weights: bool = False
    #: Set when the trial needs no training (a Hyperband continuation whose earlier trial
    #: trained its whole config): the earlier trial's verdict, which it is closed with at once,
    #: and its best validation accuracy.
    inherited: Verdict | None = None
    inherited_best: float | None = None


class Engine(Protocol):
    """What the coordinator asks of an engine (see the module docstring)."""

    choice: EngineChoice
    #: Whether the study queues re-runs of crashed trials (False: the engine does).
    study_requeues: bool
    #: Whether the study's known configurations are enqueued.
    enqueues_known: bool

    def sampler(self, seed: int) -> optuna.samplers.BaseSampler: ...

    def pruner(self) -> optuna.pruners.BasePruner: ...

    def check_study(self, study: optuna.Study) -> None: ...

    def ask(self, study: optuna.Study) -> Proposal | Wait | None: ...

    def told(self, ending: Ending) -> bool | None: ...

    def ended_search(self) -> bool: ...

    def close(self) -> None: ...


def ask_quietly(study: optuna.Study) -> optuna.Trial:
    with warnings.catch_warnings():
        # Optuna expects heartbeats with Study.optimize; we send them ourselves.
        warnings.simplefilter("ignore", UserWarning)
        return study.ask()
