"""The CPU demo: MobileNetV3Small at 64 px, pretrained on a generated source task.

    python -m search.run --study demo          # about 3 minutes on 2 CPU cores, no download

The backbone (spaces/weights/mobilenetv3small_synthetic_source_64.weights.h5, package data, so
the demo runs from any folder after `pip install .`) was trained from scratch
on `synthetic:source` by `python -m trainers.pretrain`; the study fine-tunes it on
`synthetic:target`, 10 classes that share no class with the source task. The same lessons as
the seed guide show up in minutes: BatchNorm unfrozen at a high rate destroys the pretrained
features (pruned as `unfreeze_shock`), while a few top blocks at a low rate beat the head alone.

Scientific: unfreeze_level (0..6, each step one more of the 13 units: top, expanded_conv_10,
  ...), freeze_bn, ft_optimizer.
Nuisance: head_lr (1e-3..3e-2, log), head_epochs {2, 3}, ft_lr_adamw (1e-5..3e-2) / ft_lr_sgd
  (1e-4..1e-1), ft_epochs {2, 3}, warmup_frac {0, 0.2}, batch_size {16, 32}, head_dropout
  (0..0.5).
Fixed: MobileNetV3Small, 64 px, the committed source-task weights, 10 target classes x 40
  images, 20% validation hold-out, no augmentation, Adam head phase, cosine fine-tune schedule.
"""

from __future__ import annotations

from pathlib import Path

from spaces.finetune import FineTuneSpace, Suggester
from trainers.config.schema import TrainConfig

DEFAULT_DATA = "synthetic:target"
#: An absolute path: the file ships inside the package, wherever it is installed.
PRETRAINED_WEIGHTS = str(
    Path(__file__).resolve().parent / "weights" / "mobilenetv3small_synthetic_source_64.weights.h5"
)

SPACE = FineTuneSpace(
    backbone="MobileNetV3Small",
    image_size=64,
    weights=PRETRAINED_WEIGHTS,
    head_lr=(1e-3, 3e-2),
    head_epochs=(2, 3),
    unfreeze_ladder=(0, 1, 2, 3, 4, 5, 6),
    ft_lr_adamw=(1e-5, 3e-2),
    ft_lr_sgd=(1e-4, 1e-1),
    ft_epochs=(2, 3),
    batch_sizes=(16, 32),
    head_dropout=(0.0, 0.5),
    warmup_fractions=(0.0, 0.2),
    synthetic={"classes": 10, "images_per_class": 40},
)


def space(trial: Suggester, data_source: str = DEFAULT_DATA) -> TrainConfig:
    return SPACE.sample(trial, data_source)
