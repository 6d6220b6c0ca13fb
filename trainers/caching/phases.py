"""What each phase trains on: images, cached frozen features, or cached activations at a cut.

`trainers.fit.loop` asks `PhaseInputs.for_phase` for the model to compile and the pipelines to fit
in each phase. Without a cache folder that is always the full model on images. With one, the leading
head-only phases train the head on frozen features (`trainers.caching.features`) and a later phase
trains its unfrozen units on the activations below them (`trainers.caching.activations`), whenever
that computes the same function; every choice, and every reason a cache is not used, is one log
line.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import keras
import tensorflow as tf

from trainers.caching.activations import PhaseOnCut, phase_on_cut, why_not_on_cut
from trainers.caching.features import HeadOnFeatures, head_on_features, why_not_cached
from trainers.caching.store import CacheFullError, CacheProgress, folder_size
from trainers.config.schema import TrainConfig
from trainers.data.pipelines import Datasets
from trainers.model.surgery import FineTuneModel

Log = Callable[[str], None]


@dataclass(frozen=True)
class CacheSettings:
    """Where the study's caches live and how much an activation entry may take."""

    folder: Path
    #: The largest activation entry (bytes) a phase may cache (`--cache-budget-gb`).
    budget_bytes: int
    progress: CacheProgress


@dataclass(frozen=True)
class PhaseInputs:
    model: keras.Model
    train: tf.data.Dataset
    validation: tf.data.Dataset
    #: What the phase trains on, for its log line ("" for the full model on images).
    note: str = ""


def _mib(folder: Path) -> str:
    return f"{folder_size(folder) / 2**20:.1f} MiB in {folder}"


@dataclass
class CachedPhases:
    """Chooses each phase's model and pipelines for one run."""

    config: TrainConfig
    network: FineTuneModel
    datasets: Datasets
    cache: CacheSettings | None
    log: Log
    head: HeadOnFeatures | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.cache is None:
            return
        reason = why_not_cached(self.config, self.datasets)
        if reason is not None:
            self.log(f"feature cache not used: {reason}")
            return
        started = time.monotonic()
        try:
            head, folder, built = head_on_features(
                self.config, self.network, self.datasets, self.cache.folder, self.cache.progress
            )
        except CacheFullError as error:
            self.log(f"feature cache not used: {error.strerror}")
            return
        # The preprocessing guard drew a batch from the image pipeline, which moved its
        # reshuffle on by one order; draw one from the features too, so both give the same
        # batches.
        for _ in head.train.take(1):
            pass
        how = f"computed in {time.monotonic() - started:.1f}s" if built else "reused"
        self.log(f"feature cache: head phase on frozen features, {how} ({_mib(folder)})")
        self.head = head

    def for_phase(self, index: int) -> PhaseInputs:
        """The model and pipelines of phase `index` (0-based)."""
        if self.head is not None and index < self.head.phases:
            return PhaseInputs(
                self.head.model, self.head.train, self.head.validation, "on cached features"
            )
        on_images = PhaseInputs(self.network.model, self.datasets.train, self.datasets.validation)
        if self.cache is None or self.config.phases[index].unfreeze_blocks == 0:
            return on_images
        on_cut = self._on_cut(index)
        if isinstance(on_cut, str):
            self.log(f"cut-point cache not used in phase {index + 1}: {on_cut}")
            return on_images
        return PhaseInputs(
            on_cut.model,
            on_cut.train,
            on_cut.validation,
            f"on cached activations after {on_cut.cut_layer}",
        )

    def _on_cut(self, index: int) -> PhaseOnCut | str:
        assert self.cache is not None
        reason = why_not_on_cut(self.config, index, self.datasets, self.network)
        if reason is not None:
            return reason
        started = time.monotonic()
        try:
            on_cut = phase_on_cut(
                self.config,
                index,
                self.network,
                self.datasets,
                self.cache.folder,
                self.cache.budget_bytes,
                self.cache.progress,
            )
        except CacheFullError as error:
            return str(error.strerror)
        if isinstance(on_cut, PhaseOnCut):
            how = f"computed in {time.monotonic() - started:.1f}s" if on_cut.built else "reused"
            self.log(
                f"cut-point cache: phase {index + 1} trains its unfrozen blocks on activations "
                f"after {on_cut.cut_layer}, {how} ({_mib(on_cut.folder)})"
            )
        return on_cut
