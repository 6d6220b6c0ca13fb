"""EfficientNetB0 at 224 px, ImageNet weights: the effnet_b4 space on a 4x cheaper backbone.

    python -m search.run --study effnet_b0 --data data/stanford_dogs/train   # or tfds:stanford_dogs

Useful to explore a dataset quickly before spending B4 time, or on a smaller GPU.
Scientific: unfreeze_level (ordinal 0..8 on the unfreeze ladder: linear probe, top, stage 7,
  + block6d, + block6c, then all of stage 6, 5, 4, 3; that is 0, 1, 2, 3, 4, 6, 9, 12, 14 whole
  units, the config's unfreeze_blocks), freeze_bn, ft_optimizer, use_l2sp / l2sp_alpha.
Nuisance: head_lr (1e-4..3e-2, log), head_epochs {3, 5, 8}, ft_lr_adamw (1e-6..1e-3) /
  ft_lr_sgd (1e-4..3e-2), ft_epochs {5, 10, 20}, warmup_frac {0, 0.05, 0.2}, batch_size
  {32, 64, 128}, weight_decay (1e-6..1e-2), head_dropout (0..0.5), drop_connect_rate (0..0.4),
  label_smoothing {0, 0.05, 0.1}, augmentation {none, basic, randaugment}.
Fixed: EfficientNetB0, 224 px, raw 0-255 inputs, Adam head phase, cosine fine-tune schedule,
  20% validation hold-out, seed 0; objective = best validation accuracy over all epochs.
"""

from __future__ import annotations

from dataclasses import replace

from spaces.effnet_b4 import SPACE as B4_SPACE
from spaces.finetune import FineTuneSpace, Suggester
from trainers.config.schema import TrainConfig

DEFAULT_DATA = "data/stanford_dogs/train"

# Same ranges as B4; B0 is smaller, so it affords larger batches at its native 224 px. Its
# ladder: linear probe, top, stage 7 (one block), + block6d, + block6c, then whole stages 6-3.
SPACE: FineTuneSpace = replace(
    B4_SPACE,
    backbone="EfficientNetB0",
    image_size=224,
    batch_sizes=(32, 64, 128),
    unfreeze_ladder=(0, 1, 2, 3, 4, 6, 9, 12, 14),
)


def space(trial: Suggester, data_source: str = DEFAULT_DATA) -> TrainConfig:
    return SPACE.sample(trial, data_source)
