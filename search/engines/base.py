"""Where a study's trials come from: Optuna's sampler and pruner, or a KerasTuner oracle.

Whatever the engine, the coordinator runs a trial the same way: a spawned worker with the
project's trainer, the collapse rules on every epoch, the Optuna study as the record (budget,
liveness, export, analysis) and the same MLflow runs. An engine decides the rest:

- `ask`: the next trial and its config, or that none may start now (`WAIT`) or ever (None);
- `prune`: whether an epoch the collapse rules let pass ends the trial (Optuna's pruner;
  KerasTuner's oracles have none: Hyperband gives each trial its epochs up front);
- `told`: what follows once a trial is told (a KerasTuner oracle hears the result, and queues
  a crashed trial again itself, so the study queues no re-run of its own).

`search.engines.keras_tuner` holds the KerasTuner side.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

import optuna
from optuna.trial import FrozenTrial

from search.pruning.collapse import PruneDecision, optuna_decision
from search.study.registry import StudySpec
from search.trial.closing import Ending, Verdict
from search.vocabulary import TrialAttr
from trainers.config.schema import TrainConfig
from trainers.errors import TrainerInputError

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
class EpochPlan:
    """What a worker trains of its config beyond the config itself: a window of its global
    epochs, the weights it starts from, and whether to keep its best-epoch weights (a
    Hyperband round continues an earlier round's trial from them)."""

    after_epoch: int = 0
    #: The last epoch to train; None: the config's last.
    until_epoch: int | None = None
    initial_weights: str | None = None
    save_weights: bool = False

    def planned(self, config: TrainConfig) -> int:
        """Epochs the trial may train: what an epoch budget keeps for it while it runs."""
        last = config.total_epochs if self.until_epoch is None else self.until_epoch
        return max(0, min(last, config.total_epochs) - self.after_epoch)


@dataclass(frozen=True)
class Proposal:
    """A trial to run: the Optuna trial that records it, and its config (or why the space
    could not make one)."""

    trial: optuna.Trial
    config: TrainConfig | TrainerInputError
    plan: EpochPlan = EpochPlan()
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

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> PruneDecision | None: ...

    def told(self, ending: Ending) -> bool | None: ...

    def ended_search(self) -> bool: ...

    def close(self) -> None: ...


def ask_quietly(study: optuna.Study) -> optuna.Trial:
    with warnings.catch_warnings():
        # Optuna expects heartbeats with Study.optimize; we send them ourselves.
        warnings.simplefilter("ignore", UserWarning)
        return study.ask()


class OptunaEngine:
    """The study's own sampler (TPE) and pruner: `search.run`'s default."""

    study_requeues = True
    enqueues_known = True

    def __init__(self, spec: StudySpec, data_source: str) -> None:
        self.choice = EngineChoice()
        self.spec = spec
        self.data_source = data_source

    def sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        return self.spec.make_sampler(seed)

    def pruner(self) -> optuna.pruners.BasePruner:
        return self.spec.make_pruner()

    def check_study(self, study: optuna.Study) -> None:
        return None

    def ask(self, study: optuna.Study) -> Proposal:
        trial = ask_quietly(study)
        try:
            config: TrainConfig | TrainerInputError = self._config_of(trial)
        except TrainerInputError as error:
            config = error
        return Proposal(trial, config)

    def _config_of(self, trial: optuna.Trial) -> TrainConfig:
        """The config a trial runs: an enqueued config that is not a point of the space as it
        is (`search.study.setup`), else what the space samples."""
        enqueued = trial.user_attrs.get(TrialAttr.ENQUEUED_CONFIG)
        if enqueued is not None:
            return TrainConfig.from_yaml(enqueued, origin=f"trial {trial.number}, enqueued")
        return self.spec.space(trial, self.data_source)

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> PruneDecision | None:
        return optuna_decision(study, trial)

    def told(self, ending: Ending) -> bool | None:
        return None  # the study queued any re-run itself

    def ended_search(self) -> bool:
        return False

    def close(self) -> None:
        return None


class FixedValuesSampler(optuna.samplers.BaseSampler):
    """Answers each parameter with the value another engine chose for the trial being asked
    (`values`, set before `ask`), so that the Optuna trial records exactly that trial."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, optuna.distributions.BaseDistribution]:
        return {}

    def sample_relative(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        search_space: dict[str, optuna.distributions.BaseDistribution],
    ) -> dict[str, Any]:
        return {}

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: optuna.distributions.BaseDistribution,
    ) -> Any:
        if param_name not in self.values:
            raise TrainerInputError(
                f"the space asked for {param_name!r}, which the other engine did not choose"
            )
        return self.values[param_name]
