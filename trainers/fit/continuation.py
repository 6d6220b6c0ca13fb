"""Continuing from saved weights: load them, and check the study's caches still fit.

A run whose `EpochWindow` (`trainers.fit.window`) starts from weights another run of the same
config saved loads them into the full model; the caches, computed by the pretrained backbone,
may then serve only phases that keep frozen every unit the loaded weights changed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from trainers.config.schema import TrainConfig
from trainers.errors import ModelBuildError
from trainers.fit.window import EpochWindow
from trainers.model.surgery import FineTuneModel

Log = Callable[[str], None]


def backbone_weights(network: FineTuneModel) -> dict[str, list[np.ndarray]]:
    return {layer.name: layer.get_weights() for layer in network.backbone.layers if layer.weights}


def load_initial_weights(
    network: FineTuneModel, path: Path, pretrained: Mapping[str, list[np.ndarray]], log: Log
) -> int:
    """Load `path` into the full model; returns how many top backbone units now differ from
    their `pretrained` weights (0: the backbone is still the pretrained one)."""
    try:
        network.model.load_weights(path)
    except (OSError, ValueError) as error:
        # Keras explains a mismatch over many lines, with whole arrays; one line is enough.
        reason = " ".join(str(error).split())[:300]
        raise ModelBuildError(
            f"initial weights {path} cannot be loaded into this config's model: {reason}"
        ) from None
    loaded = backbone_weights(network)
    changed = {
        name
        for name, weights in pretrained.items()
        if not all(map(np.array_equal, weights, loaded[name]))
    }
    depth = max(
        (index + 1 for index, unit in enumerate(network.units) if changed & set(unit.layer_names)),
        default=0,
    )
    differ = f"the top {depth} backbone units differ" if depth else "the backbone is the same as"
    log(f"initial weights: loaded {path}; {differ} pretrained")
    return depth


def caches_fit_window(
    config: TrainConfig, window: EpochWindow, changed_units: int, log: Log
) -> bool:
    """Whether the caches may serve the phases this window runs.

    Cached features and activations are computed by the pretrained backbone, so every running
    phase must keep frozen all the units the loaded weights changed. A file saved by this
    config's own run always passes; one from another config or other pretrained weights does not.
    """
    last = window.last_epoch(config)
    running: list[int] = []
    first_epoch = 0
    for phase in config.phases:
        if first_epoch + phase.epochs > window.after_epoch and first_epoch < last:
            running.append(phase.unfreeze_blocks)
        first_epoch += phase.epochs
    fewest_unfrozen = min(running, default=0)
    if changed_units > fewest_unfrozen:
        log(
            f"caches not used: the loaded weights changed the top {changed_units} backbone units, "
            f"and a phase of this run keeps only {fewest_unfrozen} of them unfrozen, so cached "
            "features of the pretrained backbone would not be what it computes"
        )
        return False
    return True
