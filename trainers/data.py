"""tf.data input pipelines from a directory of class folders, TFDS, or a generated task.

Every pipeline yields batches of (float32 images with raw 0-255 pixels, one-hot labels):
preprocessing belongs to the model, and the guard in `trainers.preprocessing` checks it.
Decoding runs in parallel and batches are prefetched. Bad data is reported before any model is
built (`DataError`); unreadable files are skipped with a `DataWarning`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from trainers.augmentation import make_augmentation
from trainers.config import SYNTHETIC_PREFIX, TFDS_PREFIX, TrainConfig
from trainers.errors import DataError
from trainers.image_folder import scan_image_folder, stratified_split
from trainers.synthetic import generate

AUTOTUNE = tf.data.AUTOTUNE


@dataclass(frozen=True)
class Datasets:
    """Batched training and validation pipelines plus what the trainer needs to know."""

    train: tf.data.Dataset
    validation: tf.data.Dataset
    class_names: tuple[str, ...]
    train_count: int
    validation_count: int
    skipped_files: tuple[str, ...] = ()
    class_weights: dict[int, float] | None = field(default=None)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def steps_per_epoch(self, batch_size: int) -> int:
        return max(1, -(-self.train_count // batch_size))

    def describe(self) -> str:
        skipped = f", {len(self.skipped_files)} files skipped" if self.skipped_files else ""
        return (
            f"{self.train_count} training / {self.validation_count} validation images, "
            f"{self.num_classes} classes{skipped}"
        )


def load_datasets(config: TrainConfig) -> Datasets:
    """Build both pipelines for `config`; raise DataError for unusable data."""
    kind = config.data.source_kind
    if kind == "synthetic":
        return _synthetic(config)
    if kind == "tfds":
        return _tfds(config)
    return _directory(config)


def balanced_class_weights(
    labels: Sequence[int] | np.ndarray, num_classes: int
) -> dict[int, float]:
    """Weights n / (k * count_c), so every class contributes equally to the loss."""
    counts = Counter(int(label) for label in labels)
    total = sum(counts.values())
    return {label: total / (num_classes * counts[label]) for label in range(num_classes)}


def _finish(
    config: TrainConfig,
    train: tf.data.Dataset,
    validation: tf.data.Dataset,
    *,
    num_classes: int,
    train_size: int,
) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    """Shared tail: cache, shuffle, batch, augment, one-hot and prefetch."""
    if config.data.cache:
        train, validation = train.cache(), validation.cache()
    train = train.shuffle(
        max(1, min(train_size, 10_000)), seed=config.seed, reshuffle_each_iteration=True
    )
    train = train.batch(config.batch_size)
    validation = validation.batch(config.batch_size)
    augment = make_augmentation(config.data.augmentation, seed=config.seed)
    if augment is not None:
        train = train.map(
            lambda images, labels: (augment(images), labels), num_parallel_calls=AUTOTUNE
        )

    def one_hot(images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        # One-hot rather than sparse labels: label smoothing needs them.
        return images, tf.one_hot(labels, num_classes)

    train = train.map(one_hot, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)
    validation = validation.map(one_hot, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)
    return train, validation


def _class_weights(
    config: TrainConfig, labels: np.ndarray, num_classes: int
) -> dict[int, float] | None:
    if config.data.class_weighting == "none":
        return None
    return balanced_class_weights(labels, num_classes)


def _synthetic(config: TrainConfig) -> Datasets:
    spec = config.data.synthetic
    assert spec is not None  # filled in by TrainConfig for synthetic sources
    task = config.data.source[len(SYNTHETIC_PREFIX) :]
    data = generate(
        task,  # type: ignore[arg-type]  # validated by DataConfig
        num_classes=spec.classes,
        images_per_class=spec.images_per_class,
        image_size=config.data.image_size,
        seed=config.data.seed,
    )
    assert isinstance(config.data.validation, float)  # DataConfig rejects names for synthetic
    split = stratified_split(data.labels, config.data.validation, config.data.seed)

    def arrays(indices: np.ndarray) -> tf.data.Dataset:
        images = tf.data.Dataset.from_tensor_slices((data.images[indices], data.labels[indices]))
        return images.map(lambda image, label: (tf.cast(image, tf.float32), label))

    train, validation = _finish(
        config,
        arrays(split.train),
        arrays(split.validation),
        num_classes=len(data.class_names),
        train_size=len(split.train),
    )
    return Datasets(
        train,
        validation,
        data.class_names,
        len(split.train),
        len(split.validation),
        class_weights=_class_weights(config, data.labels[split.train], len(data.class_names)),
    )


def _decode_file(image_size: int):  # type: ignore[no-untyped-def]
    def decode(path: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        image = tf.image.resize(image, (image_size, image_size))
        return tf.ensure_shape(image, (image_size, image_size, 3)), label

    return decode


def _files(paths: np.ndarray, labels: np.ndarray, image_size: int) -> tf.data.Dataset:
    files = tf.data.Dataset.from_tensor_slices(
        (tf.constant(paths.tolist(), tf.string), tf.constant(labels, tf.int64))
    )
    # ignore_errors is the last line of defence: Pillow has already rejected unreadable files,
    # but a truncated JPEG can still pass its header check.
    return files.map(_decode_file(image_size), num_parallel_calls=AUTOTUNE).ignore_errors(
        log_warning=True
    )


def _directory(config: TrainConfig) -> Datasets:
    folder = scan_image_folder(config.data.source)
    labels = np.asarray(folder.labels)
    paths = np.asarray(folder.paths)
    skipped = folder.skipped
    if isinstance(config.data.validation, str):
        held_out = scan_image_folder(config.data.validation, class_names=folder.class_names)
        train_paths, train_labels = paths, labels
        validation_paths = np.asarray(held_out.paths)
        validation_labels = np.asarray(held_out.labels)
        skipped += held_out.skipped
    else:
        split = stratified_split(labels, config.data.validation, config.data.seed)
        train_paths, train_labels = paths[split.train], labels[split.train]
        validation_paths, validation_labels = paths[split.validation], labels[split.validation]
    size = config.data.image_size
    train, validation = _finish(
        config,
        _files(train_paths, train_labels, size),
        _files(validation_paths, validation_labels, size),
        num_classes=folder.num_classes,
        train_size=len(train_paths),
    )
    return Datasets(
        train,
        validation,
        folder.class_names,
        len(train_paths),
        len(validation_paths),
        skipped_files=skipped,
        class_weights=_class_weights(config, train_labels, folder.num_classes),
    )


def _tfds(config: TrainConfig) -> Datasets:
    """TFDS datasets, e.g. tfds:stanford_dogs; downloads into ~/tensorflow_datasets on first use."""
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise DataError(
            f"{config.data.source} needs tensorflow-datasets: pip install -e '.[tfds]'"
        ) from None
    name = config.data.source[len(TFDS_PREFIX) :]
    validation = config.data.validation
    if isinstance(validation, str):
        splits = ["train", validation]
    else:
        # TFDS slicing is deterministic, so every trial sees the same held-out images.
        boundary = round(100 * (1 - validation))
        splits = [f"train[:{boundary}%]", f"train[{boundary}%:]"]
    try:
        (train_raw, validation_raw), info = tfds.load(
            name, split=splits, as_supervised=True, with_info=True, shuffle_files=False
        )
    except Exception as error:  # tfds raises many unrelated types for a missing dataset
        raise DataError(
            f"{config.data.source}: could not load ({type(error).__name__}: {error}). "
            "Without internet, prepare it elsewhere and copy ~/tensorflow_datasets here."
        ) from None
    class_names = tuple(info.features["label"].names)
    size = config.data.image_size

    def resize(image: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return tf.image.resize(image, (size, size)), label

    train_count = int(train_raw.cardinality())
    validation_count = int(validation_raw.cardinality())
    train, validation_set = _finish(
        config,
        train_raw.map(resize, num_parallel_calls=AUTOTUNE),
        validation_raw.map(resize, num_parallel_calls=AUTOTUNE),
        num_classes=len(class_names),
        train_size=train_count,
    )
    weights = None
    if config.data.class_weighting == "balanced":
        labels = np.fromiter((int(label) for _, label in train_raw.as_numpy_iterator()), np.int64)
        weights = balanced_class_weights(labels, len(class_names))
    return Datasets(
        train, validation_set, class_names, train_count, validation_count, class_weights=weights
    )
