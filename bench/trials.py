"""One trial of the search benchmark: a configuration trained in this process, as a worker would.

Every system of `bench.search_quality` (Optuna studies, KerasTuner's Hyperband, random search,
the hand recipe) trains its configurations through `train_trial`, which calls the project's
trainer (`trainers.fit.loop.fit`) with a per-epoch decision: it sees the epochs so far and
answers None (go on) or why to stop (a `PruneDecision`); `deciding` makes the coordinator's
(`search.pruning.decision`). So every system pays the same for an epoch, and a system's cost is the
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
from typing import Any

import optuna

from search.engines.rounds import hyperband_round
from search.pruning.collapse import CollapseRules, EpochView, PruneDecision, find_collapse
from search.pruning.decision import decide_epoch
from trainers.config.schema import TrainConfig
from trainers.fit.window import EVERY_EPOCH, EpochWindow


@dataclass(frozen=True)
class TrialData:
    """What the trainer knows once the data is loaded, which the collapse rules need."""

    num_classes: int
    validation_images: int


#: Why to stop after the epochs so far (None: go on).
Decide = Callable[[tuple[EpochView, ...], TrialData], PruneDecision | None]


def deciding(
    config: TrainConfig, rules: CollapseRules, trial: optuna.Trial | None = None
) -> Decide:
    """The coordinator's per-epoch decision for a trial of `config` (`decide_epoch`): the
    collapse rules on the epochs so far; with `trial`, its report and the study's pruner."""

    def decide(epochs: tuple[EpochView, ...], data: TrialData) -> PruneDecision | None:
        collapse = find_collapse(
            epochs,
            num_classes=data.num_classes,
            validation_images=data.validation_images,
            unfreezing_phases=config.unfreezing_phases,
            rules=rules,
        )
        return decide_epoch(trial, epochs[-1], collapse)

    return decide


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
    #: What the per-epoch decision said when it stopped the trial, if it did.
    stopped_by: PruneDecision | None
    data: TrialData

    @property
    def best(self) -> float:
        return best_accuracy(self.epochs)

    @property
    def pruned(self) -> str | None:
        """Why it was pruned, if it was: stopped, and its best does not count. A fall after a
        good epoch stops a trial but keeps its best (`PruneDecision.keeps_best`)."""
        stop = self.stopped_by
        return str(stop.reason) if stop is not None and not stop.keeps_best else None


def _go_on(_epochs: tuple[EpochView, ...], _data: TrialData) -> PruneDecision | None:
    return None


def train_trial(
    config: TrainConfig,
    decide: Decide = _go_on,
    *,
    window: EpochWindow = EVERY_EPOCH,
    save: Path | None = None,
) -> TrainedTrial:
    """Train `config` with the project's trainer, asking `decide` after every epoch; only the
    epochs of `window`, from its weights, when given; its best epoch's weights go to `save`
    when it trained any."""
    import keras

    from trainers.data.pipelines import load_datasets
    from trainers.fit.loop import fit

    began = time.monotonic()
    keras.backend.clear_session()  # one process trains every trial: start each from nothing
    datasets = load_datasets(config)
    data = TrialData(datasets.num_classes, datasets.validation_count)
    epochs: list[EpochView] = []
    stopped_by: list[PruneDecision] = []

    def report(epoch: int, metrics: Mapping[str, float]) -> str | None:
        epochs.append(EpochView.from_metrics(epoch, metrics))
        decision = decide(tuple(epochs), data)
        if decision is None:
            return None
        stopped_by.append(decision)
        return str(decision.reason)

    result = fit(
        config,
        report=report,
        datasets=datasets,
        log=lambda _message: None,
        window=window,
    )
    if save is not None and epochs:
        result.model.save_weights(save)
    seconds = time.monotonic() - began
    return TrainedTrial(tuple(epochs), seconds, next(iter(stopped_by), None), data)


@dataclass(frozen=True)
class HyperbandTrial:
    """One KerasTuner Hyperband trial as the benchmark counts it."""

    params: dict[str, object]
    #: The epochs it trained: only its round's window when it continues an earlier trial.
    epochs: int
    seconds: float
    #: Its best validation accuracy (or, with nothing left to train, its earlier trial's).
    best: float
    #: Why the collapse rules pruned it, if they did (a fall after a good epoch stops a trial
    #: but keeps its best).
    pruned: str | None
    continues: bool

    @property
    def value(self) -> float | None:
        """What it counts for: its best, unless the collapse rules pruned it."""
        return None if self.pruned is not None else self.best


class HyperbandRounds:
    """The trials of one KerasTuner Hyperband run, trained round by round in `folder`.

    A trial trains up to its round's `tuner/epochs`; one that continues an earlier trial
    (`tuner/trial_id`) starts from that trial's best-epoch weights after `tuner/initial_epoch`,
    as KerasTuner's own Hyperband reloads its checkpoint, and is charged only the epochs it
    trains; if the earlier trial already trained the whole config, it is charged nothing and
    counts for the earlier trial's result. The engine's Hyperband and stock KerasTuner's both
    run their trials here, so a continuation costs them the same.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.best_weights: dict[str, Path] = {}
        self.results: dict[str, HyperbandTrial] = {}

    def run(
        self,
        trial_id: str,
        values: Mapping[str, Any],
        params: Mapping[str, object],
        config: TrainConfig,
        decide: Decide = _go_on,
    ) -> HyperbandTrial:
        """Train the KerasTuner trial `trial_id` (its `values`, `tuner/*` included) on
        `config`, asking `decide` after every epoch."""
        round_ = hyperband_round(values)
        if round_ is None:
            raise ValueError(f"trial {trial_id} has no Hyperband round: {dict(values)}")
        earlier = round_.trial_id
        start = self.best_weights.get(earlier) if earlier is not None else None
        window = round_.window(start)
        if earlier is not None and start is not None and window.after_epoch >= config.total_epochs:
            # Its earlier trial trained the whole config: its result, and its weights for a
            # later round.
            inherited = self.results[earlier]
            counted = HyperbandTrial(
                dict(params), 0, 0.0, inherited.best, inherited.pruned, continues=True
            )
            self.best_weights[trial_id] = start
        else:
            weights = self.folder / f"{trial_id}.weights.h5"
            trained = train_trial(config, decide, window=window, save=weights)
            if weights.is_file():
                self.best_weights[trial_id] = weights
            counted = HyperbandTrial(
                dict(params),
                len(trained.epochs),
                trained.seconds,
                trained.best,
                trained.pruned,
                continues=start is not None,
            )
        self.results[trial_id] = counted
        return counted
