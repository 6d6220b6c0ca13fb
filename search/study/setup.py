"""Opening a study for a run: how to run it, and whether the command may continue it.

`RunSettings` holds everything `search.run` parses. `open_study` creates the study or loads it,
refuses (`StudyMismatchError`, one line) a command that would continue it with other data,
another engine, pruner, backbone, weights or image size, or a study whose trials still use a
renamed parameter, records all of those and the parameters' roles, and enqueues the spec's
known configurations once (with the Optuna engine). Coordinators call it under the study lock,
so several that start together on a fresh database create tables, study and queue one at a
time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import optuna

from search.engines.base import Engine, EngineChoice
from search.engines.optuna_engine import OptunaEngine
from search.storage.retry import DEFAULT_STORAGE_RETRY_S, StorageRetry, retry_storage_calls
from search.storage.urls import make_storage, redact
from search.study.budget import Limits
from search.study.overrides import study_config
from search.study.registry import EnqueuedTrial, StudySpec
from search.trial.retry import RetryPolicy, retry_params
from search.vocabulary import RENAMED_PARAMS, StudyAttr, TrialAttr
from spaces.finetune import FineTuneSpace


class StudyMismatchError(ValueError):
    """The command does not match the study it would continue; reported as one line."""


#: The study's caches live in this subfolder of its output folder.
CACHE_FOLDER = "cache"


@dataclass(frozen=True)
class RunSettings:
    """How to run a study; every field has a CLI flag in `search.run`."""

    #: The target total of trials; None when a compute budget alone bounds the study.
    n_trials: int | None
    storage: str
    data_source: str
    tracking_uri: str
    output_dir: Path
    timeout: float | None = None
    #: Concurrent worker processes; each gets its own entry of `worker_environments`.
    workers: int = 1
    #: Per-slot environment, e.g. CUDA_VISIBLE_DEVICES pinning slot i to GPU i.
    worker_environments: tuple[dict[str, str], ...] = ()
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    #: Seconds between heartbeats of running trials; a trial whose coordinator has been silent
    #: for `grace_period` seconds is failed and re-run (Optuna's RDB heartbeat).
    heartbeat_interval: int = 10
    grace_period: int = 60
    #: Compute budgets shared by every coordinator and resume (`search.study.budget`).
    budget_epochs: int | None = None
    budget_hours: float | None = None
    #: Decoded images and frozen features shared by the study's trials, under the output
    #: folder (`--no-cache` turns them off).
    cache: bool = True
    #: `--cache-budget-gb` in bytes; None: a quarter of the worker machine's memory.
    cache_budget_bytes: int | None = None
    #: Start each slot's next worker process while its current trial trains
    #: (`search.runner.prewarm`).
    prewarm: bool = True
    #: Seconds to wait for a database that stopped answering before the study stops
    #: (`search.storage.retry`).
    storage_retry_s: float = DEFAULT_STORAGE_RETRY_S
    #: What chooses the trials (`--engine`, `--oracle`; `search.engines.base`).
    engine: EngineChoice = field(default_factory=EngineChoice)

    @property
    def cache_dir(self) -> Path | None:
        return self.output_dir / CACHE_FOLDER if self.cache else None

    @property
    def limits(self) -> Limits:
        # KerasTuner's Hyperband ends after its brackets; the other oracles need a limit.
        engine_ends = self.engine.name == "keras-tuner" and self.engine.oracle == "hyperband"
        return Limits(self.n_trials, self.budget_epochs, self.budget_hours, engine_ends)


def open_study(
    spec: StudySpec,
    settings: RunSettings,
    *,
    identity: str,
    engine: Engine | None = None,
    retry: StorageRetry | None = None,
) -> tuple[optuna.Study, optuna.storages.RDBStorage]:
    """The study (created, or loaded and checked) and its storage; call under the study lock.

    `identity` (host:pid) seeds the sampler of every coordinator but a new study's first;
    `engine` gives the sampler and pruner (default: Optuna's, the spec's); with `retry`,
    every storage call rides out a lost connection (`search.storage.retry`).
    """
    storage = make_storage(
        settings.storage,
        heartbeat_interval=settings.heartbeat_interval,
        grace_period=settings.grace_period,
    )
    if retry is not None:
        retry_storage_calls(storage, retry)
    engine = engine if engine is not None else OptunaEngine(spec, settings.data_source)
    existing = spec.name in optuna.get_all_study_names(storage)
    # A new study draws from the spec's seed, so a fresh demo is reproducible; every later or
    # concurrent coordinator gets its own seed, or they would all replay the same draws.
    seed = spec.seed if not existing else hash((spec.seed, identity)) % 2**31
    study = optuna.create_study(
        study_name=spec.name,
        storage=storage,
        sampler=engine.sampler(seed),
        pruner=engine.pruner(),
        direction="maximize",
        load_if_exists=True,
    )
    if existing:
        _check_continues(study, spec, settings)
    engine.check_study(study)
    for key, value in _recorded(spec, settings).items():
        study.set_user_attr(key, value)
    if isinstance(spec.space, FineTuneSpace):
        roles = {p.name: p.role.value for p in spec.space.parameters()}
        study.set_user_attr(StudyAttr.PARAM_ROLES, roles)
    if engine.enqueues_known:
        for known in spec.enqueued:
            _enqueue(study, spec, known, settings.data_source)
    return study, storage


def _recorded(spec: StudySpec, settings: RunSettings) -> dict[str, object]:
    """What a resume must match: data, pruner, and the model the space trains."""
    recorded: dict[str, object] = {
        StudyAttr.DATA_SOURCE: settings.data_source,
        StudyAttr.ENGINE: settings.engine.label,
    }
    if settings.engine.name == "optuna":
        recorded[StudyAttr.PRUNER] = spec.pruner
    if isinstance(spec.space, FineTuneSpace):
        recorded |= {
            StudyAttr.BACKBONE: spec.space.backbone,
            StudyAttr.WEIGHTS: spec.space.weights,
            StudyAttr.IMAGE_SIZE: spec.space.image_size,
        }
    return recorded


def _enqueue(study: optuna.Study, spec: StudySpec, known: EnqueuedTrial, data: str) -> None:
    """Queue a known configuration once, however many coordinators start (under the lock).

    A config that is a point of the space is queued as its parameters, so the sampler learns
    from it like from any trial; any other runs as it is, with no sampled parameters."""
    if known.config is None:
        params: dict[str, object] | None = dict(known.params)
        extra: dict[str, str] = {}
    else:
        # On a space that lists its parameters, moved onto the study's data; on any other (a
        # confirmation of a study whose space is a function), exactly as it was trained.
        config, params = known.config, None
        if isinstance(spec.space, FineTuneSpace):
            config = study_config(known.config, spec.space, data)
            params = spec.space.params_of(config)
        extra = {} if params is not None else {TrialAttr.ENQUEUED_CONFIG: config.to_yaml()}
    if params:
        # skip_if_exists: a coordinator that died half-way through this loop is completed by
        # the next one, and nothing is queued twice.
        study.enqueue_trial(
            params, user_attrs={TrialAttr.ENQUEUED: known.label}, skip_if_exists=True
        )
        return
    # Optuna's skip_if_exists compares parameters, and these trials have none: compare labels.
    trials = study.get_trials(deepcopy=False)
    queued = {trial.user_attrs.get(TrialAttr.ENQUEUED) for trial in trials}
    if known.label not in queued:
        study.enqueue_trial({}, user_attrs={TrialAttr.ENQUEUED: known.label, **extra})


def _check_continues(study: optuna.Study, spec: StudySpec, settings: RunSettings) -> None:
    """Refuse to continue a study the command does not match."""
    storage_label = redact(settings.storage)
    used = {name for trial in study.get_trials(deepcopy=False) for name in retry_params(trial)}
    renamed = sorted(used & RENAMED_PARAMS.keys())
    if renamed:
        old = renamed[0]
        raise StudyMismatchError(
            f"study {spec.name!r} in {storage_label} was created before the parameter "
            f"{old!r} was renamed {RENAMED_PARAMS[old]!r} and cannot be resumed; export its "
            f"best trial with python -m search.export --study {spec.name} --storage "
            f"{storage_label}, then start a new study with another --storage"
        )
    recorded = study.user_attrs.get(StudyAttr.DATA_SOURCE)
    if recorded is not None and recorded != settings.data_source:
        raise StudyMismatchError(
            f"study {spec.name!r} was started with data {recorded!r}, not "
            f"{settings.data_source!r}; pass --data {recorded} to continue it, or use "
            "another --storage for a new study"
        )
    # One engine chooses a study's trials: a KerasTuner oracle knows only its own.
    engine = study.user_attrs.get(StudyAttr.ENGINE, EngineChoice().label)
    if engine != settings.engine.label:
        options_then = EngineChoice(*engine.split(" ")).options
        raise StudyMismatchError(
            f"study {spec.name!r} was started with engine {engine!r}, not "
            f"{settings.engine.label!r}; pass {options_then} to continue it, or use another "
            "--storage for a new study"
        )
    # Hyperband's brackets and successive halving's rungs hold only if every trial of the
    # study is judged by the same pruner; trials of one study compare on one model.
    options = {
        StudyAttr.PRUNER: "--pruner",
        StudyAttr.BACKBONE: "--backbone",
        StudyAttr.WEIGHTS: "--weights",
        StudyAttr.IMAGE_SIZE: "--image-size",
    }
    wanted = _recorded(spec, settings)
    for key, option in options.items():
        started = study.user_attrs.get(key)
        if started is not None and key in wanted and started != wanted[key]:
            raise StudyMismatchError(
                f"study {spec.name!r} was started with {key.replace('_', ' ')} {started!r}, not "
                f"{wanted[key]!r}; pass {option} {started} to continue it, or use another "
                "--storage for a new study"
            )
