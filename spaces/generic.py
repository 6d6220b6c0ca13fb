"""The generic two-phase space for any registered backbone, and retargeting a space to another.

`for_backbone("ResNet50")` is the effnet_b4 space's ranges on that backbone, at its native
resolution with ImageNet weights. `retarget` moves any `FineTuneSpace` to another backbone,
image size or weights, as `--backbone`, `--image-size` and `--weights` and study files do: a
new backbone gets its own unfreeze ladder (`default_ladder`), ImageNet weights unless others
are named, its native resolution unless another is named, and loses the drop-connect range
if it has no stochastic depth.

Imports no TensorFlow: the ladder is read from the backbone registry's unit names.
"""

from __future__ import annotations

import re
from dataclasses import replace

from spaces.effnet_b4 import SPACE as EFFNET_B4_SPACE
from spaces.finetune import FineTuneSpace
from trainers.model.backbones import BackboneSpec, get_backbone

#: Steps of one unit each at the top of every ladder (0 = linear probe), where one more
#: block makes the most difference (surgical fine-tuning).
FINE_STEPS = 5
#: Whole stages are added below the fine steps while the step unfreezes at most this share of
#: the units (docs/studies.md: deeper than stage 4 of B4 only ever hurt on data near ImageNet).
DEEPEST_SHARE = 0.7

_EFFICIENTNET_STAGE = re.compile(r"^block(\d)[a-z]$")


def default_ladder(backbone: BackboneSpec) -> tuple[int, ...]:
    """0, then one unit at a time for `FINE_STEPS` steps, then the ends of whole stages.

    On EfficientNetB4 this is the effnet_b4 study's ladder, 0..5, 11, 17, 23; the stem is never
    unfrozen.
    """
    units = backbone.unit_names[:-1]  # never the stem
    deepest = int(DEEPEST_SHARE * backbone.unit_count)
    steps = list(range(min(FINE_STEPS, len(units)) + 1))
    stage_ends = [
        index + 1
        for index, name in enumerate(units)
        if index + 1 == len(units) or _stage(name) != _stage(units[index + 1])
    ]
    steps += [end for end in stage_ends if steps[-1] < end <= deepest]
    return tuple(steps)


def _stage(unit_name: str) -> str:
    """EfficientNet blocks group into stages (block6a..block6h); other units stand alone."""
    match = _EFFICIENTNET_STAGE.match(unit_name)
    return match.group(1) if match else unit_name


def retarget(
    space: FineTuneSpace,
    *,
    backbone: str | None = None,
    image_size: int | None = None,
    weights: str | None = None,
) -> FineTuneSpace:
    """`space` on another backbone, image size or weights (None keeps what `space` has)."""
    if backbone is not None and backbone != space.backbone:
        spec = get_backbone(backbone)
        space = replace(
            space,
            backbone=spec.name,
            unfreeze_ladder=default_ladder(spec),
            image_size=spec.default_image_size,
            weights="imagenet",
            drop_connect_rate=space.drop_connect_rate if spec.supports_drop_connect else None,
        )
    if image_size is not None:
        space = replace(space, image_size=image_size)
    if weights is not None:
        space = replace(space, weights=weights)
    return space


def for_backbone(backbone: str) -> FineTuneSpace:
    """The generic space: effnet_b4's ranges on `backbone`, native size, ImageNet weights."""
    return retarget(EFFNET_B4_SPACE, backbone=backbone)


def ladder_steps(space: FineTuneSpace) -> list[tuple[int, int, str]]:
    """(level, whole units unfrozen, which units) for each step of `space`'s ladder."""
    names = get_backbone(space.backbone).unit_names
    steps = []
    for level, count in enumerate(space.unfreeze_ladder):
        if count == 0:
            which = "none (linear probe: head only)"
        elif count == 1:
            which = names[0]
        elif count == 2:
            which = f"{names[0]}, {names[1]}"
        else:
            which = f"{names[0]} .. {names[count - 1]}"
        steps.append((level, count, which))
    return steps
