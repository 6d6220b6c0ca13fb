"""Pretrain a backbone from scratch on the generated *source* task and save its weights.

Machines here cannot download ImageNet weights, and fine-tuning a random backbone would make
the demo's search meaningless (its frozen features sit at chance). This builds the stand-in
once: train the whole network on `synthetic:source`, then save the headless backbone as a
`.weights.h5` file (usable as `model.weights`) with a YAML card describing how it was made.

    python -m trainers.pretrain --out spaces/weights/mobilenetv3small_synthetic_source_64.weights.h5

The committed file was made with the defaults below (about 3 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import yaml

from trainers.config.schema import TrainConfig
from trainers.errors import TrainerInputError
from trainers.installation import add_version_option, require_tensorflow

DEFAULT_OUT = "spaces/weights/mobilenetv3small_synthetic_source_64.weights.h5"


def pretrain_config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig.from_dict(
        {
            "data": {
                "source": "synthetic:source",
                "image_size": args.image_size,
                "augmentation": "basic",
                "synthetic": {"classes": args.classes, "images_per_class": args.images_per_class},
                "seed": args.seed,
            },
            "model": {"backbone": args.backbone, "weights": None, "head_dropout": 0.2},
            "phases": [
                {
                    "epochs": args.epochs,
                    "learning_rate": args.learning_rate,
                    "schedule": "cosine",
                    "warmup_fraction": 0.05,
                }
            ],
            "batch_size": 32,
            "seed": args.seed,
        }
    )


def pretrain(args: argparse.Namespace) -> Path:
    require_tensorflow()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    from trainers.data.pipelines import load_datasets
    from trainers.model.optimization import make_optimizer
    from trainers.model.surgery import build_model, set_trainable_units

    config = pretrain_config(args)
    keras.utils.set_random_seed(args.seed)
    datasets = load_datasets(config)
    print(f"source task: {datasets.describe()}", flush=True)
    network = build_model(config, datasets.num_classes)
    set_trainable_units(network, network.spec.unit_count, freeze_batchnorm=False)
    for layer in network.backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            # From scratch and for only ~1000 steps, MobileNetV3's momentum of 0.999 leaves the
            # moving statistics at their initial values and validation at chance; 0.9 follows
            # the batch statistics closely enough. Momentum is not stored in the weights file.
            layer.momentum = 0.9
    network.model.compile(
        optimizer=make_optimizer(config.phases[0], datasets.steps_per_epoch(config.batch_size)),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
    )
    started = time.monotonic()
    history = network.model.fit(
        datasets.train,
        validation_data=datasets.validation,
        epochs=args.epochs,
        shuffle=False,
        verbose=2,
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    network.backbone.save_weights(out)
    card = {
        "weights_file": out.name,
        "backbone": config.model.backbone,
        "image_size": config.data.image_size,
        "pretrained_on": config.data.source,
        "source_classes": datasets.num_classes,
        "source_train_images": datasets.train_count,
        "epochs": args.epochs,
        "final_val_accuracy": round(float(history.history["val_accuracy"][-1]), 4),
        "seconds": round(time.monotonic() - started),
        "seed": args.seed,
        "keras": keras.__version__,
        "tensorflow": tf.__version__,
        "command": " ".join(["python -m trainers.pretrain", *sys.argv[1:]]),
    }
    card_path = out.with_name(out.name.removesuffix(".weights.h5") + ".yaml")
    card_path.write_text(yaml.safe_dump(card, sort_keys=False))
    print(f"wrote {out} and {card_path}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainers.pretrain", description=__doc__)
    add_version_option(parser)
    parser.add_argument("--backbone", default="MobileNetV3Small")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--classes", type=int, default=16)
    parser.add_argument("--images-per-class", type=int, default=250)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    try:
        pretrain(args)
    except TrainerInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
