"""Frozen-feature cache: the head phase trains on stored backbone features, not on images.

While the backbone is frozen, it runs in inference mode (BatchNorm on its moving statistics,
stochastic depth off: `trainers.model.surgery.set_trainable_units`), so its pooled output for an
image is a fixed function of (images, backbone, weights, image size). The leading head-only phases
of a config then train `pooled features -> dropout -> dense` on those features, computed once per
study and key; the head's layers are the full model's own, so when the head phase ends the full
model carries the trained head and later phases continue on images.

Features are batched through the same shuffle as the images (same seed, same buffer size), so
the head sees the same examples in the same order. Random augmentation makes every epoch's
images different, and then the cache is not used.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from trainers.caching.store import CacheKey, CacheProgress, cached_entry, file_digest
from trainers.config.schema import TrainConfig
from trainers.data.examples import Examples, from_arrays
from trainers.data.pipelines import Datasets, shuffle_and_batch
from trainers.model.surgery import FineTuneModel

#: Bumped when the entry layout or the extraction changes.
FORMAT = 1
_BATCH = 64


@dataclass(frozen=True)
class HeadOnFeatures:
    """The head as a model of its own, and its pipelines over cached features."""

    model: keras.Model
    train: tf.data.Dataset
    validation: tf.data.Dataset
    #: How many leading phases train on features (every phase before the first unfreezing).
    phases: int


def head_only_phases(config: TrainConfig) -> int:
    """The number of leading phases that keep the whole backbone frozen."""
    count = 0
    for phase in config.phases:
        if phase.unfreeze_blocks > 0:
            break
        count += 1
    return count


def why_not_cached(config: TrainConfig, datasets: Datasets) -> str | None:
    """Why this run cannot train its head on cached features, or None if it can."""
    if head_only_phases(config) == 0:
        return "the first phase already unfreezes backbone blocks"
    if datasets.examples is None:
        return "the pipelines were built by the caller"
    if config.data.augmentation != "none":
        return (
            f"random augmentation ({config.data.augmentation}) changes every image each epoch, "
            "so the frozen backbone's features are not fixed"
        )
    return None


def weights_identity(config: TrainConfig) -> str:
    """What the backbone's starting weights are: `imagenet`, a file's digest, or random."""
    weights = config.model.weights
    if weights is None:
        return f"random initialisation, seed {config.seed}"
    if weights == "imagenet":
        return "imagenet"
    return f"sha256:{file_digest(weights)}"


def feature_cache_key(config: TrainConfig, examples: Examples) -> CacheKey:
    return CacheKey(
        "features",
        {
            "format": FORMAT,
            "images": dict(examples.identity),
            "backbone": config.model.backbone,
            "weights": weights_identity(config),
            "dtype_policy": keras.config.dtype_policy().name,
            "keras": keras.__version__,
        },
    )


def _pooled_features_model(network: FineTuneModel) -> keras.Model:
    return keras.Model(
        network.model.inputs, network.model.get_layer("head_pool").output, name="frozen_features"
    )


def _head_model(network: FineTuneModel, feature_size: int) -> keras.Model:
    """`pooled features -> dropout -> dense`, made of the full model's own head layers."""
    pooled = keras.Input((feature_size,), name="pooled_features")
    dropped = network.model.get_layer("head_dropout")(pooled)
    predictions = network.model.get_layer("head_predictions")(dropped)
    return keras.Model(pooled, predictions, name="head_on_features")


def save_extracted(
    extract: Callable[[tf.Tensor], tf.Tensor],
    examples: Examples,
    folder: Path,
    name: str,
    progress: CacheProgress | None,
) -> None:
    """Run `extract` (a frozen part of the network, in inference mode) over both splits'
    images and save its outputs as `<split>_<name>.npy`, with the labels in the same order."""
    traced = tf.function(extract, reduce_retracing=True)
    for split, pairs, count in (
        ("train", examples.train, examples.train_count),
        ("validation", examples.validation, examples.validation_count),
    ):
        outputs: list[np.ndarray] = []
        labels: list[np.ndarray] = []
        done = 0
        for images, batch_labels in pairs.batch(_BATCH):
            outputs.append(np.asarray(traced(images), np.float32))
            labels.append(batch_labels.numpy().astype(np.int64))
            done += len(labels[-1])
            if progress is not None:
                progress(f"{split} {name}", done, max(count, done))
        np.save(folder / f"{split}_{name}.npy", np.concatenate(outputs))
        np.save(folder / f"{split}_labels.npy", np.concatenate(labels))


def read_extracted(
    folder: Path, name: str, config: TrainConfig, datasets: Datasets
) -> tuple[tf.data.Dataset, tf.data.Dataset, tuple[int, ...]]:
    """The training and validation pipelines over a saved extraction, and one item's shape.

    Batched through the images' shuffle with the images' count, not the entry's: the same
    shuffle buffer gives the same order.
    """
    arrays = {
        split: np.load(folder / f"{split}_{name}.npy", mmap_mode="r")
        for split in ("train", "validation")
    }
    train, validation = shuffle_and_batch(
        config,
        *(
            from_arrays(arrays[split], np.load(folder / f"{split}_labels.npy"))
            for split in ("train", "validation")
        ),
        num_classes=datasets.num_classes,
        train_size=datasets.train_count,
        augment=False,
    )
    return train, validation, tuple(int(size) for size in arrays["train"].shape[1:])


def head_on_features(
    config: TrainConfig,
    network: FineTuneModel,
    datasets: Datasets,
    cache_dir: Path,
    progress: CacheProgress | None = None,
) -> tuple[HeadOnFeatures, Path, bool]:
    """The head and its feature pipelines; also the entry's folder and whether this built it.

    Call only when `why_not_cached` returns None.
    """
    examples = datasets.examples
    assert examples is not None

    def build(folder: Path) -> None:
        extractor = _pooled_features_model(network)
        save_extracted(
            lambda images: extractor(images, training=False), examples, folder, "features", progress
        )

    folder, built = cached_entry(cache_dir, feature_cache_key(config, examples), build)
    train, validation, (feature_size,) = read_extracted(folder, "features", config, datasets)
    head = HeadOnFeatures(
        _head_model(network, feature_size), train, validation, head_only_phases(config)
    )
    return head, folder, built
