"""EfficientNetB4 at 380 px, ImageNet weights: the seed guide's space for Stanford Dogs.

    python -m search.run --study effnet_b4 --data data/stanford_dogs/train   # or tfds:stanford_dogs

Scientific (what the study is for): unfreeze_level (ordinal 0..8 on the unfreeze ladder: linear
  probe, top, + block7b, all of stage 7, + block6h, + block6g, then all of stage 6, 5, 4; that
  is 0, 1, 2, 3, 4, 5, 11, 17, 23 whole units, the config's unfreeze_blocks), freeze_bn,
  ft_optimizer, use_l2sp / l2sp_alpha.
Nuisance (tuned away): head_lr (1e-4..3e-2, log), head_epochs {3, 5, 8}, ft_lr_adamw
  (1e-6..1e-3) / ft_lr_sgd (1e-4..3e-2), ft_epochs {5, 10, 20}, warmup_frac {0, 0.05, 0.2},
  batch_size {16, 32, 64}, weight_decay (1e-6..1e-2), head_dropout (0..0.5), drop_connect_rate
  (0..0.4), label_smoothing {0, 0.05, 0.1}, augmentation {none, basic, randaugment}.
Fixed: EfficientNetB4, 380 px, raw 0-255 inputs, Adam for the head phase, cosine schedule for
  the fine-tune phase, 20% of the training images held out for validation, seed 0; the
  objective is the best validation accuracy over all epochs, not the last.

The study's first trial is the seed guide's recipe (search.study.registry.EFFNET_B4_RECIPE).
"""

from __future__ import annotations

from spaces.finetune import FineTuneSpace, Suggester
from trainers.config.schema import TrainConfig

DEFAULT_DATA = "data/stanford_dogs/train"

SPACE = FineTuneSpace(
    backbone="EfficientNetB4",
    image_size=380,
    weights="imagenet",
    head_lr=(1e-4, 3e-2),
    head_epochs=(3, 5, 8),
    # 0 = linear probe; top; + block7b; stage 7; + block6h; + block6g; then whole stages 6, 5
    # and 4 (docs/studies.md: top 5% of the parameters, stage 7 30%, stage 6 79%, stage 5 92%).
    unfreeze_ladder=(0, 1, 2, 3, 4, 5, 11, 17, 23),
    ft_lr_adamw=(1e-6, 1e-3),
    ft_lr_sgd=(1e-4, 3e-2),
    ft_epochs=(5, 10, 20),
    batch_sizes=(16, 32, 64),
    head_dropout=(0.0, 0.5),
    weight_decay=(1e-6, 1e-2),
    l2sp_alpha=(1e-4, 1e-1),
    drop_connect_rate=(0.0, 0.4),
    label_smoothing=(0.0, 0.05, 0.1),
    augmentations=("none", "basic", "randaugment"),
)


def space(trial: Suggester, data_source: str = DEFAULT_DATA) -> TrainConfig:
    return SPACE.sample(trial, data_source)
