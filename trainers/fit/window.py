"""Training a window of a config's epochs, from weights a run of the same config saved.

KerasTuner's Hyperband continues a trial of an earlier round: it loads that trial's best-epoch
weights and trains on from the round's first epoch. `EpochWindow` says which global epochs a
run trains and from which weights (`trainers.fit.loop` skips the phases before it and stops after
it); the helpers load the weights and check that the study's caches, computed by the
pretrained backbone, still compute what the loaded model would.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainers.config.schema import TrainConfig
from trainers.errors import ModelBuildError
from trainers.model.surgery import FineTuneModel

Log = Callable[[str], None]


@dataclass(frozen=True)
class EpochWindow:
    """Which of a config's global epochs one run trains, and the weights it starts from.

    The default trains every epoch from the config's own starting weights. Only weights are
    loaded: the phase the window starts in compiles a fresh optimizer whose schedule (warmup
    included) starts over, as after a recompile in KerasTuner's Hyperband continuation.
    """

    #: Global epochs already trained by the run whose weights are `initial_weights`; this run
    #: trains from epoch after_epoch + 1.
    after_epoch: int = 0
    #: The last global epoch this run trains; None: the config's last.
    until_epoch: int | None = None
    #: A `.weights.h5` file saved from the full model of the same config (its best epoch) to
    #: start from.
    initial_weights: Path | None = None

    def __post_init__(self) -> None:
        after_epoch, until_epoch = self.after_epoch, self.until_epoch
        if after_epoch < 0:
            raise ValueError(f"after_epoch must be 0 or more, but got {after_epoch=}")
        if until_epoch is not None and until_epoch <= after_epoch:
            raise ValueError(
                f"until_epoch must be after after_epoch, but got {until_epoch=}, {after_epoch=}"
            )
        if after_epoch > 0 and self.initial_weights is None:
            raise ValueError(
                "initial_weights (the weights the earlier epochs trained) are required when "
                f"after_epoch > 0, but got {after_epoch=} and no initial_weights"
            )

    def last_epoch(self, config: TrainConfig) -> int:
        """The last global epoch this run trains on `config`."""
        if self.until_epoch is None:
            return config.total_epochs
        return min(self.until_epoch, config.total_epochs)


#: The default window: every epoch, from the config's own starting weights.
EVERY_EPOCH = EpochWindow()



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
