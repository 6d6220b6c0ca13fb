"""The engine a run's settings choose (`--engine`, `--oracle`): the coordinator names none."""

from __future__ import annotations

from search.engines.base import Engine
from search.engines.keras_tuner import KerasTunerEngine
from search.engines.optuna_engine import OptunaEngine
from search.reporting.console import Log
from search.study.registry import StudySpec
from search.study.setup import RunSettings


def make_engine(spec: StudySpec, settings: RunSettings, *, identity: str, log: Log) -> Engine:
    """The engine `settings` chooses; `identity` (host:pid) names this coordinator's requests."""
    if settings.engine.name == "optuna":
        return OptunaEngine(spec, settings.data_source)
    return KerasTunerEngine(
        spec,
        settings.engine,
        data_source=settings.data_source,
        output_dir=settings.output_dir,
        n_trials=settings.n_trials,
        retry=settings.retry,
        identity=identity,
        log=log,
        study_bounded=settings.limits.bounded or settings.timeout is not None,
    )
