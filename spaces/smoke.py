"""The smallest real study: MobileNetV3Small at 64 px on 4 generated classes, 2-3 epochs.

    python -m search.run --study smoke --n-trials 4      # ~10 s a trial on a CPU

Checks an installation end to end (workers, storage, MLflow) in about a minute, and is the
study the scale-out and fault-injection tests run. Not for conclusions: 36 training images.
Scientific: unfreeze_level (0..1: head only, or the top unit too), freeze_bn.
Nuisance: head_lr (1e-3..1e-2, log), ft_optimizer, ft_lr_adamw (1e-5..1e-3) / ft_lr_sgd
  (1e-4..1e-2), head_dropout (0..0.3).
Fixed: 64 px, the committed source-task weights, 2 head epochs + 1 fine-tune epoch, batch 16.
"""

from __future__ import annotations

from spaces.demo import PRETRAINED_WEIGHTS
from spaces.finetune import FineTuneSpace, Suggester
from trainers.config.schema import TrainConfig

DEFAULT_DATA = "synthetic:target"

SPACE = FineTuneSpace(
    backbone="MobileNetV3Small",
    image_size=64,
    weights=PRETRAINED_WEIGHTS,
    head_lr=(1e-3, 1e-2),
    head_epochs=(2,),
    unfreeze_ladder=(0, 1),
    ft_lr_adamw=(1e-5, 1e-3),
    ft_lr_sgd=(1e-4, 1e-2),
    ft_epochs=(1,),
    batch_sizes=(16,),
    head_dropout=(0.0, 0.3),
    warmup_fractions=(0.0,),
    synthetic={"classes": 4, "images_per_class": 12},
)


def space(trial: Suggester, data_source: str = DEFAULT_DATA) -> TrainConfig:
    return SPACE.sample(trial, data_source)
