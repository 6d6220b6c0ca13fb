"""One trial of the search benchmark: a configuration trained in this process, as a worker would.

Every system of `bench.search_quality` (Optuna studies, KerasTuner's Hyperband, random search,
the hand recipe) trains its configurations through `train`, which calls the project's trainer
(`trainers.fit.loop.fit`) with a per-epoch judge: the judge sees the epochs so far and answers None
(go on) or why to stop. So every system pays the same for an epoch, and a system's cost is the
epochs it asked for. The benchmark runs in one process, without the coordinator's worker
processes: what it compares is where each system spends its epochs, and a process per trial
would add the same start-up to every system's trials.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from search.pruning.collapse import EpochView
from trainers.config.schema import TrainConfig

if TYPE_CHECKING:
    from trainers.fit.window import EpochWindow


@dataclass(frozen=True)
class TrialData:
    """What the trainer knows once the data is loaded, which the collapse rules need."""

    num_classes: int
    validation_images: int


#: Why to stop after the epochs so far (None: go on).
Judge = Callable[[tuple[EpochView, ...], TrialData], str | None]


def best_accuracy(epochs: Sequence[EpochView]) -> float:
    """The objective of a curve: best validation accuracy over the epochs with finite metrics
    (a non-finite loss ends a trial, and that epoch counts for nothing); 0 if none."""
    finite = [
        epoch.val_accuracy
        for epoch in epochs
        if all(math.isfinite(v) for v in (epoch.loss, epoch.val_accuracy, epoch.val_loss))
    ]
    return max(finite, default=0.0)


@dataclass(frozen=True)
class TrainedTrial:
    epochs: tuple[EpochView, ...]
    seconds: float
    #: What the judge said when it stopped the trial, if it did.
    stopped_by: str | None
    data: TrialData

    @property
    def best(self) -> float:
        return best_accuracy(self.epochs)


def _go_on(_epochs: tuple[EpochView, ...], _data: TrialData) -> None:
    return None


def train(
    config: TrainConfig,
    judge: Judge = _go_on,
    *,
    window: EpochWindow | None = None,
    save: Path | None = None,
) -> TrainedTrial:
    """Train `config` with the project's trainer, asking `judge` after every epoch; only the
    epochs of `window`, from its weights, when given; its best epoch's weights go to `save`
    when it trained any."""
    import keras

    from trainers.data.pipelines import load_datasets
    from trainers.fit.loop import fit
    from trainers.fit.window import EVERY_EPOCH

    began = time.monotonic()
    keras.backend.clear_session()  # one process trains every trial: start each from nothing
    datasets = load_datasets(config)
    data = TrialData(datasets.num_classes, datasets.validation_count)
    epochs: list[EpochView] = []
    stopped_by: list[str] = []

    def report(epoch: int, metrics: Mapping[str, float]) -> str | None:
        epochs.append(EpochView.from_metrics(epoch, metrics))
        reason = judge(tuple(epochs), data)
        if reason is not None:
            stopped_by.append(reason)
        return reason

    result = fit(
        config,
        report=report,
        datasets=datasets,
        log=lambda _message: None,
        window=window or EVERY_EPOCH,
    )
    if save is not None and epochs:
        result.model.save_weights(save)
    seconds = time.monotonic() - began
    return TrainedTrial(tuple(epochs), seconds, next(iter(stopped_by), None), data)
