"""One fine-tuning config as a user would write it by hand: the floor of `bench.study_cost`.

    python -m bench.bare_keras_script --spec SPEC.json

Plain TensorFlow and Keras, nothing from this project: a `tf.data` pipeline over the image
files (decoded once, cached in memory), a `keras.applications` backbone with the committed
weights loaded, global average pooling -> dropout -> softmax, then one `model.fit` per phase:
the head on the frozen backbone, then the named layers unfrozen (BatchNorm kept frozen if
asked) and the model recompiled. `bench.study_cost` writes the spec from a project config
(`script_spec`): the same train/validation files, image size, epochs, batch size, optimizer,
learning rate and cosine schedule, and the layers of the same whole blocks, so both sides
train the same thing. Left out, as a quick script leaves them out: restoring the best epoch's
weights, the NaN guard, the preprocessing check, the top-5 metric, tracking and plots.

The last line printed is one JSON object: wall-clock timestamps (`time.time()`) of the first
line of this module, imports done, data ready, model built and compiled, and the end; and per
epoch its phase, seconds (`on_epoch_begin` to `on_epoch_end`, as the project's trainer counts
them) and metrics.
"""

from __future__ import annotations

import time

# Before the heavy imports: their cost is the script's start-up.
STARTED = time.time()

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from collections.abc import Mapping, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

IMPORTED = time.time()


def pipelines(spec: Mapping[str, Any]) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    """Decode every image once into an in-memory cache, then shuffle, batch and prefetch."""
    size = int(spec["image_size"])
    classes = int(spec["num_classes"])

    def decode(path: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        image = tf.image.resize(image, (size, size))  # raw 0-255: the backbone normalises
        return tf.ensure_shape(image, (size, size, 3)), tf.one_hot(label, classes)

    def decoded(files: Sequence[str], labels: Sequence[int]) -> tf.data.Dataset:
        pairs = tf.data.Dataset.from_tensor_slices((list(files), list(labels)))
        cached = pairs.map(decode, num_parallel_calls=tf.data.AUTOTUNE).cache()
        # Fill the cache now rather than in the first epoch, so that "data" is the decoding
        # on both sides of the benchmark (the study decodes into its image cache).
        for _ in cached.batch(256):
            pass
        return cached

    batch = int(spec["batch_size"])
    train = decoded(spec["train_files"], spec["train_labels"])
    validation = decoded(spec["validation_files"], spec["validation_labels"])
    train = train.shuffle(len(spec["train_files"]), seed=int(spec["seed"]))
    return (
        train.batch(batch).prefetch(tf.data.AUTOTUNE),
        validation.batch(batch).prefetch(tf.data.AUTOTUNE),
    )


def build(spec: Mapping[str, Any]) -> tuple[keras.Model, keras.Model]:
    """The classifier and its backbone (a nested model, as the project builds it)."""
    size = int(spec["image_size"])
    constructor = getattr(keras.applications, spec["backbone"])
    backbone = constructor(include_top=False, weights=None, input_shape=(size, size, 3))
    backbone.load_weights(spec["weights"])
    inputs = keras.Input((size, size, 3))
    features = keras.layers.GlobalAveragePooling2D()(backbone(inputs))
    features = keras.layers.Dropout(float(spec["head_dropout"]))(features)
    outputs = keras.layers.Dense(int(spec["num_classes"]), activation="softmax")(features)
    return keras.Model(inputs, outputs), backbone


def unfreeze(backbone: keras.Model, layer_names: Sequence[str], freeze_batchnorm: bool) -> None:
    """Only the named layers train; a frozen BatchNorm layer also runs on its moving statistics."""
    names = set(layer_names)
    missing = names - {layer.name for layer in backbone.layers}
    if missing:
        raise SystemExit(f"error: the backbone has no layers {sorted(missing)[:5]}")
    backbone.trainable = bool(names)
    for layer in backbone.layers if names else ():
        is_batchnorm = isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = layer.name in names and not (is_batchnorm and freeze_batchnorm)


def optimizer(phase: Mapping[str, Any], steps_per_epoch: int) -> keras.optimizers.Optimizer:
    rate: Any = float(phase["learning_rate"])
    steps = int(phase["epochs"]) * steps_per_epoch
    warmup = round(float(phase["warmup_fraction"]) * steps)
    if phase["schedule"] == "cosine" or warmup:
        # alpha=1 never decays: a constant rate after the warmup.
        rate = keras.optimizers.schedules.CosineDecay(
            0.0 if warmup else rate,
            max(1, steps - warmup),
            alpha=0.0 if phase["schedule"] == "cosine" else 1.0,
            warmup_target=rate if warmup else None,
            warmup_steps=warmup,
        )
    decay = float(phase["weight_decay"])
    if phase["optimizer"] == "adamw":
        return keras.optimizers.AdamW(learning_rate=rate, weight_decay=decay)
    if phase["optimizer"] == "sgd":
        return keras.optimizers.SGD(
            learning_rate=rate, momentum=float(phase["momentum"]), weight_decay=decay or None
        )
    return keras.optimizers.Adam(learning_rate=rate, weight_decay=decay or None)


class EpochTimer(keras.callbacks.Callback):
    """Seconds and metrics of every epoch."""

    def __init__(self, phase: int, epochs: list[dict[str, float]]) -> None:
        super().__init__()
        self.phase = phase
        self.epochs = epochs
        self.began = time.monotonic()

    def on_epoch_begin(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        self.began = time.monotonic()

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        record = {key: float(value) for key, value in (logs or {}).items()}
        record.update(epoch=epoch + 1, phase=self.phase, seconds=time.monotonic() - self.began)
        self.epochs.append(record)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bare_keras_script")
    parser.add_argument("--spec", type=Path, required=True, help="JSON written by bench.study_cost")
    spec = json.loads(parser.parse_args(argv).spec.read_text())
    keras.utils.set_random_seed(int(spec["seed"]))
    train, validation = pipelines(spec)
    data_ready = time.time()
    model, backbone = build(spec)
    steps_per_epoch = -(-len(spec["train_files"]) // int(spec["batch_size"]))
    phases = spec["phases"]
    unfreeze(backbone, phases[0]["unfreeze_layers"], phases[0]["freeze_batchnorm"])
    loss = keras.losses.CategoricalCrossentropy(label_smoothing=float(spec["label_smoothing"]))
    model.compile(optimizer(phases[0], steps_per_epoch), loss=loss, metrics=["accuracy"])
    built = time.time()
    epochs: list[dict[str, float]] = []
    done = 0
    for number, phase in enumerate(phases, start=1):
        if number > 1:
            unfreeze(backbone, phase["unfreeze_layers"], phase["freeze_batchnorm"])
            model.compile(optimizer(phase, steps_per_epoch), loss=loss, metrics=["accuracy"])
        model.fit(
            train,
            validation_data=validation,
            initial_epoch=done,
            epochs=done + int(phase["epochs"]),
            callbacks=[EpochTimer(number, epochs)],
            verbose=0,
        )
        done += int(phase["epochs"])
    result = {
        "started": STARTED,
        "imported": IMPORTED,
        "data_ready": data_ready,
        "built": built,
        "finished": time.time(),
        "epochs": epochs,
        "best_val_accuracy": max(epoch["val_accuracy"] for epoch in epochs),
    }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
