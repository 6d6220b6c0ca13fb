"""L2-SP: penalise unfrozen backbone weights for moving away from their pretrained values.

Li et al. 2018, "Explicit inductive bias for transfer learning": alpha/2 * ||w - w0||^2 over
the pretrained weights, instead of plain weight decay pulling them toward zero. It rides on
Keras' per-variable regularizer hook, which only counts *trainable* variables, so frozen blocks
and frozen BatchNorm layers cost nothing and need no bookkeeping per phase.
"""

from __future__ import annotations

from typing import Any

import keras

from trainers.model.surgery import FineTuneModel


class L2SPPenalty:
    """alpha/2 * sum((w - w0)^2) for one variable, with w0 captured when attached."""

    def __init__(self, alpha: float, reference: keras.Variable) -> None:
        self.alpha = alpha
        self.reference = reference

    def __call__(self, variable: Any) -> Any:
        difference = keras.ops.cast(variable, "float32") - self.reference
        return 0.5 * self.alpha * keras.ops.sum(keras.ops.square(difference))


def attach_l2sp(network: FineTuneModel, alpha: float, *, unfreeze_blocks: int) -> int:
    """Attach the penalty to the weights of the top `unfreeze_blocks` units; returns how many.

    Only those units ever train, so only they need a copy of their starting weights. Call it
    before the first phase freezes anything: the starting weights are captured now.
    """
    layers = {layer.name: layer for layer in network.backbone.layers}
    count = 0
    for unit in network.units[:unfreeze_blocks]:
        for name in unit.layer_names:
            layer = layers[name]
            # Moving statistics are created non-trainable and never train; skip them.
            for variable in (v for v in layer.weights if v.trainable):
                reference = keras.Variable(
                    keras.ops.convert_to_numpy(variable),
                    trainable=False,
                    dtype="float32",
                    name="l2sp_reference",
                )
                variable.regularizer = L2SPPenalty(alpha, reference)
                count += 1
    return count
