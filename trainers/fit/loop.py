"""Run one fine-tuning job: phases, per-epoch reporting, early stop, best-epoch weights.

Phase 1 trains the head on a frozen backbone. Each later phase unfreezes its top blocks
(keeping BatchNorm frozen if asked), recompiles with its own optimizer and schedule and
continues; epoch numbers run on across phases. After every epoch the optional `report` hook
gets the global epoch and that epoch's metrics and may return a reason to stop: this is how the
search prunes. A non-finite loss stops training at once. The weights of the epoch with the best
validation accuracy are restored before the model is returned.

An `EpochWindow` trains only some of the config's global epochs, starting from the weights a
run of the same config saved (KerasTuner Hyperband's continuation): phases wholly before the
window are skipped, the phase the window starts in resumes at the window's first epoch with a
fresh optimizer, and training ends after the window's last epoch.

With a `cache_dir`, images are decoded once into a cache there (`trainers.caching.images`), the
leading head-only phases train on cached backbone features and later phases on cached
activations below their unfrozen blocks, when no random augmentation is used
(`trainers.caching.phases`); either way the epochs, metrics and hooks are the same.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import keras

from trainers.caching.activations import default_budget_bytes
from trainers.caching.phases import CachedPhases, CacheSettings
from trainers.caching.store import CacheProgress, throttled_progress
from trainers.config.schema import TrainConfig
from trainers.data.pipelines import Datasets, load_datasets
from trainers.errors import ModelBuildError
from trainers.fit.continuation import backbone_weights, caches_fit_window, load_initial_weights
from trainers.fit.history import OBJECTIVE, TrainingHistory, non_finite_keys
from trainers.fit.window import EVERY_EPOCH, EpochWindow
from trainers.model.backbones import get_backbone
from trainers.model.optimization import current_learning_rate, make_optimizer
from trainers.model.preprocessing import check_input_batch
from trainers.model.regularization import attach_l2sp
from trainers.model.surgery import FineTuneModel, build_model, set_trainable_units

#: Called after every epoch with (global epoch, metrics); return a reason string to stop.
ReportHook = Callable[[int, Mapping[str, float]], str | None]
StopReason = Literal["completed", "requested", "non_finite_loss"]
Log = Callable[[str], None]


@dataclass(frozen=True)
class FitResult:
    history: TrainingHistory
    stop_reason: StopReason
    #: The reason the report hook gave, or which metrics were not finite.
    stop_detail: str | None
    class_names: tuple[str, ...]
    #: Carries the weights of the best epoch.
    model: keras.Model

    @property
    def best_epoch(self) -> int | None:
        return self.history.best_epoch

    @property
    def best_val_accuracy(self) -> float | None:
        return self.history.best_val_accuracy


@dataclass
class _RunState:
    history: TrainingHistory = field(default_factory=TrainingHistory)
    best_accuracy: float = -math.inf
    best_weights: list[Any] | None = None
    stop_reason: StopReason = "completed"
    stop_detail: str | None = None
    non_finite_batch: bool = False

    @property
    def stopped(self) -> bool:
        return self.stop_reason != "completed"


def _print(message: str) -> None:
    print(message, flush=True)


def _format_epoch(epoch: int, total: int, metrics: Mapping[str, float]) -> str:
    shown = [
        ("loss", "loss", ".4f"),
        ("acc", "accuracy", ".4f"),
        ("val_loss", "val_loss", ".4f"),
        ("val_acc", "val_accuracy", ".4f"),
        ("val_top5", "val_top5_accuracy", ".4f"),
        ("lr", "learning_rate", ".2e"),
    ]
    parts = [f"{label} {metrics[key]:{spec}}" for label, key, spec in shown if key in metrics]
    return (
        f"epoch {epoch:>3}/{total} [phase {int(metrics['phase'])}] "
        + "  ".join(parts)
        + f"  ({metrics['seconds']:.1f}s)"
    )


class _EpochCallback(keras.callbacks.Callback):
    """Records each epoch, keeps the best weights, and applies NaN and report-hook stops."""

    def __init__(
        self,
        state: _RunState,
        phase: int,
        total_epochs: int,
        report: ReportHook | None,
        log: Log,
        full_model: keras.Model,
    ) -> None:
        super().__init__()
        self.state = state
        #: The model whose weights are kept: the fitted one may be the head alone.
        self.full_model = full_model
        self.phase = phase
        self.total_epochs = total_epochs
        self.report = report
        self.log = log
        self.epoch_started = time.monotonic()

    def on_epoch_begin(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        self.epoch_started = time.monotonic()

    def on_train_batch_end(self, batch: int, logs: Mapping[str, Any] | None = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            # Stop within the epoch: every further step would only spread the NaN.
            self.state.non_finite_batch = True
            self.model.stop_training = True

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        global_epoch = epoch + 1
        metrics: dict[str, float] = {key: float(value) for key, value in (logs or {}).items()}
        metrics["phase"] = self.phase
        metrics["learning_rate"] = current_learning_rate(self.model.optimizer)
        metrics["seconds"] = time.monotonic() - self.epoch_started
        self.state.history = self.state.history.append({"epoch": global_epoch, **metrics})
        self.log(_format_epoch(global_epoch, self.total_epochs, metrics))

        bad = non_finite_keys(metrics)
        if bad or self.state.non_finite_batch:
            self.state.stop_reason = "non_finite_loss"
            self.state.stop_detail = "non-finite " + ", ".join(bad or ["loss"])
            self.model.stop_training = True
        else:
            accuracy = metrics.get(OBJECTIVE, -math.inf)
            if accuracy > self.state.best_accuracy:
                self.state.best_accuracy = accuracy
                self.state.best_weights = self.full_model.get_weights()

        if self.report is not None:
            reason = self.report(global_epoch, metrics)
            if reason and not self.state.stopped:
                self.state.stop_reason = "requested"
                self.state.stop_detail = reason
                self.model.stop_training = True


def _metrics(num_classes: int) -> list[keras.metrics.Metric]:
    metrics: list[keras.metrics.Metric] = [keras.metrics.CategoricalAccuracy(name="accuracy")]
    if num_classes >= 5:
        metrics.append(keras.metrics.TopKCategoricalAccuracy(k=5, name="top5_accuracy"))
    return metrics


def check_pipeline(datasets: Datasets, config: TrainConfig) -> None:
    """The preprocessing guard: look at one real batch from each pipeline before training."""
    spec = get_backbone(config.model.backbone)
    for pipeline in (datasets.train, datasets.validation):
        for images, _ in pipeline.take(1):
            check_input_batch(images, spec)


def fit(
    config: TrainConfig,
    *,
    report: ReportHook | None = None,
    datasets: Datasets | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    log: Log = _print,
    cache_dir: Path | None = None,
    progress: CacheProgress | None = None,
    cache_budget_bytes: int | None = None,
    window: EpochWindow = EVERY_EPOCH,
) -> FitResult:
    """Train `config` phase by phase and return the history and the best-epoch model.

    `datasets` replaces the pipelines `config.data` describes (tests inject broken ones);
    `callbacks` are extra Keras callbacks (TensorBoard, checkpoints) added to every phase.
    `cache_dir` turns on the caches there; `progress` hears how far building a cache entry has
    come (by default, a log line every 10 s); `cache_budget_bytes` bounds one entry of
    activations (default: a quarter of the machine's memory). `window` trains only some of the
    config's epochs, starting from saved weights; a window past the config's last epoch trains
    nothing and returns an empty history.
    Raises DataError, PreprocessingError or ModelBuildError before any training starts.
    """
    initial = window.initial_weights
    # Before the data is loaded, which can take minutes.
    if initial is not None and not initial.is_file():
        raise ModelBuildError(f"initial weights: no such file: {initial}")
    previous_policy = keras.config.dtype_policy()
    keras.utils.set_random_seed(config.seed)
    progress = progress if progress is not None else throttled_progress(log)
    try:
        if config.mixed_precision:
            keras.config.set_dtype_policy("mixed_float16")
        if datasets is None:
            datasets = load_datasets(config, cache_dir=cache_dir, progress=progress)
        log(f"data: {datasets.describe()} from {config.data.source}")
        check_pipeline(datasets, config)
        network = build_model(config, datasets.num_classes)
        if config.l2sp_alpha > 0:
            deepest = max(phase.unfreeze_blocks for phase in config.phases)
            attach_l2sp(network, config.l2sp_alpha, unfreeze_blocks=deepest)
        cache = None
        if cache_dir is not None and window.after_epoch < window.last_epoch(config):
            budget = default_budget_bytes() if cache_budget_bytes is None else cache_budget_bytes
            cache = CacheSettings(cache_dir, budget, progress)
        pretrained = {} if initial is None else backbone_weights(network)
        # Built before the weights are loaded, so that a feature cache entry built now holds
        # what the pretrained backbone computes, as its key says; its head model (and any
        # phase's model on a cut) is made of the full model's own layers, so it trains from
        # the loaded weights all the same.
        phases = CachedPhases(config, network, datasets, cache, log)
        if initial is not None:
            # After L2-SP captured its anchors, which stay the pretrained weights.
            changed_units = load_initial_weights(network, initial, pretrained, log)
            if cache is not None and not caches_fit_window(config, window, changed_units, log):
                phases = CachedPhases(config, network, datasets, None, log)
        return _run_phases(config, network, datasets, report, callbacks, log, phases, window)
    finally:
        keras.config.set_dtype_policy(previous_policy)


def _epoch_span(first: int, last: int) -> str:
    return f"epoch {first}" if first == last else f"epochs {first}-{last}"


def _run_phases(
    config: TrainConfig,
    network: FineTuneModel,
    datasets: Datasets,
    report: ReportHook | None,
    callbacks: Sequence[keras.callbacks.Callback],
    log: Log,
    inputs: CachedPhases,
    window: EpochWindow,
) -> FitResult:
    state = _RunState()
    steps_per_epoch = datasets.steps_per_epoch(config.batch_size)
    last_epoch = window.last_epoch(config)
    first_epoch = 0
    for number, phase in enumerate(config.phases, start=1):
        phase_end = first_epoch + phase.epochs
        if phase_end <= window.after_epoch:
            log(
                f"phase {number}/{len(config.phases)}: skipped, "
                f"{_epoch_span(first_epoch + 1, phase_end)} were trained by the run whose "
                "weights were loaded"
            )
            first_epoch = phase_end
            continue
        if first_epoch >= last_epoch:
            log(
                f"stopped after epoch {last_epoch}: the end of this run's window "
                f"(the config has {config.total_epochs})"
            )
            break
        start, end = max(first_epoch, window.after_epoch), min(phase_end, last_epoch)
        summary = set_trainable_units(
            network, phase.unfreeze_blocks, freeze_batchnorm=phase.freeze_batchnorm
        )
        chosen = inputs.for_phase(number - 1)
        span = (
            f"{phase.epochs} epochs"
            if (start, end) == (first_epoch, phase_end)
            else f"{end - start} of its {phase.epochs} epochs ({_epoch_span(start + 1, end)})"
        )
        log(
            f"phase {number}/{len(config.phases)}: {span}, {phase.optimizer} "
            f"lr {phase.learning_rate:g} ({phase.schedule}); {summary.describe()}"
            + (f"; {chosen.note}" if chosen.note else "")
        )
        model, train, validation = chosen.model, chosen.train, chosen.validation
        model.compile(
            optimizer=make_optimizer(phase, steps_per_epoch),
            loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
            metrics=_metrics(datasets.num_classes),
        )
        model.fit(
            train,
            validation_data=validation,
            initial_epoch=start,
            epochs=end,
            class_weight=datasets.class_weights,
            callbacks=[
                _EpochCallback(state, number, config.total_epochs, report, log, network.model),
                *callbacks,
            ],
            # The pipeline shuffles itself; Keras' own shuffle flag does not apply to datasets.
            shuffle=False,
            verbose=0,
        )
        first_epoch = phase_end
        if state.stopped:
            log(f"stopped at epoch {int(state.history.records[-1]['epoch'])}: {state.stop_detail}")
            break
    if state.best_weights is not None:
        network.model.set_weights(state.best_weights)
        log(
            f"best {OBJECTIVE} {state.best_accuracy:.4f} at epoch {state.history.best_epoch}; "
            "restored its weights"
        )
    return FitResult(
        history=state.history,
        stop_reason=state.stop_reason,
        stop_detail=state.stop_detail,
        class_names=datasets.class_names,
        model=network.model,
    )
