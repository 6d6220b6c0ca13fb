"""Messages between the coordinator and a trial's worker process (pickled over a Pipe).

worker -> coordinator: Started, then one Epoch per epoch (each answered by Continue or Stop),
then Finished or Failed. A worker that dies sends nothing more; the coordinator sees its exit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from search.vocabulary import Reason
from trainers.fit.window import EVERY_EPOCH, EpochWindow


@dataclass(frozen=True)
class WorkerRequest:
    """Everything a spawned worker needs; it knows nothing of Optuna."""

    trial_number: int
    config_yaml: str
    log_path: str
    #: Extra environment for the worker (CUDA_VISIBLE_DEVICES pins it to one GPU).
    environment: Mapping[str, str] = field(default_factory=dict)
    #: The study's cache folder (decoded images, frozen features); None: no caching.
    cache_dir: str | None = None
    #: The largest activation entry the worker may cache; None: a quarter of its memory.
    cache_budget_bytes: int | None = None
    #: Which of the config's global epochs the worker trains, and the weights it starts from
    #: (a Hyperband continuation).
    window: EpochWindow = EVERY_EPOCH
    #: Where the worker saves the best epoch's weights of its run (a `.weights.h5` path), or
    #: None not to save them.
    save_weights: str | None = None


@dataclass(frozen=True)
class Started:
    num_classes: int
    train_count: int
    validation_count: int
    #: The resolved config exactly as the worker trains it.
    config_yaml: str


@dataclass(frozen=True)
class Epoch:
    epoch: int
    metrics: Mapping[str, float]


@dataclass(frozen=True)
class Finished:
    stop_reason: str
    stop_detail: str | None


@dataclass(frozen=True)
class Failed:
    #: input, gpu_oom, host_oom or error.
    kind: Reason
    message: str
    traceback: str = ""


@dataclass(frozen=True)
class Continue:
    pass


@dataclass(frozen=True)
class Stop:
    reason: str


WorkerMessage = Started | Epoch | Finished | Failed
