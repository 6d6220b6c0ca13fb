"""The words a study stores: why trials end, and the keys of trial and study attributes.

Every reason and attribute key the search writes to Optuna or MLflow is defined here and only here,
so that the runner, the pruner, the retry policy, the analysis and the tests agree on them. The one
reason not listed is an Optuna pruner's, which is its name (`median`, `asha`, `hyperband`:
`search.pruning.decision.PRUNERS`). Both enums are `StrEnum`s: a member *is* its string, so it can
be stored, compared with what the storage returns, and used as a dictionary key or an MLflow tag as
it is.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """Why a trial stopped early or failed (user attribute `prune_reason` or `fail_reason`,
    and the MLflow tag of the same name)."""

    # The collapse rules (search/pruning/collapse.py): pruned, or, for `collapse` and
    # `unfreeze_shock` after an epoch clearly above chance, completed with that best value.
    NAN = "nan"
    CHANCE = "chance"
    UNFREEZE_SHOCK = "unfreeze_shock"
    COLLAPSE = "collapse"
    # Failed in the worker (search/runner/worker.py); a `gpu_oom` trial is told PRUNED, so that the
    # sampler learns its region is infeasible.
    INPUT = "input"
    GPU_OOM = "gpu_oom"
    HOST_OOM = "host_oom"
    ERROR = "error"
    # Failed by the coordinator.
    WORKER_DIED = "worker_died"
    #: Its coordinator stopped heart-beating (killed, machine lost); failed by a peer's sweep.
    STALE_HEARTBEAT = "stale_heartbeat"
    #: Stopped on purpose (Ctrl-C, SIGTERM, the study stopped).
    INTERRUPTED = "interrupted"
    #: A peer failed the trial as stale while it still ran here; this copy is dropped.
    TAKEN_OVER = "taken_over"
    #: What a worker tells its trainer when the coordinator is gone.
    COORDINATOR_GONE = "coordinator_gone"


class TrialAttr(StrEnum):
    """Keys of trial user attributes (the reasons are also MLflow tag keys)."""

    PRUNE_REASON = "prune_reason"
    #: The numbers behind a prune, e.g.
    #: `best 0.850 → 0.550, 0.560 at epochs 3–4 (−29.0 pts; noise ±6.5 pts)`.
    PRUNE_EVIDENCE = "prune_evidence"
    #: A trial the collapse rules stopped after a good epoch, completed with that epoch's value:
    #: the rule (`collapse`, `unfreeze_shock`) and its numbers (also MLflow tags).
    STOP_REASON = "stop_reason"
    STOP_EVIDENCE = "stop_evidence"
    FAIL_REASON = "fail_reason"
    FAIL_DETAIL = "fail_detail"
    BEST_EPOCH = "best_epoch"
    #: What a trial cost, however it ended: epochs trained and seconds its worker ran (also
    #: MLflow metrics), what a compute budget counts.
    EPOCHS_SPENT = "epochs_spent"
    SECONDS_SPENT = "seconds_spent"
    #: The epochs a trial's config may train, recorded when it starts: what an epoch budget
    #: keeps for it while it runs.
    EPOCHS_PLANNED = "epochs_planned"
    #: The resolved config, exactly as the worker trained it; `search.export` writes it out.
    CONFIG_YAML = "config_yaml"
    MLFLOW_RUN_ID = "mlflow_run_id"
    #: host:pid of the coordinator that runs the trial.
    COORDINATOR = "coordinator"
    #: Label of a known configuration the study enqueued.
    ENQUEUED = "enqueued"
    #: An enqueued config (YAML) that is not a point of the space: the trial runs it as it is,
    #: instead of sampling.
    ENQUEUED_CONFIG = "enqueued_config"
    TRAIN_IMAGES = "train_images"
    VALIDATION_IMAGES = "validation_images"
    #: The trial this one re-runs with the same parameters, and how often it was re-run.
    RETRY_OF = "retry_of"
    RETRY_COUNT = "retry_count"
    RETRY_REASON = "retry_reason"
    #: MLflow tag only: whether a failed trial was queued again.
    RETRIED = "retried"
    #: The KerasTuner engine (`search.engines.keras_tuner`): the oracle's trial id, the
    #: Hyperband bracket and round, the last global epoch of the round, and for a trial that
    #: continues an earlier round's trial, that trial's number and the epoch it starts after.
    KERAS_TUNER_TRIAL = "keras_tuner_trial"
    HYPERBAND_BRACKET = "hyperband_bracket"
    HYPERBAND_ROUND = "hyperband_round"
    UNTIL_EPOCH = "until_epoch"
    CONTINUES_TRIAL = "continues_trial"
    AFTER_EPOCH = "after_epoch"


class StudyAttr(StrEnum):
    """Keys of study user attributes."""

    #: The data source the study was started with; a resume must use the same.
    DATA_SOURCE = "data_source"
    #: The Optuna pruner the study was started with (`median`, `asha`, `hyperband`); likewise.
    PRUNER = "pruner"
    #: The backbone, its weights (`imagenet` or an absolute file path) and the image size the
    #: study was started with (`--backbone`, `--weights`, `--image-size`, a study file); likewise.
    BACKBONE = "backbone"
    WEIGHTS = "weights"
    IMAGE_SIZE = "image_size"
    #: The engine that chooses the trials: `optuna`, or `keras-tuner hyperband` and the like
    #: (`search.engines.base.EngineChoice.label`); likewise.
    ENGINE = "engine"
    #: Every searched parameter's role, name -> `scientific` / `nuisance` / `fixed`
    #: (`spaces.parameters.Role`), for the analysis.
    PARAM_ROLES = "param_roles"


#: The Optuna constraint (`Trial.set_constraint`) a `gpu_oom` trial violates: samplers that
#: read constraints (TPE) rank it below every feasible trial.
GPU_MEMORY_CONSTRAINT = "gpu_memory"

#: Sampled parameters renamed since studies were first stored, old name -> current name: a
#: study that still uses an old name is analysed and exported, but not resumed.
RENAMED_PARAMS = {"unfreeze_blocks": "unfreeze_level"}
