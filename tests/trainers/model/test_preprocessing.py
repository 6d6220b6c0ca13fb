"""The preprocessing guard: the guide's 1%-accuracy failure stops before any training."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import tensorflow as tf

from trainers.data.pipelines import Datasets
from trainers.errors import PreprocessingError
from trainers.fit.loop import fit
from trainers.model.backbones import get_backbone
from trainers.model.preprocessing import check_input_batch

EFFICIENTNET = get_backbone("EfficientNetB0")


def test_raw_pixels_pass() -> None:
    batch = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3))
    check_input_batch(batch, EFFICIENTNET)


def test_unit_scaled_inputs_are_rejected_for_efficientnet() -> None:
    batch = np.random.default_rng(0).uniform(0, 1, (4, 32, 32, 3))
    with pytest.raises(PreprocessingError) as caught:
        check_input_batch(batch, EFFICIENTNET)
    message = str(caught.value)
    assert "EfficientNetB0 expects raw pixel values in 0-255" in message
    assert "scaled to 0-1" in message
    assert "preprocessing is inside the model" in message


def test_torch_mode_normalised_inputs_are_rejected() -> None:
    # The guide's attempt 1: 'torch' mode gave values from -2.12 to +2.64.
    batch = np.linspace(-2.12, 2.64, 4 * 8 * 8 * 3).reshape(4, 8, 8, 3)
    with pytest.raises(PreprocessingError, match=r"\[-2.12, 2.64\]: outside 0-255"):
        check_input_batch(batch, EFFICIENTNET)


def test_caffe_mode_backbones_also_want_raw_pixels_from_the_pipeline() -> None:
    mean_subtracted = np.random.default_rng(0).uniform(-123.68, 151.1, (2, 8, 8, 3))
    with pytest.raises(PreprocessingError, match="caffe-mode preprocessing inside the model"):
        check_input_batch(mean_subtracted, get_backbone("ResNet50"))


def test_non_finite_pixels_are_rejected() -> None:
    batch = np.full((1, 4, 4, 3), 100.0)
    batch[0, 0, 0, 0] = np.nan
    with pytest.raises(PreprocessingError, match="NaN"):
        check_input_batch(batch, EFFICIENTNET)


def test_fit_refuses_unit_scaled_pipeline_before_training(make_config: Any) -> None:
    config = make_config()
    images = np.random.default_rng(0).uniform(0, 1, (8, 64, 64, 3)).astype("float32")
    labels = tf.one_hot(np.arange(8) % 6, 6)
    unit_scaled = tf.data.Dataset.from_tensor_slices((images, labels)).batch(4)
    datasets = Datasets(unit_scaled, unit_scaled, tuple("abcdef"), 8, 8)
    epochs_reported: list[int] = []

    def report(epoch: int, metrics: Any) -> None:
        epochs_reported.append(epoch)

    with pytest.raises(PreprocessingError, match="scaled to 0-1"):
        fit(config, report=report, datasets=datasets, log=lambda _: None)
    # Rejected at once: not a single epoch ran.
    assert epochs_reported == []
