"""tf.data input pipelines from a directory of class folders, TFDS, or a generated task.

Every pipeline yields batches of (float32 images with raw 0-255 pixels, one-hot labels):
preprocessing belongs to the model, and the guard in `trainers.model.preprocessing` checks it.
Decoding runs in parallel and batches are prefetched. Bad data is reported before any model is
built (`DataError`); unreadable files are skipped with a `DataWarning`.

Loading is two steps: `load_examples` gives the images in a fixed order with what identifies
them (the caches' key), and `batch_examples` shuffles, batches and augments them for training.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tensorflow as tf

from trainers.caching.images import decoded_images
from trainers.caching.store import CacheFullError, CacheProgress
from trainers.config.schema import SYNTHETIC_PREFIX, TFDS_PREFIX, TrainConfig
from trainers.data.augmentation import make_augmentation
from trainers.data.examples import Examples, in_order
from trainers.data.image_folder import DataFolders, scan_data_folders, stratified_split
from trainers.data.synthetic import GENERATOR_VERSION as SYNTHETIC_GENERATOR_VERSION
from trainers.data.synthetic import generate
from trainers.errors import DataError, DataWarning

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
    #: What the pipelines were batched from; None for pipelines made some other way (tests).
    examples: Examples | None = None

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


def load_examples(config: TrainConfig, folders: DataFolders | None = None) -> Examples:
    """The images `config.data` describes, in order; raise DataError for unusable data.

    `folders`: a directory source's folders as already scanned (`scan_data_folders`), so that
    a caller that checked them first does not read every file twice.
    """
    kind = config.data.source_kind
    if kind == "synthetic":
        return _synthetic(config)
    if kind == "tfds":
        return _tfds(config)
    scanned = folders or scan_data_folders(config.data)
    assert scanned is not None  # a directory source
    return _directory(config, scanned)


def load_datasets(
    config: TrainConfig,
    *,
    cache_dir: Path | None = None,
    progress: CacheProgress | None = None,
    folders: DataFolders | None = None,
) -> Datasets:
    """Build both pipelines for `config`; raise DataError for unusable data.

    With `cache_dir`, images are decoded and resized once into a cache shared by every run
    that uses the same images at the same size (`trainers.caching.images`). `folders` as for
    `load_examples`.
    """
    examples = load_examples(config, folders)
    if cache_dir is not None:
        try:
            examples = decoded_images(examples, cache_dir, progress)
        except CacheFullError as error:
            warnings.warn(f"image cache not used: {error.strerror}", DataWarning, stacklevel=2)
    return batch_examples(config, examples)


def balanced_class_weights(
    labels: Sequence[int] | np.ndarray, num_classes: int
) -> dict[int, float]:
    """Weights n / (k * count_c), so every class contributes equally to the loss."""
    counts = Counter(int(label) for label in labels)
    total = sum(counts.values())
    return {label: total / (num_classes * counts[label]) for label in range(num_classes)}


def shuffle_and_batch(
    config: TrainConfig,
    train: tf.data.Dataset,
    validation: tf.data.Dataset,
    *,
    num_classes: int,
    train_size: int,
    augment: bool = True,
) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    """Shared tail: cache, shuffle, batch, augment, one-hot and prefetch.

    The frozen-feature cache batches its features through here too (`augment=False`): the
    same seed and buffer then give the same batches in the same order as the images.
    """
    if config.data.cache:
        train, validation = train.cache(), validation.cache()
    train = train.shuffle(
        max(1, min(train_size, 10_000)), seed=config.seed, reshuffle_each_iteration=True
    )
    train = train.batch(config.batch_size)
    validation = validation.batch(config.batch_size)
    transform = make_augmentation(config.data.augmentation, seed=config.seed) if augment else None
    if transform is not None:
        train = train.map(
            lambda images, labels: (transform(images), labels), num_parallel_calls=AUTOTUNE
        )

    def one_hot(images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        # One-hot rather than sparse labels: label smoothing needs them.
        return images, tf.one_hot(labels, num_classes)

    train = train.map(one_hot, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)
    validation = validation.map(one_hot, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)
    return train, validation


def batch_examples(config: TrainConfig, examples: Examples) -> Datasets:
    train, validation = shuffle_and_batch(
        config,
        examples.train,
        examples.validation,
        num_classes=examples.num_classes,
        train_size=examples.train_count,
    )
    return Datasets(
        train,
        validation,
        examples.class_names,
        examples.train_count,
        examples.validation_count,
        skipped_files=examples.skipped_files,
        class_weights=_class_weights(config, examples),
        examples=examples,
    )


def _class_weights(config: TrainConfig, examples: Examples) -> dict[int, float] | None:
    if config.data.class_weighting == "none":
        return None
    labels = examples.train_labels
    if labels is None:
        labels = np.fromiter(
            (int(label) for _, label in examples.train.as_numpy_iterator()), np.int64
        )
    return balanced_class_weights(labels, examples.num_classes)


def _synthetic(config: TrainConfig) -> Examples:
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
    return Examples(
        in_order(data.images[split.train], data.labels[split.train]),
        in_order(data.images[split.validation], data.labels[split.validation]),
        data.class_names,
        len(split.train),
        len(split.validation),
        identity={
            "source": config.data.source,
            "synthetic": spec.model_dump(),
            "generator": SYNTHETIC_GENERATOR_VERSION,
            "image_size": config.data.image_size,
            "validation": config.data.validation,
            "split_seed": config.data.seed,
        },
        train_labels=data.labels[split.train],
    )


def _decode_file(image_size: int):  # type: ignore[no-untyped-def]
    def decode(path: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        image = tf.image.resize(image, (image_size, image_size))
        return tf.ensure_shape(image, (image_size, image_size, 3)), label

    return decode


def _files(paths: np.ndarray, labels: np.ndarray, image_size: int) -> tf.data.Dataset:
    """Exactly `len(paths)` decoded (image, label) pairs, in order."""
    files = tf.data.Dataset.from_tensor_slices(
        (tf.constant(paths.tolist(), tf.string), tf.constant(labels, tf.int64))
    )
    # ignore_errors is the last line of defence: Pillow has already rejected unreadable files,
    # but a truncated JPEG (or a TIFF, which TensorFlow does not decode) passes its check.
    decoded = files.map(_decode_file(image_size), num_parallel_calls=AUTOTUNE).ignore_errors(
        log_warning=True
    )
    # Dropping elements makes the length unknown, and Keras then warns "Your input ran out of
    # data" at the end of every fit's first epoch, clean runs included. So the count stays the
    # scanned one: a file dropped here (logged above) has its place taken by the split's first
    # image, and epochs and the learning-rate schedule keep the length they were planned with.
    count = len(paths)
    return decoded.repeat().take(count).apply(tf.data.experimental.assert_cardinality(count))


def _files_fingerprint(paths: np.ndarray, labels: np.ndarray) -> str:
    """A digest of every file's path, size, modification time and label."""
    digest = hashlib.sha256()
    for path, label in zip(paths.tolist(), labels.tolist(), strict=True):
        status = os.stat(path)
        digest.update(
            f"{os.path.abspath(path)}\0{status.st_size}\0{status.st_mtime_ns}\0{label}\n".encode()
        )
    return digest.hexdigest()


