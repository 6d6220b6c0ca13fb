"""Decoded-image cache: images decoded and resized once per study, not once per trial.

An entry holds, per split, the images as one uint8 array `(count, size, size, 3)` in `.npy`
format (read back memory-mapped, so a trial does not need the whole set in RAM) and the labels
in the same order. It is keyed by `Examples.identity`: the source, every file's path, size and
modification time, the split and the image size; a changed image or size is a new entry
(`trainers.caching.store`). Pixels are rounded to uint8 after resizing, which changes a bilinear
pixel by at most half a level.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import tensorflow as tf

from trainers.caching.store import CacheKey, CacheProgress, cached_entry
from trainers.data.examples import Examples, in_order

#: Bumped when the entry layout changes.
FORMAT = 1
_CHUNK = 64
SPLITS = ("train", "validation")


def image_cache_key(examples: Examples) -> CacheKey:
    return CacheKey("images", {"format": FORMAT, **examples.identity})


def _write_split(
    pairs: tf.data.Dataset, count: int, folder: Path, split: str, progress: CacheProgress | None
) -> None:
    images_path = folder / f"{split}_images.npy"
    images: np.memmap | None = None
    labels: list[np.ndarray] = []
    written = 0
    for batch_images, batch_labels in pairs.batch(_CHUNK):
        chunk = np.clip(np.rint(batch_images.numpy()), 0, 255).astype(np.uint8)
        if images is None:
            images = np.lib.format.open_memmap(
                images_path, mode="w+", dtype=np.uint8, shape=(max(count, 1), *chunk.shape[1:])
            )
        images[written : written + len(chunk)] = chunk
        labels.append(batch_labels.numpy().astype(np.int64))
        written += len(chunk)
        if progress is not None:
            progress(f"decoded {split} images", written, count)
    if images is None:
        raise ValueError(f"no {split} images could be decoded")
    images.flush()
    if written < len(images):
        # Fewer pairs than counted (the pipelines keep their count; this is a guard): keep
        # only the rows written.
        kept = np.array(images[:written])
        del images
        np.save(images_path, kept)
    np.save(folder / f"{split}_labels.npy", np.concatenate(labels))


def _read_split(folder: Path, split: str) -> tuple[tf.data.Dataset, np.ndarray]:
    images = np.load(folder / f"{split}_images.npy", mmap_mode="r")
    labels = np.load(folder / f"{split}_labels.npy")
    return in_order(images, labels), labels


def decoded_images(
    examples: Examples, cache_dir: Path, progress: CacheProgress | None = None
) -> Examples:
    """`examples`, read from the cache entry for their identity (built on first use)."""

    def build(folder: Path) -> None:
        _write_split(examples.train, examples.train_count, folder, "train", progress)
        _write_split(examples.validation, examples.validation_count, folder, "validation", progress)

    folder, _ = cached_entry(cache_dir, image_cache_key(examples), build)
    train, train_labels = _read_split(folder, "train")
    validation, validation_labels = _read_split(folder, "validation")
    return replace(
        examples,
        train=train,
        validation=validation,
        train_count=len(train_labels),
        validation_count=len(validation_labels),
        train_labels=train_labels,
    )
