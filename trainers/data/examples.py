"""A study's images before batching (`Examples`), and pipelines over arrays in a fixed order.

TensorFlow-backed but free of the loaders: the pipelines (`trainers.data.pipelines`) and the
caches (`trainers.caching`) both build on it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf


@dataclass(frozen=True)
class Examples:
    """A study's images before batching: a fixed order, no augmentation, raw 0-255 float32.

    `identity` is everything the images depend on (source, files, split, size); the
    decoded-image and frozen-feature caches are keyed by it.
    """

    #: (float32 image, int64 label) pairs, in the same order every time.
    train: tf.data.Dataset
    validation: tf.data.Dataset
    class_names: tuple[str, ...]
    train_count: int
    validation_count: int
    identity: Mapping[str, Any]
    skipped_files: tuple[str, ...] = ()
    #: The training labels in order, where known without reading the images.
    train_labels: np.ndarray | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def in_order(images: np.ndarray, labels: np.ndarray) -> tf.data.Dataset:
    """(float32 image, label) pairs from uint8 images, in their order."""
    pairs = from_arrays(images, labels)
    return pairs.map(lambda image, label: (tf.cast(image, tf.float32), label))


#: Arrays up to this size become one in-memory tensor; larger (memory-mapped) ones are streamed.
IN_MEMORY_BYTES = 512 * 2**20
_CHUNK = 64


def from_arrays(
    values: np.ndarray, labels: np.ndarray, *, in_memory_bytes: int = IN_MEMORY_BYTES
) -> tf.data.Dataset:
    """(value, label) pairs from two arrays (either may be memory-mapped), in their order."""
    if values.nbytes <= in_memory_bytes:
        return tf.data.Dataset.from_tensor_slices((np.asarray(values), np.asarray(labels)))

    def chunks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        # Whole chunks out of the memory map: a row at a time would cost a Python call each.
        for start in range(0, len(labels), _CHUNK):
            yield np.asarray(values[start : start + _CHUNK]), labels[start : start + _CHUNK]

    signature = (
        tf.TensorSpec((None, *values.shape[1:]), tf.as_dtype(values.dtype)),
        tf.TensorSpec((None,), tf.as_dtype(labels.dtype)),
    )
    streamed = tf.data.Dataset.from_generator(chunks, output_signature=signature).unbatch()
    # A generator's length is unknown to tf.data, and Keras then warns "Your input ran out of
    # data" at the end of every fit's first epoch; the count is known, so say it.
    return streamed.apply(tf.data.experimental.assert_cardinality(len(labels)))
