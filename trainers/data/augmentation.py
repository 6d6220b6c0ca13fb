"""Training-time augmentation policies, applied to batches inside the tf.data pipeline.

Running augmentation in the input pipeline keeps the saved model free of augmentation layers,
and the preprocessing guard then checks exactly what the model will see. All layers work on
raw 0-255 pixels, the range every registered backbone expects.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import tensorflow as tf

from trainers.config.schema import AugmentationPolicy
from trainers.model.backbones import INPUT_RANGE

BatchTransform = Callable[[tf.Tensor], tf.Tensor]


def _basic(seed: int) -> list[keras.layers.Layer]:
    # Flip / rotate / translate / contrast, as in the Keras EfficientNet fine-tuning example.
    return [
        keras.layers.RandomFlip("horizontal", seed=seed),
        keras.layers.RandomRotation(0.08, fill_mode="reflect", seed=seed + 1),
        keras.layers.RandomTranslation(0.1, 0.1, fill_mode="reflect", seed=seed + 2),
        keras.layers.RandomContrast(0.2, value_range=INPUT_RANGE, seed=seed + 3),
    ]


def _randaugment(seed: int) -> list[keras.layers.Layer]:
    return [
        keras.layers.RandomFlip("horizontal", seed=seed),
        keras.layers.RandAugment(value_range=INPUT_RANGE, num_ops=2, factor=0.5, seed=seed + 1),
    ]


def make_augmentation(policy: AugmentationPolicy, *, seed: int) -> BatchTransform | None:
    """A function augmenting a float32 batch of 0-255 images, or None for policy "none"."""
    if policy == "none":
        return None
    layers = _basic(seed) if policy == "basic" else _randaugment(seed)
    pipeline = keras.Sequential(layers, name=f"augment_{policy}")
    low, high = INPUT_RANGE

    def augment(images: tf.Tensor) -> tf.Tensor:
        # Contrast and RandAugment can leave the pixel range slightly; clip so the guard and
        # the backbone see valid pixels.
        return tf.clip_by_value(pipeline(images, training=True), low, high)

    return augment