def _directory(config: TrainConfig, folders: DataFolders) -> Examples:
    folder, held_out = folders.train, folders.validation
    labels = np.asarray(folder.labels, np.int64)
    paths = np.asarray(folder.paths)
    skipped = folder.skipped
    if isinstance(config.data.validation, str):
        assert held_out is not None  # scan_data_folders scans a named validation folder
        train_paths, train_labels = paths, labels
        validation_paths = np.asarray(held_out.paths)
        validation_labels = np.asarray(held_out.labels, np.int64)
        skipped += held_out.skipped
    else:
        split = stratified_split(labels, config.data.validation, config.data.seed)
        train_paths, train_labels = paths[split.train], labels[split.train]
        validation_paths, validation_labels = paths[split.validation], labels[split.validation]
    size = config.data.image_size
    return Examples(
        _files(train_paths, train_labels, size),
        _files(validation_paths, validation_labels, size),
        folder.class_names,
        len(train_paths),
        len(validation_paths),
        identity={
            "source": os.path.abspath(config.data.source),
            "class_names": list(folder.class_names),
            "train_files": _files_fingerprint(train_paths, train_labels),
            "validation_files": _files_fingerprint(validation_paths, validation_labels),
            "image_size": size,
        },
        skipped_files=skipped,
        train_labels=train_labels,
    )


def _tfds(config: TrainConfig) -> Examples:
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

    return Examples(
        train_raw.map(resize, num_parallel_calls=AUTOTUNE),
        validation_raw.map(resize, num_parallel_calls=AUTOTUNE),
        class_names,
        int(train_raw.cardinality()),
        int(validation_raw.cardinality()),
        identity={
            "source": config.data.source,
            "version": str(info.version),
            "splits": splits,
            "image_size": size,
        },
    )
