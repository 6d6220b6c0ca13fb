"""Preprocessing per backbone, and the guard that stops a wrongly preprocessed run at once.

The trainer owns preprocessing: the input pipeline always delivers raw 0-255 pixels and the
model normalises them itself (EfficientNet and MobileNetV3 have it built in; ResNet50 gets a
caffe-mode layer here). Before training, `check_input_batch` looks at a real batch. Values in
0-1, or mean-subtracted / standardised values, mean someone preprocessed twice: the seed
guide's attempt 1 trained for 40 minutes at 1% accuracy that way.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from trainers.errors import PreprocessingError
from trainers.model.backbones import INPUT_RANGE, BackboneSpec

# A batch whose brightest value is at most this looks 0-1 scaled; a real batch of 0-255
# photos (or generated images) always has brighter pixels than 1.5/255.
_LOOKS_UNIT_SCALED = 1.5
# Resizing and augmentation may overshoot the pixel range by interpolation error only.
_TOLERANCE = 1e-3


def check_input_batch(images: Any, spec: BackboneSpec) -> None:
    """Raise PreprocessingError unless `images` hold raw 0-255 pixels for `spec`."""
    values = np.asarray(images, dtype=np.float64)
    if values.size == 0:
        raise PreprocessingError("the input pipeline produced an empty batch")
    if not np.all(np.isfinite(values)):
        raise PreprocessingError("the input pipeline produced NaN or infinite pixel values")
    low, high = float(values.min()), float(values.max())
    expected_low, expected_high = INPUT_RANGE
    where = (
        "its preprocessing is inside the model"
        if spec.preprocessing == "built_in"
        else "the trainer adds its caffe-mode preprocessing inside the model"
    )
    problem = None
    if low < expected_low - _TOLERANCE or high > expected_high + _TOLERANCE:
        problem = "outside 0-255 (normalised or mean-subtracted?)"
    elif high <= _LOOKS_UNIT_SCALED:
        problem = "scaled to 0-1"
    if problem is not None:
        raise PreprocessingError(
            f"{spec.name} expects raw pixel values in 0-255 ({where}), but the input pipeline "
            f"produced values in [{low:.3g}, {high:.3g}]: {problem}. Remove any rescaling, "
            "normalisation or preprocess_input from the pipeline; trained like this the model "
            "sits near chance accuracy."
        )


@keras.saving.register_keras_serializable(package="trainers")
class CaffePreprocessing(keras.layers.Layer):
    """RGB->BGR and ImageNet mean subtraction inside the model, as ResNet50 expects.

    Keeping it in the model means saved ResNet models take raw pixels like every other one.
    Import this module before `keras.saving.load_model` on such a model.
    """

    def call(self, inputs: Any) -> Any:
        bgr = keras.ops.flip(inputs, axis=-1)
        mean = keras.ops.convert_to_tensor([103.939, 116.779, 123.68], dtype=bgr.dtype)
        return bgr - mean
