"""The epoch window: which of a config's global epochs one run trains, and from which weights.

KerasTuner's Hyperband continues a trial of an earlier round: it loads that trial's best-epoch
weights and trains on from the round's first epoch. `EpochWindow` is that idea's one type,
from the engine that plans a round through the coordinator's epoch budget and the worker's
request to `trainers.fit.loop`, which skips the phases before the window and stops after it
(`trainers.fit.continuation` loads the weights). It imports no TensorFlow: the search
coordinator holds it too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trainers.config.schema import TrainConfig


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

    def epochs_of(self, config: TrainConfig) -> int:
        """How many epochs this run trains on `config`: what an epoch budget keeps for it
        while it runs (0 when the window starts past the config's last epoch)."""
        return max(0, self.last_epoch(config) - self.after_epoch)


#: The default window: every epoch, from the config's own starting weights.
EVERY_EPOCH = EpochWindow()
