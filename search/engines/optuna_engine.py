"""The Optuna engine: the study's own sampler (TPE) and pruner, `search.run`'s default."""

from __future__ import annotations

import optuna

from search.engines.base import EngineChoice, Proposal, ask_quietly
from search.study.registry import StudySpec
from search.trial.closing import Ending
from search.vocabulary import TrialAttr
from trainers.config.schema import TrainConfig
from trainers.errors import TrainerInputError


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

    def told(self, ending: Ending) -> bool | None:
        return None  # the study queued any re-run itself

    def ended_search(self) -> bool:
        return False

    def close(self) -> None:
        return None
