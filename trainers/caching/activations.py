"""Cut-point cache: a fine-tune phase trains only its unfrozen blocks, on cached activations.

In a phase that unfreezes the top k units, everything below the lowest unfrozen unit is frozen
and runs in inference mode (BatchNorm on moving statistics, stochastic depth off), so its output
for an image (the activations at the cut) is fixed as long as no earlier phase trained below the
cut. The phase then trains `activations -> unfrozen units -> head` on activations computed once
per study and cut; the layers are the full model's own, so the full model carries what the phase
trained. Each cut is an entry of its own, keyed like the frozen features plus the cut's layer.

Activations are much larger than pooled features (EfficientNetB4 at 380 px, cut below block7:
12 x 12 x 272 values per image), so an entry is made only if it fits the cache budget
(`--cache-budget-gb`); a large one is streamed from its memory map while the phase trains.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import keras
import tensorflow as tf

from trainers.caching.features import feature_cache_key, read_extracted, save_extracted
from trainers.caching.store import CacheKey, CacheProgress, cached_entry
from trainers.config.schema import TrainConfig
from trainers.data.pipelines import Datasets
from trainers.model.surgery import FineTuneModel

#: Bumped when the entry layout or the extraction changes.
FORMAT = 1


def default_budget_bytes() -> int:
    """A quarter of the machine's memory, so that an entry mostly stays in the page cache."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError):  # not every platform names these
        return 4 * 2**30


@dataclass(frozen=True)
class PhaseOnCut:
    """The unfrozen units and the head as one model, and its pipelines over activations."""

    model: keras.Model
    train: tf.data.Dataset
    validation: tf.data.Dataset
    cut_layer: str
    folder: Path
    built: bool


def cut_layer(network: FineTuneModel, unfreeze_blocks: int) -> str | None:
    """The last layer of the highest frozen unit: its output is the cut. None: nothing frozen."""
    if unfreeze_blocks <= 0 or unfreeze_blocks >= len(network.units):
        return None
    order = {layer.name: index for index, layer in enumerate(network.backbone.layers)}
    return max(network.units[unfreeze_blocks].layer_names, key=order.__getitem__)


def _preprocess(network: FineTuneModel, images: tf.Tensor) -> tf.Tensor:
    """What the full model does to pixels before its backbone (Caffe preprocessing, if any)."""
    names = {layer.name for layer in network.model.layers}
    if "caffe_preprocessing" in names:
        return network.model.get_layer("caffe_preprocessing")(images)
    return images


def why_not_on_cut(
    config: TrainConfig, phase_index: int, datasets: Datasets, network: FineTuneModel
) -> str | None:
    """Why phase `phase_index` (0-based) cannot train on cached activations, or None."""
    unfreeze = config.phases[phase_index].unfreeze_blocks
    if cut_layer(network, unfreeze) is None:
        return "nothing below the unfrozen blocks stays frozen"
    if datasets.examples is None:
        return "the pipelines were built by the caller"
    if config.data.augmentation != "none":
        return f"random augmentation ({config.data.augmentation}) changes every image each epoch"
    if any(phase.unfreeze_blocks > unfreeze for phase in config.phases[:phase_index]):
        return "an earlier phase trained blocks below this phase's cut"
    return None


def _entry_bytes(shape: tuple[int, ...], images: int) -> int:
    return math.prod(shape) * 4 * images


def phase_on_cut(
    config: TrainConfig,
    phase_index: int,
    network: FineTuneModel,
    datasets: Datasets,
    cache_dir: Path,
    budget_bytes: int,
    progress: CacheProgress | None = None,
) -> PhaseOnCut | str:
    """The phase's model and pipelines on cached activations, or why not (over budget).

    Call only when `why_not_on_cut` returns None.
    """
    examples = datasets.examples
    assert examples is not None
    layer = cut_layer(network, config.phases[phase_index].unfreeze_blocks)
    assert layer is not None
    backbone = network.backbone
    cut = backbone.get_layer(layer).output
    try:
        upper = keras.Model(cut, backbone.output, name=f"above_{layer}")
    except ValueError as error:  # a connection that skips over the cut
        return f"the backbone cannot be cut after {layer}: {error}"
    shape = tuple(int(size) for size in cut.shape[1:])
    size = _entry_bytes(shape, examples.train_count + examples.validation_count)
    if size > budget_bytes:
        return (
            f"activations after {layer} take {size / 2**30:.2f} GiB, over the cache budget of "
            f"{budget_bytes / 2**30:.2f} GiB"
        )
    # What the frozen features depend on, and where the network is cut.
    key = CacheKey(
        "activations",
        {**feature_cache_key(config, examples).inputs, "format": FORMAT, "cut_layer": layer},
    )

    def build(folder: Path) -> None:
        lower = keras.Model(backbone.inputs, cut, name=f"up_to_{layer}")
        save_extracted(
            lambda images: lower(_preprocess(network, images), training=False),
            examples,
            folder,
            "activations",
            progress,
        )

    folder, built = cached_entry(cache_dir, key, build)
    train, validation, _ = read_extracted(folder, "activations", config, datasets)
    activations = keras.Input(shape, name="activations")
    features = network.model.get_layer("head_pool")(upper(activations))
    dropped = network.model.get_layer("head_dropout")(features)
    predictions = network.model.get_layer("head_predictions")(dropped)
    model = keras.Model(activations, predictions, name=f"on_{layer}")
    return PhaseOnCut(model, train, validation, layer, folder, built)
